"""Reports a researcher can trust: marks on unrounded values where seed-level intervals separate, no -0.00, labels from the config
that ran, seeds as mean +- std, the bicubic and the paper's rows, axes that do not exaggerate, W&B report runs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from src.reports import build_report, load_runs
from src.reports.render import fmt, to_latex, to_markdown
from src.reports.tables import Row, Table, rank

DEGS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")


def _table(values, stds=None, seeds=None):
    rows = [Row(f"m{i}", [v], "model", [] if stds is None else [stds[i]], seeds=[] if seeds is None else [seeds[i]])
            for i, v in enumerate(values)]
    return Table("t", "caption.", ["Set5"], ["clean"], rows)


def _seeds(mean, offsets):
    return {k: mean + o for k, o in enumerate(offsets)}


def test_marks_on_unrounded_values_and_never_with_one_seed():
    # 25.004 and 24.996 both print as 25.00; seeds that agree to 1e-4 separate them on unrounded values
    tight = [(0.0, 1e-4, -1e-4), (0.0, 2e-4, -1e-4), (0.0, 1e-4, 0.0)]
    seeds = [_seeds(v, o) for v, o in zip([25.004, 24.996, 24.0], tight)]
    md = to_markdown(_table([25.004, 24.996, 24.0], seeds=seeds))
    assert "| m0 | **25.00** |" in md and "| m1 | *25.00* |" in md and "| m2 | 24.00 |" in md
    # one seed per row (or none given): no interval, so nothing is ranked however far apart
    assert rank([26.0, 25.0, 24.0]) == {}
    assert rank([26.0, 25.0, 24.0], [{0: 26.0}, {0: 25.0}, {0: 24.0}]) == {}
    assert "| m0 | 26.00 |" in to_markdown(_table([26.0, 25.0, 24.0]))


def test_marks_only_where_the_seed_level_interval_separates():
    # paired over seeds 0-2: lead 0.03 with per-seed leads (0.10, -0.05, 0.04) -> the interval spans zero
    a, b, c = _seeds(25.03, (0.05, -0.05, 0.0)), _seeds(25.00, (-0.05, 0.0, -0.04)), _seeds(24.0, (0.0, 0.01, 0.0))
    assert rank([25.03, 25.00, 24.0], [a, b, c]) == {}
    # a steady lead of 0.30 +- 0.01 over the seeds, the second 1.0 ahead of the third: both marked
    a = _seeds(25.30, (0.01, -0.01, 0.0))
    b = _seeds(25.00, (0.0, -0.005, 0.005))
    assert rank([25.30, 25.00, 24.0], [a, b, c]) == {0: "best", 1: "second"}
    # the second only 0.02 ahead of a third whose seeds vary by 0.1: best only
    c2 = _seeds(24.98, (0.1, -0.1, 0.0))
    assert rank([25.30, 25.00, 24.98], [a, b, c2]) == {0: "best"}
    assert rank([25.3, 25.0], [a, b]) == {}                                  # two rows: nothing to rank
    tex = to_latex(_table([25.30, 25.00, 24.0], [0.01, 0.005, 0.005], [a, b, c]))
    assert "\\textcolor{red}{25.30$\\pm$0.01}" in tex and "\\textcolor{blue}{25.00$\\pm$0.01}" in tex


@pytest.mark.parametrize("v,expected", [(-0.004, "0.00"), (-0.0049999, "0.00"), (0.004, "0.00"), (-0.006, "-0.01"),
                                        (0.006, "+0.01"), (-0.0, "0.00"), (math.nan, "-")])
def test_differences_never_print_minus_zero(v, expected):
    assert fmt(v, "delta", 2) == expected
    assert fmt(-0.00001, "model", 2) == "0.00" and fmt(-0.00001, "delta", 4) == "0.0000"


def _job(root: Path, name: str, p: float, seed: int, offset: float, per_image=True, hydra_width=64, width=16,
         protocols=("literature",), position="last"):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "backbone": {"_target_": "src.models.srresnet.MSRResNet", "num_feat": width,
                                      "num_block": 16},
           "dropout": {"position": position if p else "none", "dim": "channel", "p": p},
           "degradation": {"_target_": "src.data.pipelines.RealESRGANPipeline"},
           "trainer": {"max_steps": 100},
           "data": {"train_sets": ["skimage"], "val_sets": ["skimage_holdout"], "val_degradation": "clean",
                    "batch_size": 4, "lr_patch_size": 32}}
    OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    cfg["backbone"]["num_feat"] = hydra_width  # what Hydra saved before the run size narrowed the network
    OmegaConf.save(OmegaConf.create(cfg), d / ".hydra" / "config.yaml")
    for protocol in protocols:
        res = {}
        for s, imgs in (("Set5", ["a", "b", "c", "d", "e", "f"]),):
            res[s] = {}
            for k, deg in enumerate(DEGS):
                y = {img: 25.0 - 0.1 * k + 0.2 * i + offset for i, img in enumerate(imgs)}
                rgb = {img: v - 1.0 for img, v in y.items()}
                res[s][deg] = {"psnr": float(np.mean(list(y.values()))), "ssim": 0.7,
                               "psnr_rgb": float(np.mean(list(rgb.values()))), "ssim_rgb": 0.6,
                               "n_images": len(imgs), "skipped": 0, "scale": 4, "seed": 0, "protocol": protocol}
                if per_image:
                    res[s][deg]["per_image"] = {img: {"psnr": y[img], "ssim": 0.7, "psnr_rgb": rgb[img],
                                                      "ssim_rgb": 0.6} for img in imgs}
        name_ = "results.json" if protocol == "literature" else "results_official.json"
        (d / name_).write_text(json.dumps(res))
    (d / "metrics.csv").write_text("epoch,step,train/loss,val/psnr\n0,49,0.1,\n0,49,,27.1201\n0,99,,27.1234\n")
    return d


def test_labels_and_size_come_from_the_config_that_ran(tmp_path):
    _job(tmp_path / "sw", "a", 0.0, 0, 0.0)
    _job(tmp_path / "sw", "b", 0.7, 0, 0.1)
    runs, notes = load_runs([tmp_path / "sw"])
    assert {r.size["arch"]["num_feat"] for r in runs} == {16}   # not the 64 of .hydra/config.yaml
    assert runs[0].size["iterations"] == 100 and runs[0].size["data"] == "skimage"
    build_report([tmp_path / "sw"], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "num_feat 16, num_block 16; 100 iterations; skimage; batch 4 x 32 px LR" in md
    assert "500,000 iterations; DIV2K (800 images)" in md       # the paper's size beside it
    assert "num_feat 64" not in md


def test_seeds_are_mean_std_with_count_and_paired_improvement_spread(tmp_path):
    sw = tmp_path / "sw"
    base_off, drop_off = [0.0, 0.1, -0.1], [0.05, 0.2, -0.1]
    for seed in range(3):
        _job(sw, f"base{seed}", 0.0, seed, base_off[seed])
        _job(sw, f"drop{seed}", 0.7, seed, drop_off[seed])
    build_report([sw], tmp_path / "r")
    rows = list(csv.reader((tmp_path / "r" / "table1.csv").open()))
    labels = [r[0] for r in rows]
    i = labels.index("Real-SRResNet (p=0) [mean of 3 seeds]")
    col = rows[0].index("Set5/clean")
    assert float(rows[i][col]) == pytest.approx(25.5, abs=1e-4)     # mean of the per-image means, 3 seeds
    assert rows[i + 1][:2] == ["± std (n=3)", "std"]
    assert float(rows[i + 1][col]) == pytest.approx(np.std(base_off, ddof=1), abs=1e-4)
    j = labels.index("Improvement")
    assert float(rows[j][col]) == pytest.approx(np.mean(drop_off) - np.mean(base_off), abs=1e-4)
    assert float(rows[j + 1][col]) == pytest.approx(np.std(np.subtract(drop_off, base_off), ddof=1), abs=1e-4)
    md = (tmp_path / "r" / "table1.md").read_text()
    assert "25.50 ± 0.10" in md and "mean +- std over the seeds" in md


def test_bicubic_row_and_the_papers_rows_only_on_the_official_protocol(tmp_path):
    sw = tmp_path / "campaign"
    _job(sw, "base", 0.0, 0, 0.0, protocols=("literature", "official"))
    _job(sw, "drop", 0.7, 0, 0.2, protocols=("literature", "official"))
    ref = tmp_path / "bicubic"
    ref.mkdir()
    bic = {"Set5": {d: {"psnr": 24.0, "psnr_rgb": 23.0, "ssim": 0.6, "ssim_rgb": 0.5} for d in DEGS}}
    (ref / "results.json").write_text(json.dumps(bic))
    (ref / "results_official.json").write_text(json.dumps(bic))
    written = build_report([sw], tmp_path / "r")
    lit = list(csv.reader((tmp_path / "r" / "table1.csv").open()))
    off = list(csv.reader((tmp_path / "r" / "table1_official.csv").open()))
    assert lit[1][:3] == ["Bicubic (reference)", "reference", "24.0000"]
    assert off[1][:3] == ["Bicubic (reference)", "reference", "23.0000"]   # the official headline is RGB PSNR
    assert not any(r[0].startswith("paper:") for r in lit)
    paper = {r[0]: r for r in off if r[0].startswith("paper:")}
    col = off[0].index("Set5/clean")
    assert float(paper["paper: Real-SRResNet (p=0)"][col]) == 24.89
    assert float(paper["paper: Real-SRResNet (p=0.7)"][col]) == 25.67
    assert float(paper["paper: Improvement"][col]) == 0.78 and paper["paper: Improvement"][1] == "paper_delta"
    md = (tmp_path / "r" / "table1_official.md").read_text()
    assert "| Bicubic (reference) | 23.00 |" in md and "**" not in md.split("Bicubic (reference)")[1].split("\n")[0]
    assert "How to read" in (tmp_path / "r" / "report.md").read_text()
    assert {"gains_Real_SRResNet.png", "gains_Real_SRResNet_official.png"} <= {p.name for p in written["figures"]}
    with pytest.raises(FileNotFoundError, match="bicubic=.*no results.json"):
        build_report([sw], tmp_path / "r2", bicubic=tmp_path / "nowhere")


def test_gain_axes_include_zero_and_do_not_zoom_into_noise(tmp_path, monkeypatch):
    from src.reports import figures

    sw = tmp_path / "sw"
    _job(sw, "base", 0.0, 0, 0.0)
    _job(sw, "drop", 0.7, 0, 0.004)            # a 0.004 dB gain
    limits = {}
    real_save = figures._save

    def spy(fig, path):
        ax = fig.axes[0]
        limits[Path(path).name] = (ax.get_ylim(), ax.get_ylabel(), ax.yaxis.get_major_formatter().get_useOffset(),
                                   ax.get_title())
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    build_report([sw], tmp_path / "r")
    (lo, hi), label, offset, _ = limits["gains_Real_SRResNet.png"]
    assert lo <= -0.1 and hi >= 0.1 and "dB" in label and offset is False
    _, label, offset, title = limits["curves_Real_SRResNet.png"]
    assert offset is False and "PSNR on skimage_holdout (clean)" in title and "(dB)" in label


def test_a_setting_with_one_seed_gets_no_error_bar_beside_measured_ones(tmp_path, monkeypatch):
    """Fig. 4 with `last` on two seed pairs and `b8` on one (both p=0.7): last's bar carries its interval, b8's bar
    none at all (not a zero-height cap that would read as an exact gain)."""
    from src.reports import figures

    sw = tmp_path / "sw"
    for seed, g in ((0, 0.10), (1, 0.30)):
        _job(sw, f"base{seed}", 0.0, seed, 0.0)
        _job(sw, f"p07_{seed}", 0.7, seed, g)
    _job(sw, "b8_0", 0.7, 0, 0.2, position="b8")
    drawn = {}
    real_save = figures._save

    def spy(fig, path):
        if Path(path).name.startswith("fig4_"):
            ax = fig.axes[0]
            drawn.update({c.get_label(): [np.asarray(s) for s in c.errorbar.lines[2][0].get_segments()]
                          for c in ax.containers if getattr(c, "errorbar", None) is not None})
            drawn["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
            drawn["title"] = fig.axes[-1].get_legend().get_title().get_text()
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    build_report([sw], tmp_path / "r")
    assert drawn["ticks"] == ["last", "B8"]
    last, b8 = drawn["p=0.7"]
    # last: gain 0.2 dB, t interval over the two pairs 0.2 +- t(0.975, 1) * 0.1
    half = stats.t.ppf(0.975, 1) * 0.1
    assert np.allclose(sorted(last[:, 1]), [0.2 - half, 0.2 + half], atol=1e-6)
    assert not np.isfinite(b8).any()         # no segment at all, where a zero-height one used to sit
    assert drawn["title"] == "error bars: 95% CI over seeds\n(none drawn: one seed)"


def test_wandb_tags_of_the_baseline_come_from_the_config_that_ran():
    from hydra.core.hydra_config import HydraConfig

    from src.loggers import wandb_tags

    HydraConfig.instance().cfg = None  # a bare config outside Hydra (an earlier test may have left one set)

    cfg = OmegaConf.create({"backbone": {"_target_": "src.models.srresnet.MSRResNet"},
                            "degradation": {"_target_": "src.data.pipelines.RealESRGANPipeline"},
                            "dropout": {"position": "none", "dim": "channel", "p": 0.7}})
    tags = wandb_tags(cfg)
    assert "p=0" in tags and "position=none" in tags and "p=0.7" not in tags
    cfg.dropout = {"position": "last", "dim": "channel", "p": 0.0}
    assert {"p=0", "position=none"} <= set(wandb_tags(cfg))
    cfg.dropout = {"position": "b4", "dim": "element", "p": 0.3}
    assert {"p=0.3", "position=b4", "dim=element", "backbone=MSRResNet"} <= set(wandb_tags(cfg))


def test_a_comparison_of_one_seed_each_says_once_why_it_has_no_interval():
    from src.reports.prose import headline
    from src.reports.stats import Evidence, t_interval

    one = Evidence("official", "psnr_rgb", paired=False, seeds=(1, 1), overall=t_interval([-0.148]))
    assert headline("RRDB (p=0.5) vs p=0", one) == ("**RRDB (p=0.5) vs p=0: -0.148 dB** "
                                                    "(one seed each: no seed-level interval).")
    two_one = Evidence("official", "psnr_rgb", paired=False, seeds=(2, 1), overall=t_interval([0.2]))
    assert headline("x", two_one) == "**x: +0.200 dB** (2 vs 1 seeds: no seed-level interval)."
