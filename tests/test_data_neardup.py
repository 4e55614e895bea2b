"""Near-duplicate audit: perceptual hashes find resized, re-encoded copies and leave distinct radiographs alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support.paths import shared_data
from PIL import Image

from cxrkit.data import load_dataset
from cxrkit.data.neardup import (
    DEFAULT_THRESHOLD,
    HASH_BITS,
    clusters,
    find_near_duplicates,
    hamming,
    hash_images,
    phash,
    phash_array,
)
from cxrkit.data.split import load_split, make_split


def _real_pngs():
    return sorted(shared_data("radiography").rglob("*.png"))


@pytest.fixture(scope="module")
def real_hashes():
    return hash_images(_real_pngs(), progress=False)


def _reencoded(src: Path, dst: Path, size: int, quality: int = 80) -> Path:
    with Image.open(src) as im:
        im.convert("L").resize((size, size), Image.Resampling.LANCZOS).save(dst, "JPEG", quality=quality)
    return dst


def test_distinct_real_radiographs_are_not_near_duplicates(real_hashes):
    assert len(real_hashes) == 100
    assert find_near_duplicates(real_hashes) == []
    names = list(real_hashes)
    nearest = min(hamming(real_hashes[a], real_hashes[b]) for i, a in enumerate(names) for b in names[i + 1:])
    assert nearest > 2 * DEFAULT_THRESHOLD  # a wide margin, not a close call


def test_resized_reencoded_copies_are_near_duplicates(tmp_path, real_hashes):
    distances = []
    for src in _real_pngs()[::10]:
        original = real_hashes[str(src)]
        for size, quality in ((160, 70), (299, 90), (512, 95)):
            copy = _reencoded(src, tmp_path / f"{src.stem}-{size}.jpg", size, quality)
            distances.append(hamming(original, phash(copy)))
        bright = np.clip(np.asarray(Image.open(src).convert("L"), np.float64) * 0.7 + 60, 0, 255)
        distances.append(hamming(original, phash_array(bright)))  # another window / contrast
    assert max(distances) <= DEFAULT_THRESHOLD // 2


def test_a_known_duplicate_across_the_real_collections_is_found():
    """The Radiography collection's COVID-1221.png is CoronaHack's kjr-21-e24-g003-l-a.jpg, resized."""
    a = shared_data("radiography", "COVID-19_Radiography_Dataset", "COVID", "COVID-1221.png")
    b = next(shared_data("coronahack").rglob("kjr-21-e24-g003-l-a.jpg"))
    pairs = find_near_duplicates(hash_images([a, b], progress=False))
    assert [{Path(p.a).name, Path(p.b).name} for p in pairs] == [{"COVID-1221.png", "kjr-21-e24-g003-l-a.jpg"}]
    assert pairs[0].distance <= DEFAULT_THRESHOLD // 2


def test_copy_across_split_parts_is_found_and_new_splits_keep_copies_together(tmp_path):
    root = tmp_path / "ds"
    real = _real_pngs()
    for cls, prefix in (("COVID", "COVID-"), ("Normal", "Normal-")):
        (root / cls).mkdir(parents=True)
        for src in [p for p in real if p.name.startswith(prefix)][:15]:
            shutil.copy(src, root / cls / src.name)
    _reencoded(root / "COVID" / "COVID-1106.png", root / "COVID" / "COVID-copy.jpg", 180)
    spec = load_dataset("folder", root)
    hashes = hash_images([i["image"] for i in spec.items], progress=False)

    split = make_split(spec, seed=0, hashes=hashes)  # copies of one radiograph form one group
    parts = {Path(i["image"]).name: name for name in ("train", "val", "test") for i in split.part(name)}
    assert parts["COVID-1106.png"] == parts["COVID-copy.jpg"]
    assert split.audit.ok and split.manifest["near_duplicate_groups"] == 1
    assert split.manifest["leakage_audit"]["near_duplicates_checked"] is True

    # a split made without hashes (or by an older cxrkit) that put the copy in another part
    manifest = split.manifest
    original_part = parts["COVID-1106.png"]
    other = "test" if original_part != "test" else "train"
    entry = next(e for e in manifest[original_part] if e["image"].endswith("COVID-copy.jpg"))
    manifest[original_part].remove(entry)
    manifest[other].append(entry)
    path = split.save(tmp_path / "split.json")
    audited = load_split(path, spec, hashes=hashes)
    assert not audited.audit.ok
    [pair] = audited.audit.near_duplicates
    assert {Path(pair["a"]).name, Path(pair["b"]).name} == {"COVID-1106.png", "COVID-copy.jpg"}
    assert pair["distance"] <= DEFAULT_THRESHOLD and set(pair["parts"]) == {original_part, other}
    assert "1 near-duplicate image pair(s) in two parts" in audited.audit.summary()
    as_dict = audited.audit.to_dict(str(root))
    assert {as_dict["near_duplicates"][0]["a"], as_dict["near_duplicates"][0]["b"]} == {
        "COVID/COVID-1106.png", "COVID/COVID-copy.jpg"}


def test_copy_with_another_label_is_a_class_conflict(tmp_path):
    real = _real_pngs()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for src in real[:8]:
        shutil.copy(src, tmp_path / "a" / src.name)
    for src in real[40:48]:
        shutil.copy(src, tmp_path / "b" / src.name)
    _reencoded(real[0], tmp_path / "b" / "relabelled.jpg", 200)
    spec = load_dataset("folder", tmp_path)
    split = make_split(spec, hashes=hash_images([i["image"] for i in spec.items], progress=False), test_fraction=0)
    [conflict] = split.audit.near_duplicates_across_classes
    assert sorted(conflict["classes"]) == ["a", "b"]
    assert "carry different classes" in split.audit.summary()


def test_hash_helpers_validate_and_group():
    with pytest.raises(ValueError, match="2D grey image"):
        phash_array(np.zeros(5))
    with pytest.raises(ValueError, match="threshold"):
        find_near_duplicates({}, threshold=HASH_BITS + 1)
    h = {k: np.zeros(HASH_BITS, bool) for k in "abc"}
    h["c"] = ~h["c"]
    groups = clusters(find_near_duplicates(h))
    assert groups == {"a": "a", "b": "a"}
    assert phash_array(np.eye(4)).shape == (HASH_BITS,)
    with pytest.raises(ValueError, match="uniform"):
        phash_array(np.zeros((4, 4)))
