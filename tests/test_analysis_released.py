"""The released-models check: find the published files, evaluate them under the official protocol beside the paper's
rows, and run the official ablation/CSM on the SRResNet pair; end to end on small synthetic models."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from src.analysis.released import RELEASED, compare, find_released, tag
from src.reports.paper import labelled_rows, published
from tests.test_analysis import REPO, _image


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_find_released_by_published_names(tmp_path):
    a = _touch(tmp_path / "RealSRResNetx4_details.pth")
    b = _touch(tmp_path / "real-srresnet_withdropout.PTH")
    _touch(tmp_path / "notes.txt")
    found = {rel.row: p for rel, p in find_released(tmp_path).items()}
    assert found == {"Real-SRResNet (p=0)": a, "Real-SRResNet (p=0.7)": b}
    with pytest.raises(FileNotFoundError, match="Real-RRDB_withdropout.pth"):
        find_released(_empty(tmp_path))
    assert tag("Real-SRResNet (p=0.7)") == "Real-SRResNet_p0.7"
    assert [r.baseline for r in RELEASED] == [None, "Real-SRResNet (p=0)", None, "Real-RRDB (p=0)"]


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _paper_file(path, rows: dict[str, dict[str, list[float]]]):
    doc = {"protocol": "official", "degradations": ["clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j"],
           "tables": {"table1": {"rows": [{"label": k, "values": v} for k, v in rows.items()]
                                 + [{"label": "Improvement", "improvement": True, "values": {}}]}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_compare_cells_and_improvements_against_hand_numbers(tmp_path):
    paper = labelled_rows("table1", _paper_file(tmp_path / "p.yaml", {
        "Real-SRResNet (p=0)": {"Set5": [24.89, 24.76, 23.75, 23.70, 23.20, 23.44, 23.17, 22.75]},
        "Real-SRResNet (p=0.7)": {"Set5": [25.67, 25.34, 24.14, 24.06, 23.47, 23.69, 23.53, 23.04]}}))
    assert paper["Real-SRResNet (p=0)"]["Set5"]["noise"] == 23.75 and "Improvement" not in paper
    results = {"Real-SRResNet (p=0)": {"Set5": {"clean": {"psnr_rgb": 24.5}, "noise": {"psnr_rgb": 23.0}}},
               "Real-SRResNet (p=0.7)": {"Set5": {"clean": {"psnr_rgb": 25.0}, "noise": {"psnr_rgb": 23.5}}}}
    rows = {(r[0], r[1], r[2]): r[3:] for r in compare(results, paper)}
    assert rows[("Set5", "clean", "Real-SRResNet (p=0)")] == pytest.approx([24.5, 24.89, 24.5 - 24.89])
    imp = rows[("Set5", "noise", "Improvement (Real-SRResNet (p=0.7) - Real-SRResNet (p=0))")]
    assert imp == pytest.approx([0.5, 24.14 - 23.75, 0.5 - (24.14 - 23.75)])
    assert len(rows) == 2 * 2 + 2  # 2 models x 2 cells + 2 improvements
    no_paper = compare(results, None)
    assert no_paper[0][4] is None and no_paper[0][5] is None


def test_released_command_end_to_end_on_synthetic_models(tmp_path):
    pytest.importorskip("src.data.testsets")
    srresnet = pytest.importorskip("src.models.srresnet")
    from src.data.imageio import write_image

    released = tmp_path / "released"
    released.mkdir()
    for seed, name in enumerate(("Real-SRResNet", "Real-SRResNet_withdropout")):
        torch.manual_seed(seed)
        model = srresnet.MSRResNet(num_feat=32, num_block=4)  # the shape of conf/backbone/tiny.yaml
        # saved in the paper's released layout: the trunk unrolled as body1.0 .. body4.0 (not BasicSR's body.0 ..)
        details = {(f"body{int(k.split('.')[1]) + 1}.0.{k.split('.', 2)[2]}" if k.startswith("body.") else k): v
                   for k, v in model.state_dict().items()}
        assert any(k.startswith("body1.0.") for k in details)
        torch.save({"params": details}, released / f"{name}.pth")
    hr_dir = tmp_path / "data" / "Set5" / "HR"
    hr_dir.mkdir(parents=True)
    for i in range(2):
        write_image(hr_dir / f"im{i}.png", _image(32, 32, 40 + i))
    paper = _paper_file(tmp_path / "paper.yaml", {
        "Real-SRResNet (p=0)": {"Set5": [24.89, 24.76, 23.75, 23.70, 23.20, 23.44, 23.17, 22.75]},
        "Real-SRResNet (p=0.7)": {"Set5": [25.67, 25.34, 24.14, 24.06, 23.47, 23.69, 23.53, 23.04]}})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "src.analyze", "released", f"released.dir={released}", "released.sets=[Set5]",
           "released.degradations=[clean,noise]", "released.backbones.srresnet=tiny", f"released.paper={paper}",
           f"data.root={tmp_path / 'data'}", "data.set=Set5", "n_images=1", "csm.max_channels=8",
           f"out={out}", "device=cpu", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "SR_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "this evaluation vs the paper's Table 1" in res.stdout
    for row in ("Real-SRResNet (p=0)", "Real-SRResNet (p=0.7)"):
        results = json.loads((out / tag(row) / "results_official.json").read_text())
        assert set(results["Set5"]) == {"clean", "noise"} and results["Set5"]["clean"]["protocol"] == "official"
    with open(out / "released_vs_paper.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 + 2
    clean0 = next(r for r in rows if r["model"] == "Real-SRResNet (p=0)" and r["degradation"] == "clean")
    ours = json.loads((out / tag("Real-SRResNet (p=0)") / "results_official.json").read_text())
    assert float(clean0["psnr_rgb"]) == pytest.approx(ours["Set5"]["clean"]["psnr_rgb"], rel=1e-5)
    assert float(clean0["diff"]) == pytest.approx(float(clean0["psnr_rgb"]) - 24.89, abs=1e-4)
    meta = json.loads((out / "interp" / "analysis.json").read_text())
    assert meta["options"]["ablation"]["rescale"] == "l1" and meta["options"]["csm"]["layers"] == "official"
    assert meta["models"] == ["Real-SRResNet (p=0)", "Real-SRResNet (p=0.7)"]
    # tiny has 4 blocks: first, b1..b4, hr, last
    for point in ("first", "b1", "b4", "hr", "last"):
        assert (out / "interp" / f"csm_{point}.png").exists(), point
    assert (out / "interp" / "ablation_curve.png").exists()


def test_every_release_has_its_row_in_the_suites_transcription():
    rows = labelled_rows("table1")  # src/reports/paper_results.yaml
    assert len(published()["degradations"]) == 8 and labelled_rows("table1", "/nonexistent.yaml") is None
    for rel in RELEASED:
        assert rel.row in rows, rel.row
        assert all(len(v) == 8 for v in rows[rel.row].values()), rel.row
        assert {"Set5", "Set14", "BSD100", "Urban100"} <= set(rows[rel.row]), rel.row
