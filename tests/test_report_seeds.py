"""Seed-level inference, the headline of every comparison: intervals against formulas written here, on the
committed fixture (tests/fixtures/results) and on the committed campaign; the README block rebuilt from them."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from src.reports import build_report
from src.reports.collect import Setting, columns, load_runs, merge_seeds
from src.reports.prose import over
from src.reports.stats import (bootstrap_ci, evidence, holm, pairing, paper_effect, seed_difference, set_scores,
                               t_interval, welch_interval)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results"
CAMPAIGN = REPO / "docs" / "results" / "repro_small_kornia"


def _settings(folder, ps=None):
    """The folder's settings by p; only those of `ps` when given (a campaign folder may hold other p too)."""
    runs, _ = load_runs([folder])
    return [s for s in sorted(merge_seeds(runs), key=lambda s: s.p) if ps is None or s.p in ps]


def _pair_gains(folder, name, metric, sets=None, degs=None):
    """Per seed: the mean over every (set, degradation, image) of dropout minus p=0, read off the JSON files."""
    out = {}
    for job in sorted(folder.iterdir()):
        if "p0.7" not in job.name and "p-0.7" not in job.name:
            continue
        seed = job.name.rsplit("seed", 1)[1].lstrip("-")
        base = next(j for j in folder.iterdir() if j.name == job.name.replace("0.7", "0").replace("p-0_", "p-0.0_"))
        a, b = json.loads((base / name).read_text()), json.loads((job / name).read_text())
        d = [b[s][g]["per_image"][i][metric] - a[s][g]["per_image"][i][metric]
             for s in a if sets is None or s in sets for g in a[s] if degs is None or g in degs
             for i in a[s][g]["per_image"]]
        out[seed] = float(np.mean(d))
    return out


def _make_studies() -> list[Path]:
    """The study folders `make report` reads, in its order: the Makefile's STUDIES, the wildcard ones that exist."""
    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if x.startswith("STUDIES := "))
    first, rest = re.fullmatch(r"STUDIES := \$\(RESULTS\)/(\S+) "
                               r"\$\(wildcard \$\(addprefix \$\(RESULTS\)/,([^)]*)\)\)", line).groups()
    results = REPO / "docs" / "results"
    return [results / first] + [results / n for n in rest.split() if (results / n).is_dir()]


def _t_formula(x):
    x = np.asarray(x, float)
    n, m, sd = len(x), x.mean(), x.std(ddof=1)
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half, 2 * sps.t.sf(abs(m / (sd / math.sqrt(n))), n - 1)


def test_t_interval_and_welch_match_their_formulas():
    iv = t_interval([0.1, 0.2, 0.3])
    # mean 0.2, sd 0.1, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert (iv.mean, iv.low, iv.high, iv.n, iv.kind) == pytest.approx((0.2, 0.2 - 0.248414, 0.2 + 0.248414, 3,
                                                                       "paired t"), abs=1e-6)
    assert iv.p == pytest.approx(2 * sps.t.sf(0.2 / (0.1 / math.sqrt(3)), 2))
    a, b = np.array([1.0, 1.2, 0.9, 1.1]), np.array([1.5, 1.3, 1.6])
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    w = welch_interval(a, b)
    assert (w.mean, w.low, w.high, w.kind) == pytest.approx((b.mean() - a.mean(), b.mean() - a.mean() - half,
                                                             b.mean() - a.mean() + half, "Welch t"))
    assert math.isnan(t_interval([0.3]).low) and math.isnan(welch_interval([1.0], [1.0, 2.0]).low)
    # equal seed sets pair, seed sets with fewer than two in common do not
    assert seed_difference({0: 1.0, 1: 2.0, 2: 2.5}, {0: 1.5, 1: 2.4, 2: 3.1}).kind == "paired t"
    assert seed_difference({0: 1.0, 1: 2.0}, {0: 1.5, 5: 2.4}).kind == "Welch t"


def test_pairing_pairs_on_the_common_seeds_whenever_two_pair():
    assert pairing([0, 1, 2], [1, 2]) == [1, 2] and pairing([0, 1], [1, 2]) is None
    assert pairing([0, 1, 2], [0]) == [0] and pairing([0], [1]) == []
    # 3 seeds against 2: the seed only one side ran is left out and the two pairs give the paired interval
    iv = seed_difference({0: 1.0, 1: 2.0, 2: 9.0}, {0: 1.5, 1: 2.7})
    m, lo, hi, p = _t_formula([0.5, 0.7])
    assert (iv.kind, iv.n, iv.mean, iv.low, iv.high, iv.p) == pytest.approx(("paired t", 2, m, lo, hi, p))


def test_holm_steps_down():
    # sorted p 0.01, 0.015, 0.02, 0.2 against 0.05/4, 0.05/3, 0.05/2, 0.05: the first three pass, 0.2 does not
    assert holm([0.02, 0.01, 0.2, 0.015]) == [True, True, False, True]
    # 0.02 > 0.05/3 stops the procedure: 0.03 is not rejected although it is below 0.05/2
    assert holm([0.03, 0.01, 0.2, 0.02]) == [False, True, False, False]
    # 0.013 > 0.05/4 = 0.0125: nothing is rejected, however small the later ones are relative to their level
    assert holm([0.013, 0.014, 0.015, 0.016]) == [False] * 4
    assert holm([float("nan"), 0.001]) == [False, True]


@pytest.mark.parametrize("protocol,name,metric", [("literature", "results.json", "psnr"),
                                                  ("official", "results_official.json", "psnr_rgb")])
def test_seed_level_gain_on_the_committed_fixture_matches_the_formula(protocol, name, metric):
    base, drop = _settings(FIXTURE / "mini")
    ev = evidence(base, drop, columns([base, drop], protocol), metric, protocol, b=200)
    gains = _pair_gains(FIXTURE / "mini", name, metric)
    assert ev.per_pair == pytest.approx([gains[k] for k in sorted(gains)], abs=1e-9)
    m, lo, hi, p = _t_formula(list(gains.values()))
    assert (ev.overall.mean, ev.overall.low, ev.overall.high, ev.overall.p) == pytest.approx((m, lo, hi, p))
    # per set and per degradation: image-weighted over the cells they cover
    m_set5 = _t_formula(list(_pair_gains(FIXTURE / "mini", name, metric, sets={"Set5"}).values()))
    assert ev.by_set["Set5"].mean == pytest.approx(m_set5[0]) and ev.by_set["Set5"].low == pytest.approx(m_set5[1])
    m_noise = _t_formula(list(_pair_gains(FIXTURE / "mini", name, metric, degs={"noise"}).values()))
    assert ev.by_degradation["noise"].high == pytest.approx(m_noise[2])
    assert len(ev.by_column) == 16 and ev.above + ev.below <= 16
    assert ev.column_mean == pytest.approx(np.mean([iv.mean for iv in ev.by_column.values()]))
    # the fixture's per-seed offsets are shared by both settings of a seed: the paired gain is the set gain
    assert ev.overall.mean == pytest.approx({"literature": 0.01, "official": 0.30}[protocol], abs=0.01)
    # a base seed the variant did not run is left out: the remaining seed pairs give the interval
    kept = sorted(gains)[:-1]
    drop2 = Setting([r for r in drop.runs if str(r.seed) in kept])
    ev2 = evidence(base, drop2, columns([base, drop2], protocol), metric, protocol, b=50)
    assert (ev2.paired, ev2.seeds, ev2.left_out) == (True, (len(kept), len(kept)), 1)
    m2, lo2, hi2, _ = _t_formula([gains[k] for k in kept])
    assert (ev2.overall.mean, ev2.overall.low, ev2.overall.high) == pytest.approx((m2, lo2, hi2))
    assert over(ev2) == (f"paired t over {len(kept)} seed pairs, df = {len(kept) - 1}; "
                         "1 run(s) without a seed pair left out")


def test_two_level_bootstrap_equals_a_plain_loop_over_the_same_draws():
    base, drop = _settings(FIXTURE / "mini")
    scores = set_scores(base, drop, columns([base, drop], "official"), "psnr_rgb", "official")
    b = 50
    lo, hi = bootstrap_ci(scores, True, b=b, seed=7)
    rng = np.random.default_rng(7)
    pairs = rng.integers(0, 3, size=(b, 3))
    images = {s: rng.integers(0, len(sc.images), size=(b, len(sc.images))) for s, sc in scores.items()}
    stat = []
    for k in range(b):  # resample seed pairs, then each set's images; every image x degradation weighs the same
        diffs = [(sc.variant[pairs[k]] - sc.base[pairs[k]])[:, :, images[s][k]] for s, sc in scores.items()]
        stat.append(np.concatenate([d.ravel() for d in diffs]).mean())
    assert (lo, hi) == pytest.approx(tuple(np.quantile(stat, [0.025, 0.975])))
    assert bootstrap_ci(scores, True, b=b, seed=7) == (lo, hi)      # a fixed RNG seed: the same interval


def test_paper_effect_is_a_mean_over_the_same_columns_and_a_median_ratio():
    ours = {("Set5", "clean"): 0.2, ("Set5", "blur"): 0.1, ("Set14", "clean"): 0.05, ("Manga109", "clean"): 9.0}
    paper = {("Set5", "clean"): 0.8, ("Set5", "blur"): 0.2, ("Set14", "clean"): 0.5}
    pe = paper_effect(ours, paper)
    assert (pe.columns, pe.ours, pe.paper) == pytest.approx((3, 0.35 / 3, 1.5 / 3))
    assert pe.median_ratio == pytest.approx(0.25)      # ratios 0.25, 0.5, 0.1
    assert paper_effect(ours, {}) is None


@pytest.mark.parametrize("protocol,name,metric,expected", [
    ("official", "results_official.json", "psnr_rgb", (0.063, 0.018, 0.107, 0.026)),
    ("literature", "results.json", "psnr", (0.053, 0.012, 0.095, 0.032))])
def test_committed_campaign_seed_level_gain(protocol, name, metric, expected):
    """The committed Table 1 pair (3 paired seeds): the seed-level gain a reviewer recomputed independently."""
    base, drop = _settings(CAMPAIGN, ps=(0.0, 0.7))
    ev = evidence(base, drop, columns([base, drop], protocol), metric, protocol, b=100)
    assert (ev.overall.mean, ev.overall.low, ev.overall.high, ev.overall.p) == pytest.approx(expected, abs=6e-4)
    assert _t_formula(list(_pair_gains(CAMPAIGN, name, metric).values())) == pytest.approx(
        (ev.overall.mean, ev.overall.low, ev.overall.high, ev.overall.p))
    assert ev.holm_above == 0 and ev.below == 0 and len(ev.by_column) == 32


def test_make_report_on_the_committed_files_reproduces_the_committed_readme_block_and_files(tmp_path):
    """`make report` is idempotent: rebuilt from the committed files, the README block, summary.md and the
    comparison files are byte for byte the committed ones (so prose cannot drift from the data)."""
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    out = tmp_path / "docs" / "results"
    studies = _make_studies()
    build_report(studies, out, readme=readme, bicubic=REPO / "docs" / "results" / "bicubic")
    assert readme.read_text() == (REPO / "README.md").read_text()
    for name in ("summary.md", "comparison.csv", "comparison_official.csv", "comparison_columns_official.csv"):
        assert (out / name).read_text() == (REPO / "docs" / "results" / name).read_text(), name
    block = readme.read_text().split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    # the README carries each comparison's seed-level headline and points at the complete summary
    assert "+0.063 dB [95% CI +0.018, +0.107], p = 0.026" in block
    # the headlines of the paper's Table 1 settings (SRResNet p=0.7, RRDB p=0.5) only; the other settings are
    # counted, and have their line in the scorecard block
    names = [r["comparison"] for f in ("comparison.csv", "comparison_official.csv") for r in csv.DictReader((out / f).open())]
    # (a backbone trained at two sizes has its size in both groups' names: Real-SRResNet[num_feat=32,num_block=4])
    table1 = [n for n in names if re.match(r"Real-(SRResNet(\[[^]]*\])? \(p=0\.7\)|RRDB(\[[^]]*\])? \(p=0\.5\))", n)]
    assert block.count("\n- **") == len(table1) >= 5 and "[docs/results/summary.md](docs/results/summary.md)" in block
    assert all(f"**{n}:" in block for n in table1)
    others = len(names) - len(table1)
    assert others == 0 or f"({others} more comparisons of other dropout settings there)" in block
    assert "Wilcoxon" not in block and "| Model |" not in block
    summary = (out / "summary.md").read_text()
    assert "Wilcoxon" in summary and "| Model |" in summary and "+0.063 dB [95% CI +0.018, +0.107]" in summary
    rows = {r["comparison"]: r for r in csv.DictReader((out / "comparison_official.csv").open())}
    kornia = "Real-SRResNet[num_feat=32,num_block=4] (p=0.7) [mean of 3 seeds] [repro_small_kornia] vs p=0"
    assert rows[kornia]["columns_above"] == "14"


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    with pytest.raises(ValueError, match=r"readme=.*README.md: needs one <!-- results:begin --> line"):
        build_report([FIXTURE / "mini"], tmp_path / "out", readme=readme, bicubic=FIXTURE / "bicubic")


def test_two_campaigns_of_one_setting_are_compared_each_with_its_own_baseline(tmp_path):
    """A retrained campaign beside the old one (another codec, here another step count): each dropout setting is
    compared with the baseline of its own experiment, and rows are named by their campaign folder."""
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(FIXTURE / "mini", old)
    shutil.copytree(FIXTURE / "mini", new)
    for job in new.iterdir():
        cfg = job / "config.yaml"
        cfg.write_text(cfg.read_text().replace("max_steps: 2000", "max_steps: 4000"))
        if job.name.startswith("p0.7"):  # the new campaign's dropout runs gain 0.5 dB more on every image
            res = json.loads((job / "results_official.json").read_text())
            for degs in res.values():
                for cell in degs.values():
                    cell["psnr_rgb"] += 0.5
                    for v in cell["per_image"].values():
                        v["psnr_rgb"] += 0.5
            (job / "results_official.json").write_text(json.dumps(res))
    out = tmp_path / "out"
    build_report([old, new], out, bicubic=FIXTURE / "bicubic")
    rows = {r["comparison"]: float(r["gain"]) for r in csv.DictReader((out / "comparison_official.csv").open())}
    base = _t_formula(list(_pair_gains(FIXTURE / "mini", "results_official.json", "psnr_rgb").values()))[0]
    assert rows == pytest.approx({"Real-SRResNet (p=0.7) [mean of 3 seeds] [old] vs p=0": base,
                                  "Real-SRResNet (p=0.7) [mean of 3 seeds] [new] vs p=0": base + 0.5})
    table = list(csv.reader((out / "table1_official.csv").open()))
    improvements = [r for r in table if r[0] == "Improvement"]
    col = table[0].index("Set5/clean")
    assert len(improvements) == 2 and float(improvements[1][col]) - float(improvements[0][col]) == pytest.approx(
        0.5, abs=1e-3)
    assert {p.name for p in out.glob("gains_*_official.png")} == {"gains_Real_SRResNet_old_official.png",
                                                                  "gains_Real_SRResNet_new_official.png"}


def test_the_report_prints_the_global_batch_the_run_recorded(tmp_path):
    """train_done.json's `batch` (global, devices, per device) is what the report says, over the config's value:
    a run recorded with another global batch than its config names is reported with the recorded one."""
    from src.reports.collect import read_run, size_text

    study = tmp_path / "study"
    shutil.copytree(FIXTURE / "mini", study)
    (study / "p0_seed0" / "train_done.json").write_text(json.dumps(
        {"global_step": 2000, "fit_seconds": 1.0, "batch": {"global": 64, "devices": 8, "per_device": 8}}))
    (study / "p0_seed1" / "train_done.json").write_text(json.dumps(
        {"global_step": 2000, "fit_seconds": 1.0, "batch": {"global": 16, "devices": 1, "per_device": 16}}))
    split, single, older = (read_run(study / n) for n in ("p0_seed0", "p0_seed1", "p0_seed2"))
    assert (split.size["batch"], split.size["devices"]) == (64, 8)
    assert "batch 64 (8 on each of 8 devices) x 32 px LR" in size_text(split.size)
    assert "batch 16 x 32 px LR" in size_text(single.size) and "devices" not in size_text(single.size)
    assert "batch 16 x 32 px LR" in size_text(older.size)  # no record: the config's data.batch_size
    build_report([study / "p0_seed0"], tmp_path / "out", bicubic=FIXTURE / "bicubic")
    assert "batch 64 (8 on each of 8 devices) x 32 px LR" in (tmp_path / "out" / "report.md").read_text()
