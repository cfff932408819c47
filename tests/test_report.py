"""Reports from a synthetic sweep folder: tables (md/tex/csv), best marks, figures, manifest, W&B tables."""
from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.report import main
from src.reports import build_report, load_runs

DEGS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
GAIN = {"none": 0.0, "last": 0.5, "b4": 0.2, "b8": 0.3, "all": -1.0}
BACKBONES = {"SRResNet": "src.models.srresnet.MSRResNet", "RRDB": "src.models.rrdb.RRDBNet"}


def _value(backbone, s, d, position, dim, p):
    base = {"Set5": 25.0, "BSD100": 23.5}[s] - DEGS.index(d) * 0.3 + (0.4 if backbone == "RRDB" else 0.0)
    return base + GAIN[position] * p * (1.0 if dim == "channel" else -0.5)


def _run(sweep, name, backbone, position, dim, p, curve=True, results=True):
    d = sweep / name
    cfg = {"scale": 4, "backbone": {"_target_": BACKBONES[backbone], "upscale": "${scale}",
                                    "dropout_p": "${dropout.p}"},
           "dropout": {"position": position, "dim": dim, "p": p},
           "degradation": {"_target_": "src.data.pipelines.RealESRGANPipeline", "scale": "${scale}"}}
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), d / ".hydra" / "config.yaml")
    if results:
        res = {s: {g: {"psnr": _value(backbone, s, g, position, dim, p), "ssim": 0.7, "psnr_rgb": 22.0,
                       "ssim_rgb": 0.6, "n_images": 5, "skipped": 0, "scale": 4, "seed": 0} for g in DEGS}
               for s in ("Set5", "BSD100")}
        (d / "results.json").write_text(json.dumps(res))
    if curve:
        rows = ["epoch,step,train/loss,val/psnr"]
        for k in range(1, 6):
            rows.append(f"0,{k * 100 - 1},0.05,")
            rows.append(f"0,{k * 100 - 1},,{20 + 2 * np.log(k) + GAIN[position] * p:.4f}")
        (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    return name


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = {}
    specs = [("SRResNet", "none", "channel", 0.0), ("SRResNet", "last", "channel", 0.1),
             ("SRResNet", "last", "channel", 0.5), ("SRResNet", "last", "channel", 0.7),
             ("SRResNet", "last", "element", 0.1), ("SRResNet", "last", "element", 0.7),
             ("SRResNet", "b4", "channel", 0.7), ("SRResNet", "b8", "channel", 0.7),
             ("SRResNet", "b4", "element", 0.7),
             ("RRDB", "none", "channel", 0.0), ("RRDB", "last", "channel", 0.5)]
    for i, spec in enumerate(specs):
        name = _run(sweep, f"job{i}", *spec)
        jobs[name] = {"dir": name, "status": "completed", "overrides": []}
    _run(sweep, "job_bad", "SRResNet", "all", "channel", 0.7, results=False)
    jobs["job_bad"] = {"dir": "job_bad", "status": "failed", "error": "RuntimeError: out of memory"}
    (sweep / "manifest.json").write_text(json.dumps({"name": "test", "jobs": jobs, "failed": ["job_bad"]}))
    return sweep


def _png_ok(path: Path):
    img = cv2.imread(str(path))
    assert img is not None and min(img.shape[:2]) > 150 and img.std() > 5, path


def test_report_tables_and_figures(sweep, tmp_path):
    out = tmp_path / "report"
    written = build_report([sweep], out)
    names = sorted(p.name for p in written["tables"])
    for stem in ("table1", "table_b3_Real_SRResNet_channel_p0.7", "table_a2_Real_SRResNet_last_channel",
                 "table_a2_Real_SRResNet_last_element"):
        for ext in ("md", "tex", "csv"):
            assert f"{stem}.{ext}" in names
    assert not any("RRDB" in n and "table_a2" in n for n in names)  # one probability only: no A.2 table

    md = (out / "table1.md").read_text()
    # Real-SRResNet block first (paper order); improvement of last/channel/p=0.7 on Set5 clean = 0.5 * 0.7
    assert md.index("Real-SRResNet (p=0)") < md.index("Real-RRDB (p=0)")
    rows = list(csv.reader((out / "table1.csv").open()))
    header = rows[0]
    col = header.index("Set5/clean")
    i = [r[0] for r in rows].index("Real-SRResNet (p=0.7)")
    assert rows[i + 1][0] == "Improvement" and float(rows[i + 1][col]) == pytest.approx(0.35, abs=1e-4)
    assert rows[i + 1][1] == "delta" and "+0.35" in md
    assert len(header) == 2 + 2 * 8

    # B.3: last (p=0.7) leads, B8 follows, but with one seed per row no interval separates them: no marks
    b3 = (out / "table_b3_Real_SRResNet_channel_p0.7.md").read_text()
    assert "| last (p=0.7) | 25.35 |" in b3 and "**25" not in b3
    tex = (out / "table_b3_Real_SRResNet_channel_p0.7.tex").read_text()
    assert "\\textcolor{red}{" not in tex and "\\begin{tabular}" in tex
    a2 = list(csv.reader((out / "table_a2_Real_SRResNet_last_channel.csv").open()))
    assert a2[0][2:] == ["p=0", "p=0.1", "p=0.5", "p=0.7"] and a2[1][0] == "Set5 clean"

    report = (out / "report.md").read_text()
    assert "job_bad" in report and "out of memory" in report
    figs = {p.name for p in written["figures"]}
    assert {"fig4_Real_SRResNet.png", "curves_Real_SRResNet.png", "curves_Real_RRDB.png"} <= figs
    for p in written["figures"]:
        _png_ok(p)


def test_runs_without_manifest_and_seed_averaging(sweep, tmp_path):
    (sweep / "manifest.json").unlink()
    runs, notes = load_runs([sweep])
    assert len(runs) == 11 and any("job_bad" in n and "no results.json" in n for n in notes)
    # a second seed of the baseline is averaged into one row
    _run(sweep, "job_seed1", "SRResNet", "none", "channel", 0.0)
    res = json.loads((sweep / "job_seed1" / "results.json").read_text())
    res["Set5"]["clean"]["psnr"] += 1.0
    (sweep / "job_seed1" / "results.json").write_text(json.dumps(res))
    build_report([sweep], tmp_path / "r")
    rows = list(csv.reader((tmp_path / "r" / "table1.csv").open()))
    base = [r for r in rows if r[0].startswith("Real-SRResNet (p=0)")]
    assert len(base) == 1 and "mean of 2" in base[0][0]
    assert float(base[0][rows[0].index("Set5/clean")]) == pytest.approx(25.5, abs=1e-4)


def test_wandb_tables_logged_when_a_run_is_active(sweep, tmp_path, monkeypatch):
    logged = {}
    fake = types.SimpleNamespace(run=object(), Table=lambda columns, data: ("table", columns, data),
                                 log=lambda d: logged.update(d))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    build_report([sweep], tmp_path / "r")
    assert "report/table1" in logged and logged["report/table1"][1][:3] == ["row", "kind", "Set5/clean"]


def test_fig5_visual_grid_and_cli(sweep, tmp_path, capsys):
    from src.models.loading import build_backbone

    cfg = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 8, "num_block": 1, "upscale": 4}
    ckpts = []
    for i in range(2):
        torch.manual_seed(i)
        net = build_backbone(cfg)
        path = tmp_path / f"m{i}" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                    "hyper_parameters": {"backbone": cfg}}, path)
        ckpts.append(str(path))
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.random((12, 16, 3)), (128, 96), interpolation=cv2.INTER_CUBIC)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    assert main([str(sweep), f"out={tmp_path / 'r'}", f"fig5=[{','.join(ckpts)},{image}]",
                 "fig5_degradations=[clean,b+n+j]"]) == 0
    assert "fig5_visual.png" in capsys.readouterr().out
    _png_ok(tmp_path / "r" / "fig5_visual.png")


def test_runs_of_different_experiments_are_not_averaged(sweep, tmp_path):
    (sweep / "manifest.json").unlink()
    _run(sweep, "job_other", "SRResNet", "none", "channel", 0.0)
    cfg = OmegaConf.load(sweep / "job_other" / ".hydra" / "config.yaml")
    cfg.trainer = {"max_steps": 10}  # a different experiment, not another seed
    cfg.seed = 3
    OmegaConf.save(cfg, sweep / "job_other" / ".hydra" / "config.yaml")
    build_report([sweep], tmp_path / "r")
    labels = [r[0] for r in csv.reader((tmp_path / "r" / "table1.csv").open())]
    assert "Real-SRResNet (p=0) [job0]" in labels and "Real-SRResNet (p=0) [job_other]" in labels


def test_cli_key_value_options_help_and_errors(capsys):
    from src.report import parse_args

    folders, opts = parse_args(["runs/sw/dropout.p=0.7", "out=/tmp/x", "metric=ssim", "fig4=Set5/noise"])
    assert folders == ["runs/sw/dropout.p=0.7"] and opts == {"out": "/tmp/x", "metric": "ssim", "fig4": "Set5/noise"}
    with pytest.raises(SystemExit, match="metric=lpips is not one of psnr, ssim"):
        parse_args(["runs/sw", "metric=lpips"])
    with pytest.raises(SystemExit, match="unknown option '--outdir'"):
        parse_args(["runs/sw", "--outdir", "x"])
    with pytest.raises(SystemExit, match="fig5 needs 3 paths"):
        parse_args(["runs/sw", "fig5=[a,b]"])
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m src.report FOLDER" in out and "examples:" in out and "out=DIR" in out


def test_published_rows_stand_only_beside_models_trained_as_the_paper_trained():
    from src.reports.paper import paper_gains, paper_rows

    args = ("table1", "SRResNet", [("none", 0.0), ("last", 0.7)], "official", "psnr_rgb")
    real = paper_rows(*args, "RealESRGANPipeline")
    assert [kind for _, _, kind in real] == ["paper", "paper", "paper_delta"]
    assert real[0][1]["Set5"]["clean"] == 24.89   # the paper's Real-SRResNet (p=0), Set5 clean
    # a bicubic-trained SRResNet is not the paper's Real-SRResNet: no published row, no published gain beside it
    assert paper_rows(*args, "BicubicPipeline") == [] and paper_rows(*args, "") == []
    assert paper_gains(*args[1:], "BicubicPipeline") == {} and paper_gains(*args[1:], "RealESRGANPipeline")


def _scored_run(folder, backbone, pipeline, p, seed, degs, offset, position="last"):
    """A run folder whose results hold per-image scores: image k scores 25 + k + offset (+ 0.1 with dropout)."""
    cfg = {"scale": 4, "seed": seed, "backbone": {"_target_": BACKBONES[backbone], "upscale": "${scale}"},
           "dropout": {"position": position if p else "none", "dim": "channel", "p": p},
           "degradation": {"_target_": f"src.data.pipelines.{pipeline}", "scale": "${scale}"}}
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), folder / ".hydra" / "config.yaml")
    res = {}
    for s in ("Set5", "BSD100"):
        for d in degs:
            per = {f"im{k}": {m: 25.0 + k + offset + (0.1 if p else 0.0) for m in ("psnr", "psnr_rgb")}
                   | {"ssim": 0.7, "ssim_rgb": 0.6} for k in range(2)}
            res.setdefault(s, {})[d] = {"psnr": float(np.mean([v["psnr"] for v in per.values()])), "ssim": 0.7,
                                        "psnr_rgb": 22.0, "ssim_rgb": 0.6, "n_images": 2, "skipped": 0,
                                        "scale": 4, "seed": seed, "per_image": per}
    (folder / "results.json").write_text(json.dumps(res))


def test_bicubic_trained_models_get_their_own_table_comparisons_and_figures(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        for p in (0.0, 0.7):
            _scored_run(sweep / f"real_p{p}_s{seed}", "SRResNet", "RealESRGANPipeline", p, seed, DEGS, 0.0)
            # the bicubic setting is scored on clean input only
            _scored_run(sweep / f"bic_p{p}_s{seed}", "SRResNet", "BicubicPipeline", p, seed, ["clean"], 3.0)
        _scored_run(sweep / f"bic_all_s{seed}", "SRResNet", "BicubicPipeline", 0.7, seed, ["clean"], 3.0, "all")
        _scored_run(sweep / f"real_all_s{seed}", "SRResNet", "RealESRGANPipeline", 0.7, seed, DEGS, 0.0, "all")
    # a clean-only positions table ("RRDB" sorts before "Real-SRResNet") must not narrow the tables after it
    for position in ("last", "all"):
        _scored_run(sweep / f"bic_rrdb_{position}", "RRDB", "BicubicPipeline", 0.7, 0, ["clean"], 3.0, position)
    out = tmp_path / "report"
    build_report([sweep], out)
    table1 = (out / "table1.md").read_text()
    assert "| Real-SRResNet (p=0) [mean of 2 seeds] |" in table1 and "| SRResNet (p=0" not in table1
    bicubic = (out / "table1_bicubic.md").read_text()
    assert "| Model | clean |" in bicubic and "| SRResNet (p=0.7) [mean of 2 seeds] | 28.60 ± 0.00 |" in bicubic
    assert "Real-SRResNet" not in bicubic
    rows = {r["comparison"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    bic = rows["SRResNet (p=0.7) [mean of 2 seeds] vs p=0"]
    # over the 2 clean columns the bicubic models scored, not the 16 of the Real ones: +0.1 on every image
    assert bic["columns"] == "2" and float(bic["gain"]) == pytest.approx(0.1) and bic["images"] == "4"
    assert rows["Real-SRResNet (p=0.7) [mean of 2 seeds] vs p=0"]["columns"] == "16"
    _png_ok(out / "gains_SRResNet.png")
    # its positions table (Table B.3 layout) keeps the one column it scored, and every row names its seeds
    b3 = (out / "table_b3_SRResNet_channel_p0.7.md").read_text()
    assert b3.count("| Model | clean |\n") == 2 and "blur" not in b3
    for label in ("SRResNet (p=0)", "last (p=0.7)", "all (p=0.7)"):
        assert f"| {label} [mean of 2 seeds] | 28.{6 if 'p=0.7' in label else 5}0 ± 0.00 |" in b3, label
    assert "| Model | clean |\n" in (out / "table_b3_RRDB_channel_p0.7.md").read_text()
    assert (out / "table_b3_Real_SRResNet_channel_p0.7.md").read_text().count(
        "| Model | clean | blur | noise | jpeg | b+n | b+j | n+j | b+n+j |") == 2


def test_a_rebuild_removes_what_the_last_build_wrote_and_this_one_does_not(sweep, tmp_path):
    import shutil

    from src.reports.build import GENERATED

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("not the report's")
    first = build_report([sweep], out=out)
    assert (out / "curves_Real_RRDB.png").is_file()
    listed = (out / GENERATED).read_text().split()
    assert listed == sorted(p.name for ps in first.values() for p in ps) and "notes.md" not in listed
    # the RRDB runs leave the results: their figures and table rows go with them on the next build
    manifest = json.loads((sweep / "manifest.json").read_text())
    for job in ("job9", "job10"):
        shutil.rmtree(sweep / job)
        del manifest["jobs"][job]
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    (out / GENERATED).write_text((out / GENERATED).read_text() + "../outside.md\n")  # a damaged list
    (tmp_path / "outside.md").write_text("kept")
    second = build_report([sweep], out=out)
    names = {p.name for ps in second.values() for p in ps}
    gone = set(listed) - names
    assert "curves_Real_RRDB.png" in gone
    assert not any((out / name).exists() for name in gone)
    assert all((out / name).is_file() for name in names)
    assert (out / "notes.md").read_text() == "not the report's" and (tmp_path / "outside.md").read_text() == "kept"
    assert (out / GENERATED).read_text().split() == sorted(names)
