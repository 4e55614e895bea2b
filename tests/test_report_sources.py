"""The comparison report's Sources table: backbone, parameter count, input size and licence per source."""

from __future__ import annotations

import json

import torch
import torchvision.models as tvm

from cxrkit.report.compare import write_comparison
from cxrkit.report.sources import backbone_parameters
from cxrkit.weights import get_source
from support.runfolders import make_run_folder, md_tables


def test_sources_table_names_size_input_and_licence(tmp_path):
    runs = [make_run_folder(tmp_path / "runs", plugin=p, seed=i, n_val=20) for i, p in
            enumerate(("imagenet", "medsiglip", "rad_dino"))]
    for run in runs:  # weights.json as a run of each source records it
        record = json.loads((run / "weights.json").read_text())
        record["architecture"] = get_source(record["plugin"]).architecture
        (run / "weights.json").write_text(json.dumps(record))
    md = write_comparison(runs, tmp_path / "cmp", bootstrap=20)
    table = md_tables(md.read_text())["Sources"][0]
    assert table[0] == ["Source", "Backbone", "Parameters", "Input", "Licence"]
    rows = {row[0]: row for row in table[1:]}
    resnet = sum(p.numel() for n, p in tvm.resnet50().named_parameters() if not n.startswith("fc."))
    assert rows["imagenet"][1:3] == ["`resnet50`", f"{resnet / 1e6:.1f} M"]
    assert all(row[3].endswith(" px") for row in rows.values())
    assert rows["medsiglip"][1] == "`vit_so400m_patch14_siglip_448`" and rows["medsiglip"][4].endswith("(restricted)")
    assert rows["rad_dino"][4] == "MIT" and rows["rad_dino"][1] == "`vit_base_patch14_dinov2`"


def test_parameter_counts_are_counted_not_built():
    with torch.device("meta"):
        assert backbone_parameters("vit_base_patch16_224") == 85_798_656  # timm's ViT-B/16 without its head
    assert 427e6 < backbone_parameters("vit_so400m_patch14_siglip_448") < 429e6
