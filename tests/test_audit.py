"""Shortcut probes on constructed data with a known answer, and their building blocks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from support.paths import shared_data

from cxrkit.audit.evidence import evidence_verdict, lung_shares
from cxrkit.audit.lungs import check_mask, find_mask_file, lung_region, prior_mask
from cxrkit.audit.occlusion import (
    Condition,
    balanced_accuracy,
    donor_indices,
    occlude,
    occlusion_verdict,
    run_occlusion,
)
from cxrkit.audit.shortcuts import AuditError, audit_run, read_audit
from cxrkit.cli import main
from cxrkit.serve.gradcam import image_to_input

PNG = b"\x89PNG\r\n\x1a\n"


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / run.name)


def _condition(direction, fill, ba):
    return Condition(direction, fill, ba, ba, 0.0, None, {})


@pytest.mark.slow
def test_corner_marker_model_is_flagged_and_looks_outside_the_lungs(shortcut_runs, shortcut_plugin, tmp_path, capsys):
    run = _copy(shortcut_runs["marker"], tmp_path)
    result = audit_run(run, device="cpu", progress=False)
    data = result.data
    assert data["part"] == "test" and data["n_images"] == 16 and data["part_note"] is None
    assert data["lung_region"]["source_counts"] == {"mask": 16}  # the collection's own (resized) masks
    by = {(c["direction"], c["fill"]): c for c in data["occlusion"]["conditions"]}
    assert by[("baseline", "none")]["balanced_accuracy"] >= 0.9
    # with only the lungs kept, the prediction follows the class of the image the surroundings came from
    assert by[("keep_lungs", "donor")]["balanced_accuracy"] <= 0.25
    assert by[("keep_lungs", "donor")]["follows_donor"] >= 0.75
    assert by[("remove_lungs", "donor")]["balanced_accuracy"] >= 0.9
    assert data["occlusion"]["verdict"]["flag"] is True
    # little Grad-CAM energy inside the lungs: less than an even spread would put there
    assert data["evidence"]["median_share"] < data["evidence"]["area_share"]
    assert data["evidence"]["verdict"]["flag"] is True
    assert data["shortcut_suspected"] is True and result.shortcut_suspected
    for name in data["figures"].values():
        assert (run / "audit" / name).read_bytes()[:8] == PNG
    assert read_audit(run) == json.loads((run / "audit" / "audit.json").read_text())

    # the command line: every figure as JSON, exit code 3 for a suspected shortcut
    assert main(["audit", str(run), "--json", "--device", "cpu", "--max_images", "12"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["shortcut_suspected"] is True and printed["n_images"] == 12
    assert {"occlusion", "evidence", "lung_region", "figures"} <= set(printed)


@pytest.mark.slow
def test_lung_signal_model_is_not_flagged(shortcut_runs, shortcut_plugin, tmp_path, capsys):
    run = _copy(shortcut_runs["lungs"], tmp_path)
    data = audit_run(run, device="cpu", progress=False).data
    by = {(c["direction"], c["fill"]): c for c in data["occlusion"]["conditions"]}
    assert by[("baseline", "none")]["balanced_accuracy"] >= 0.9
    assert by[("keep_lungs", "donor")]["balanced_accuracy"] >= 0.85
    assert by[("remove_lungs", "donor")]["follows_donor"] >= 0.75  # the transplanted lungs decide
    assert data["evidence"]["median_share"] > data["evidence"]["area_share"]
    assert data["shortcut_suspected"] is False
    assert main(["audit", str(run), "--device", "cpu", "--no_masks", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "shortcut suspected: no" in out and "anatomical prior" in out


def test_flat_or_blurred_fills_cannot_decide_the_verdict():
    # a model that calls every occluded image one class in BOTH directions: inconclusive, not a shortcut
    collapse = [_condition("baseline", "none", 1.0), _condition("keep_lungs", "donor", 0.5),
                _condition("remove_lungs", "donor", 0.5)]
    verdict = occlusion_verdict(collapse)
    assert not verdict.flag and verdict.inconclusive and "Inconclusive" in verdict.text
    near_chance = [_condition("baseline", "none", 0.55), _condition("keep_lungs", "donor", 0.0),
                   _condition("remove_lungs", "donor", 1.0)]
    assert occlusion_verdict(near_chance).inconclusive
    shortcut = [_condition("baseline", "none", 0.95), _condition("keep_lungs", "donor", 0.3),
                _condition("remove_lungs", "donor", 0.9)]
    assert occlusion_verdict(shortcut).flag


def test_donors_come_from_another_class_and_regions_are_swapped():
    labels = [0, 0, 0, 1, 1, 2]
    donors = donor_indices(labels, seed=3)
    assert all(labels[d] != labels[i] for i, d in enumerate(donors))
    assert list(donor_indices([1, 1, 1], seed=0)) != [0, 1, 2]  # one class: any OTHER image
    images = torch.zeros(1, 3, 4, 4)
    fill = torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 1:3, 1:3] = 1
    kept = occlude(images, mask, fill, "keep_lungs")
    removed = occlude(images, mask, fill, "remove_lungs")
    assert kept[0, 0, 0, 0] == 1 and kept[0, 0, 1, 1] == 0
    assert removed[0, 0, 0, 0] == 0 and removed[0, 0, 1, 1] == 1
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5


def test_run_occlusion_with_a_known_model():
    """A 'model' that reads the top-left corner is flagged; one that reads the centre is not."""
    rng = np.random.default_rng(0)
    labels = [0, 1] * 8
    images = torch.as_tensor(rng.normal(0, 0.1, (16, 1, 16, 16)), dtype=torch.float32)
    for i, y in enumerate(labels):
        images[i, 0, :3, :3] += 3 * y  # class written in the corner
        images[i, 0, 6:10, 6:10] += 3 * y  # and in the "lungs"
    masks = torch.zeros(16, 16, 16)
    masks[:, 4:12, 4:12] = 1

    def corner(x):
        return (x[:, 0, :3, :3].mean((1, 2)) > 1.5).long().numpy()

    def centre(x):
        return (x[:, 0, 6:10, 6:10].mean((1, 2)) > 1.5).long().numpy()

    for predict, flagged in ((corner, True), (centre, False)):
        conditions, examples, base = run_occlusion(predict, images, masks, labels, ["a", "b"], batch_size=5)
        assert list(base) == labels and len(conditions) == 5 and len(examples) == 4
        assert occlusion_verdict(conditions).flag is flagged


def test_cam_energy_verdict():
    masks = np.zeros((2, 8, 8))
    masks[:, 2:6, 2:6] = 1
    inside, outside = np.zeros((8, 8)), np.zeros((8, 8))
    inside[3, 3], outside[0, 0] = 1, 1
    shares = lung_shares(np.stack([inside, outside]), masks)
    assert shares.tolist() == [1.0, 0.0]
    assert evidence_verdict(np.array([0.1, 0.2, 0.1]), 0.25).flag
    assert not evidence_verdict(np.array([0.5, 0.6]), 0.25).flag
    chance = evidence_verdict(np.array([0.1, 0.2]), 0.25, near_chance=True)
    assert not chance.flag and chance.text.startswith("Inconclusive")
    assert np.isnan(lung_shares(np.zeros((1, 8, 8)), masks[:1])[0])


def test_mask_files_are_resized_and_checked(tmp_path):
    image = np.full((60, 60), 0.8)
    image[36:, :] = 0.4  # a darker abdomen: a flipped mask still lands on darker-than-average pixels
    image[8:30, 10:25] = image[8:30, 35:50] = 0.2  # two dark lung fields in the upper half
    mask = np.zeros((48, 48), np.uint8)  # smaller than the image, as the Radiography masks are
    mask[6:24, 8:20] = mask[6:24, 28:40] = 255
    fitted, problem = check_mask(image, mask)
    assert problem is None and fitted.shape == (60, 60) and 0.15 < fitted.mean() < 0.3
    assert check_mask(image, mask[::-1])[1].startswith("the mask fits the image better flipped upside down")
    assert "aspect ratio" in check_mask(image, np.zeros((48, 96)) + mask.repeat(2, 1))[1]
    assert "covers" in check_mask(image, np.full((48, 48), 255, np.uint8) - (np.arange(48) < 1)[:, None])[1]

    from PIL import Image

    for cls in ("a",):
        (tmp_path / cls / "images").mkdir(parents=True)
        (tmp_path / cls / "masks").mkdir()
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "a" / "images" / "x.png")
    Image.fromarray(mask).save(tmp_path / "a" / "masks" / "x.png")
    assert find_mask_file(tmp_path / "a" / "images" / "x.png") == tmp_path / "a" / "masks" / "x.png"
    assert lung_region(tmp_path / "a" / "images" / "x.png", image).source == "mask"
    Image.fromarray(mask[::-1].copy()).save(tmp_path / "a" / "masks" / "x.png")
    flipped = lung_region(tmp_path / "a" / "images" / "x.png", image)
    assert flipped.source == "prior" and "orientation" in flipped.problem
    assert find_mask_file(tmp_path / "elsewhere.png") is None


def test_prior_covers_the_lung_fields_of_a_frontal_film_and_maps_to_the_input():
    prior = prior_mask((299, 299))
    assert 0.25 < prior.mean() < 0.45
    assert not prior[:40, :40].any() and not prior[:40, -40:].any()  # corners (markers) are outside
    assert prior[130, 90] and prior[130, 209] and not prior[130, 149]  # both fields, not the mediastinum
    from cxrkit.data.transforms import build_transforms

    class Spec:
        in_channels, mean, std, intensity_range = 3, (0.5,), (0.5,), None

    crop = build_transforms(Spec(), 32, train=False, resize=40)
    grid = image_to_input(prior.astype(float), crop, (32, 32))
    assert grid.shape == (32, 32)
    direct = image_to_input(prior.astype(float), build_transforms(Spec(), 32, train=False), (32, 32))
    assert grid.mean() > direct.mean()  # the centre crop zooms in on the lungs


@pytest.mark.slow
def test_audit_errors_name_the_fix(tmp_path, shortcut_runs, shortcut_plugin):
    with pytest.raises(Exception, match="no such file or folder"):
        audit_run(tmp_path / "nothing", device="cpu")
    run = _copy(shortcut_runs["marker"], tmp_path)
    with pytest.raises(AuditError, match="--dataset_dir"):
        audit_run(run, dataset_dir=str(tmp_path / "moved"), device="cpu", progress=False)
    (run / "split.json").unlink()
    with pytest.raises(AuditError, match="split.json: not found"):
        audit_run(run, device="cpu", progress=False)


@pytest.mark.slow
def test_audit_of_a_model_trained_on_real_radiographs(tmp_path, shortcut_plugin):
    """The real Radiography sample (no masks): the prior is used and said; numbers and figures are written."""
    from support.shortcuts import train_small

    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    run = train_small(tmp_path / "bundles", data, tmp_path / "run", epochs=2, near_duplicates=False)
    data = audit_run(run, device="cpu", progress=False).data
    assert data["lung_region"]["source_counts"] == {"prior": data["n_images"]} and data["n_images"] >= 8
    assert "anatomical prior" in data["lung_region"]["text"] and "ships no lung masks" in data["lung_region"]["text"]
    assert all(np.isfinite(c["balanced_accuracy"]) for c in data["occlusion"]["conditions"])
    assert 0.2 < data["evidence"]["area_share"] < 0.5 and isinstance(data["shortcut_suspected"], bool)
    assert all((run / "audit" / f).is_file() for f in data["figures"].values())


@pytest.mark.gpu
def test_audit_on_cuda_gives_the_same_verdict(shortcut_runs, shortcut_plugin, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU path of the audit runs on a lent GPU")
    run = _copy(shortcut_runs["marker"], tmp_path)
    cpu = audit_run(run, device="cpu", progress=False).data
    gpu = audit_run(run, device="cuda", progress=False).data
    assert gpu["shortcut_suspected"] == cpu["shortcut_suspected"] is True
    assert gpu["evidence"]["median_share"] == pytest.approx(cpu["evidence"]["median_share"], abs=0.05)
