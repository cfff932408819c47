"""Interpretation over seeds: checkpoints grouped by setting -> per-model numbers and mean +- std per group."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from src.analysis.seeds import analyze_group_models, flatten, group_labels, group_stats, model_files
from tests.test_analysis import REPO, _image, _lr_of


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_model_files_take_files_runs_published_runs_folders_globs(tmp_path):
    a = _touch(tmp_path / "sweep" / "p0-s0" / "checkpoints" / "last.ckpt")
    b = _touch(tmp_path / "sweep" / "p0-s1" / "checkpoints" / "last.ckpt")
    c = _touch(tmp_path / "files" / "m.pth")
    p = _touch(tmp_path / "published" / "p0-s2" / "weights.safetensors")
    _touch(tmp_path / "published" / "p0-s2" / "job.json")
    assert model_files(str(c)) == [c]
    assert model_files(tmp_path / "sweep" / "p0-s0") == [a]  # a run folder
    assert model_files(str(tmp_path / "sweep")) == [a, b]  # a folder of runs
    assert model_files(str(tmp_path / "sweep" / "p0-*")) == [a, b]  # a glob
    assert model_files(str(tmp_path / "published")) == [p]  # a folder of published runs: their final weights
    assert model_files([str(a), str(tmp_path / "sweep" / "p0-s0"), str(c)]) == [a, c]  # duplicates once
    with pytest.raises(FileNotFoundError, match=r"^group 'p0.7': '.*nothing-\*' names no model: looked for a "):
        model_files([str(a), str(tmp_path / "nothing-*")], "group 'p0.7': ")


def test_group_labels_use_run_or_folder_names(tmp_path):
    labels = group_labels({"p0": [tmp_path / "s0" / "model.pth", tmp_path / "s1" / "model.pth"],
                           "p0.7": [tmp_path / "r1" / "checkpoints" / "last.ckpt", tmp_path / "x.pth"]})
    assert list(labels) == ["p0/s0", "p0/s1", "p0.7/r1", "p0.7/x"]
    assert labels["p0.7/r1"][0] == "p0.7"


def test_group_stats_mean_std_against_numpy():
    per_model = {"a/1": flatten({"ablation": {"max_drop": 0.5, "score": "rgb", "scores": {"y": {"max_drop": 1.0}}},
                                 "ddr": {"chi": 10.0}}),
                 "a/2": flatten({"ablation": {"max_drop": 0.7, "scores": {"y": {"max_drop": None}}},
                                 "ddr": {"chi": 14.0}}),
                 "a/3": flatten({"ablation": {"max_drop": 1.2}, "ddr": {"chi": 9.0}}),
                 "b/1": flatten({"ablation": {"max_drop": 0.1}, "ddr": {"chi": 3.0}})}
    assert "ablation.score" not in per_model["a/1"] and per_model["a/1"]["ablation.scores.y.max_drop"] == 1.0
    stats = group_stats(per_model, {"a": ["a/1", "a/2", "a/3"], "b": ["b/1"]})
    drops = np.array([0.5, 0.7, 1.2])
    s = stats["a"]["ablation.max_drop"]
    assert s["mean"] == pytest.approx(drops.mean()) and s["std"] == pytest.approx(drops.std(ddof=1))
    assert s["n"] == 3 and s["min"] == 0.5 and s["max"] == 1.2
    assert stats["a"]["ablation.scores.y.max_drop"]["n"] == 1  # None (non-finite) and missing values are left out
    assert stats["b"]["ddr.chi"] == {"mean": 3.0, "std": None, "n": 1, "min": 3.0, "max": 3.0,
                                     "values": {"b/1": 3.0}}


def test_groups_of_tiny_models_end_to_end(tmp_path):
    pytest.importorskip("src.data.testsets")
    srresnet = pytest.importorskip("src.models.srresnet")
    models, labels = {}, {}
    for g in ("p0", "p0.7"):
        for seed in range(2):
            torch.manual_seed(seed + (10 if g == "p0.7" else 0))
            models[f"{g}/s{seed}"] = srresnet.MSRResNet(num_feat=4, num_block=1).eval()
            labels[f"{g}/s{seed}"] = (g, tmp_path / g / f"s{seed}.pth")
    hrs = [(f"im{i}", _image(24, 24, 20 + i)) for i in range(2)]
    pairs = [(n, _lr_of(hr), hr) for n, hr in hrs]
    doc = analyze_group_models(models, labels, "all", tmp_path, pairs, hrs, scale=4, rescale="l1", score="rgb",
                               input_size=4, perplexity=2, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == set(models)
    for g in ("p0", "p0.7"):
        for stat, path in (("ablation.max_drop", ("ablation", "max_drop")), ("csm.saliency_cv", ("csm", "saliency_cv")),
                           ("ddr.chi", ("ddr", "chi"))):
            vals = np.array([summary[f"{g}/s{k}"][path[0]][path[1]] for k in range(2)])
            got = doc["stats"][g][stat]
            assert got["n"] == 2 and got["mean"] == pytest.approx(vals.mean()), (g, stat)
            assert got["std"] == pytest.approx(vals.std(ddof=1)), (g, stat)
    assert doc["groups"] == {"p0": ["p0/s0", "p0/s1"], "p0.7": ["p0.7/s0", "p0.7/s1"]}
    # checkpoints relative to the output folder (these files are committed), never the machine's absolute paths
    assert doc["checkpoints"] == {f"{g}/s{k}": f"{g}/s{k}.pth" for g in ("p0", "p0.7") for k in range(2)}
    assert doc["options"]["ablation"]["rescale"] == "l1" and "largest single-channel drop" in \
        doc["definitions"]["ablation.max_drop"] and "ddof=1" in doc["definitions"]["std"]
    with open(tmp_path / "groups.csv") as f:
        rows = {(r["group"], r["statistic"]): r for r in csv.DictReader(f)}
    row = rows[("p0.7", "ddr.chi")]
    assert float(row["mean"]) == pytest.approx(doc["stats"]["p0.7"]["ddr.chi"]["mean"], rel=1e-5)
    assert len(row["values"].split(";")) == 2
    table = (tmp_path / "groups.md").read_text().splitlines()
    assert table[1] == "| statistic | p0 (2 models) | p0.7 (2 models) |"
    drop = next(line for line in table if line.startswith("| largest single-channel drop (dB) |"))
    s = doc["stats"]["p0"]["ablation.max_drop"]
    assert drop.split(" | ")[1] == f"{s['mean']:.3f} +- {s['std']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"
    for name in ("groups_stats.png", "groups_ablation_curve.png", "ablation_curve.png", "ddr_tsne.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_cli_groups_of_checkpoints(tmp_path):
    pytest.importorskip("src.data.testsets")
    srresnet = pytest.importorskip("src.models.srresnet")
    from src.data.imageio import write_image

    for g in ("p0", "p07"):
        for seed in range(2):
            torch.manual_seed(seed + (10 if g == "p07" else 0))
            (tmp_path / f"{g}-s{seed}").mkdir()
            model = srresnet.MSRResNet(num_feat=32, num_block=4)  # the shape of conf/backbone/tiny.yaml
            torch.save({"params": model.state_dict()}, tmp_path / f"{g}-s{seed}" / "model.pth")
    for i in range(3):
        (tmp_path / "data" / "Tiny" / "HR").mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / "data" / "Tiny" / "HR" / f"im{i}.png", _image(32, 32, 30 + i))
    groups = (f"groups={{p0:'{tmp_path}/p0-*/model.pth',"
              f"p07:[{tmp_path}/p07-s0/model.pth,{tmp_path}/p07-s1/model.pth]}}")
    cmd = [sys.executable, "-m", "src.analyze", "csm", groups, "backbone=tiny", f"data.root={tmp_path / 'data'}",
           "data.set=Tiny", "n_images=1", f"out={tmp_path / 'out'}", "device=cpu", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "groups.json").read_text())
    assert doc["groups"] == {"p0": ["p0/p0-s0", "p0/p0-s1"], "p07": ["p07/p07-s0", "p07/p07-s1"]}
    s = doc["stats"]["p0"]["csm.saliency_cv"]
    vals = [v for v in s["values"].values()]
    assert s["n"] == 2 and s["mean"] == pytest.approx(np.mean(vals)) and math.isfinite(s["std"])
    assert doc["options"]["csm"] == {"norm": "max", "layers": None}  # the config defaults
    assert (tmp_path / "out" / "groups_stats.png").exists()


def _tiny_models(names):
    srresnet = pytest.importorskip("src.models.srresnet")
    models, labels = {}, {}
    for lab in names:
        g, seed = lab.split("/s")
        torch.manual_seed(int(seed) + (10 if g == "p0.7" else 0))
        models[lab] = srresnet.MSRResNet(num_feat=4, num_block=1).eval()
        labels[lab] = (g, f"/runs/{g}/s{seed}.pth")
    return models, labels


def test_merge_pools_seeds_analysed_in_separate_sittings_as_if_analysed_together(tmp_path):
    pytest.importorskip("src.data.testsets")
    hrs = [(f"im{i}", _image(24, 24, 20 + i)) for i in range(2)]
    pairs = [(n, _lr_of(hr), hr) for n, hr in hrs]
    opts = dict(scale=4, rescale="l1", score="rgb", input_size=4, perplexity=2, progress=False)
    everything = ["p0/s0", "p0/s1", "p0.7/s0", "p0.7/s1"]
    together = analyze_group_models(*_tiny_models(everything), "all", tmp_path / "together", pairs, hrs, **opts)
    for sitting, names in (("first", ["p0/s0", "p0.7/s0"]), ("second", ["p0/s1", "p0.7/s1"])):
        analyze_group_models(*_tiny_models(names), "all", tmp_path / sitting, pairs, hrs, **opts)

    cmd = [sys.executable, "-m", "src.analyze", "merge", f"sources=[{tmp_path / 'first'},{tmp_path / 'second'}]",
           f"out={tmp_path / 'merged'}"]
    res = subprocess.run(cmd, cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    merged = json.loads((tmp_path / "merged" / "groups.json").read_text())
    assert sorted(merged["groups"]["p0"]) == ["p0/s0", "p0/s1"] and merged["options"] == together["options"]
    for g in ("p0", "p0.7"):
        for stat in ("ablation.max_drop", "ablation.psnr_half_ablated", "csm.saliency_cv", "ddr.chi"):
            want, got = together["stats"][g][stat], merged["stats"][g][stat]
            assert got["n"] == 2 and got["mean"] == pytest.approx(want["mean"], rel=1e-9), (g, stat)
            assert got["std"] == pytest.approx(want["std"], rel=1e-9), (g, stat)
    with open(tmp_path / "merged" / "ablation_curve.csv") as f:
        assert {r["model"] for r in csv.DictReader(f)} == set(everything)
    assert (tmp_path / "merged" / "groups_ablation_curve.png").stat().st_size > 1000

    from src.analysis.seeds import merge_groups

    with pytest.raises(ValueError, match="model 'p0/s0' is also in an earlier source"):
        merge_groups([tmp_path / "first", tmp_path / "together"], tmp_path / "bad")
    analyze_group_models(*_tiny_models(["p0/s2"]), "ablation", tmp_path / "other", pairs, hrs,
                         **{**opts, "rescale": "none"})
    with pytest.raises(ValueError, match=r"other.*analysed with other options than .*first \(.*ablation"):
        merge_groups([tmp_path / "first", tmp_path / "other"], tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match=r"nowhere: no summary.json, groups.json, analysis.json"):
        merge_groups([tmp_path / "nowhere"], tmp_path / "bad")
