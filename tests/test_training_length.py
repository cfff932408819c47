"""Gain against training length (src.reports.training_length): tiny models kept at steps 1 and 2 are scored, the
scores are stored and reused, and the gain per step is the t interval over seed pairs computed here."""
import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from src import runs
from src.models.loading import save_safetensors
from src.models.srresnet import MSRResNet
from src.reports import scorecard
from src.reports import training_length as TL

TINY = {"_target_": "src.models.srresnet.MSRResNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1}
SEEDS = (0, 1, 2)
STEPS = (1, 2)


def write_run(folder, position, p, seed):
    folder.mkdir(parents=True)
    folder.joinpath("config.yaml").write_text(
        "backbone:\n  _target_: src.models.srresnet.MSRResNet\n  num_feat: 8\n  num_block: 1\n"
        "degradation:\n  _target_: src.data.pipelines.RealESRGANPipeline\n"
        f"dropout:\n  position: {position}\n  dim: channel\n  p: {p}\nseed: {seed}\ntrainer:\n  max_steps: 2\n")
    # a results file marks the run as scored (the report reads only runs with results)
    folder.joinpath("results_official.json").write_text("{}")
    for step in STEPS:
        torch.manual_seed(100 * seed + 10 * step + int(p * 10))
        model = MSRResNet(num_feat=8, num_block=1, scale=4)
        save_safetensors(model, {k: v for k, v in TINY.items()}, runs.step_weights(folder, step), {"step": str(step)}, 4)


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("Set5", "Set14"):
        (root / name / "HR").mkdir(parents=True)
        for i in range(2):
            small = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
            img = cv2.resize(small, (32, 32), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / "HR" / f"im{i}.png"), img)
    for seed in SEEDS:
        write_run(tmp_path / "runs" / f"p0_seed{seed}", "none", 0.0, seed)
        write_run(tmp_path / "runs" / f"p07_seed{seed}", "last", 0.7, seed)
    return tmp_path, root


def test_kept_steps_and_scores_are_stored(study):
    tmp, root = study
    run = tmp / "runs" / "p0_seed0"
    assert TL.kept_steps(run) == [1, 2]
    sets = {"Set5": sorted((root / "Set5" / "HR").glob("*.png"))}
    scored = TL.score_steps(run, sets, ["clean"], "official")
    saved = json.loads(TL.steps_file(run, "official").read_text())
    assert sorted(saved) == ["1", "2"] and sorted(scored) == [1, 2]
    # the stored score is the evaluation of that step's weights
    from src.evaluation import evaluate
    from src.models.loading import load

    direct = evaluate(load(runs.step_weights(run, 2)).model, sets, ["clean"], protocol="official")
    assert saved["2"]["Set5"]["clean"]["psnr_rgb"] == pytest.approx(direct["Set5"]["clean"]["psnr_rgb"])


def test_scored_steps_are_reused(study, monkeypatch):
    tmp, root = study
    run = tmp / "runs" / "p0_seed1"
    sets = {"Set5": sorted((root / "Set5" / "HR").glob("*.png"))}
    TL.score_steps(run, sets, ["clean"], "official")

    def fail(*a, **k):
        raise AssertionError("a scored step was evaluated again")

    monkeypatch.setattr("src.evaluation.evaluate", fail)
    TL.score_steps(run, sets, ["clean"], "official")


def t_ci(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean(), x.mean() - half, x.mean() + half


def test_gain_table_and_figure(study):
    tmp, root = study
    out = tmp / "out"
    written = TL.build([tmp / "runs"], out, sets=["Set5", "Set14"], degradations=["clean", "noise"], root=root)
    assert [p.name for p in written] == ["gain_vs_steps.csv", "gain_vs_steps.png"]
    with open(out / "gain_vs_steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3  # 2 steps x (Set14, Set5, all)
    for step in STEPS:
        def mean_of(run, sets):
            cells = json.loads(TL.steps_file(tmp / "runs" / run, "official").read_text())[str(step)]
            return np.mean([cells[s][d]["psnr_rgb"] for s in sets for d in ("clean", "noise")])

        for label, sets in (("all", ("Set5", "Set14")), ("Set5", ("Set5",))):
            diffs = [mean_of(f"p07_seed{s}", sets) - mean_of(f"p0_seed{s}", sets) for s in SEEDS]
            row = next(r for r in rows if r["set"] == label and int(r["step"]) == step)
            assert row["setting"] == "last channel p=0.7" and int(row["n"]) == 3 and row["kind"] == "paired t"
            assert [float(row[k]) for k in ("mean", "low", "high")] == pytest.approx(t_ci(diffs), abs=1e-5)
    # the scorecard reads the `all` rows, one contrast per step
    steps = scorecard.read_length_table(out / "gain_vs_steps.csv")
    assert [(s, st) for s, st, _ in steps] == [("last channel p=0.7", 1), ("last channel p=0.7", 2)]


def test_cli_needs_out_and_names_bad_options(study):
    with pytest.raises(SystemExit, match="out=DIR"):
        TL.main(["somewhere"])
    with pytest.raises(SystemExit, match="unknown option 'set'"):
        TL.main(["somewhere", "out=x", "set=Set5"])


def test_runs_without_kept_weights_are_named(tmp_path):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    folder.joinpath("config.yaml").write_text("dropout:\n  position: none\n  p: 0.0\nseed: 0\n")
    folder.joinpath("results_official.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"checkpoints/step-\*\.safetensors"):
        TL.build([tmp_path / "runs"], tmp_path / "out", root=tmp_path)
