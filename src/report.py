"""Rebuild the paper's tables and figures from the result files of sweeps, run folders or committed results.

usage: python -m src.report FOLDER [FOLDER ...] [key=value ...]
       python -m src.report scorecard [RESULTS] [readme=FILE] RESULTS/scorecard.md: each claim of the paper, its
                                                              interval and verdict (default docs/results); the
                                                              verdict counts between FILE's scorecard markers
       python -m src.report rescore=RUN [sets=[Set5]]         check committed weights against committed scores
       python -m src.report blend=FOLDER [val=[SET,...]]      the shrinkage control of every p=0 model in FOLDER
       python -m src.report attach=RUN into=PUBLISHED          give a published run the weights of a retraining

FOLDER is a sweep folder, a run folder, or a folder of committed results (docs/results/<campaign>); every run
folder below it with a config (config.yaml, the config the run actually used) and results.json (literature
protocol) / results_official.json (the paper's protocol) is read. Runs that differ only in their seed are one
setting: mean +- std over the seeds, with the seed count. Each dropout setting is compared with the baseline of
its experiment (and with the blends made from it, see blend=) by seed-level intervals over seed pairs (needs
per_image in the results files), with per-image tests as a secondary line.

options (key=value):
  out=DIR                 output folder (default: <first FOLDER>/report)
  publish=DIR             first copy each finished run's small result files (config, job, results, metrics) and
                          its weights (weights.safetensors exported from checkpoints/last.ckpt, and the
                          checkpoints/step-*.safetensors it kept; 2 MB cap per weights file, 500 KB per result
                          file) to DIR/<run folder>, then report from DIR: how a campaign's results are committed
                          (docs/results/<campaign>) and grow run by run
  weights=half            publish the weights rounded to float16 (half the size: a model over the 2 MB cap in
                          float32, such as the reduced RRDB; loading casts them back, rescore checks the scores)
  weights=false           publish the result files alone, without weights
  metric=NAME             psnr | ssim | psnr_rgb | ssim_rgb (default: psnr; psnr means each protocol's own:
                          PSNR-Y for the literature protocol, RGB PSNR for the paper's official one)
  bicubic=DIR             results of the bicubic reference (default: a bicubic/ folder in or beside FOLDER)
  fig4=SET/DEG            the column of the dropout bar chart (default: BSD100/clean)
  fig5=[WITHOUT,WITH,IMG] checkpoints without and with dropout and an HR image: the visual comparison grid
  fig5_degradations=[..]  rows of that grid (default: [clean,noise])
  backbone=NAME           conf/backbone name, for BasicSR .pth checkpoints in fig5
  rescore=[RUN,...]       re-score published runs from their weights (weights.safetensors, else last.ckpt) under
                          the protocols, seeds and degradations their results files record, and compare every
                          per-image score with the committed one (exit 1 on a mismatch); sets=[..] limits the sets
  blend=[FOLDER,...]      the shrinkage control of every p=0 run in FOLDER (run, sweep or published campaign):
                          its output blended with the protocol's bicubic, a*SR + (1-a)*bicubic, a on a 0.05 grid
                          chosen on val=[SET,...] (default: the run's data.val_sets; never a test set), blind (one
                          a) and oracle (one a per degradation), scored on the run's own test columns; written
                          beside the run as <run>.blend-blind/ and <run>.blend-oracle/, which the report then
                          compares with dropout. Costs one forward and two scorings per test image, degradation
                          and protocol: about the run's own evaluation time again, plus the validation images
  attach=RUN into=DIR     a published run (DIR) without weights, lost with the machine that trained it, gets
                          those of RUN, a retraining of it by the same command (training is seeded and
                          deterministic; RUN may be stopped once its train_done.json is written, before scoring)
                          or a weights file kept elsewhere: a RUN folder must match DIR's identity and step, and
                          the weights (weights=half: rounded to float16) are kept only if they reproduce DIR's
                          committed per-image scores on sets=[..] (default [Set5]); else DIR is left as it was
  device=cpu|cuda         for rescore, blend and attach (default cpu); cache_dir=DIR keeps their LR images
  readme=FILE             also write the comparisons' headlines (one line each, with a link to out/summary.md)
                          between the `<!-- results:begin -->` and `<!-- results:end -->` lines of FILE
                          (make report: README.md)

examples:
  python -m src.report runs/positions
  python -m src.report runs/positions runs/probabilities out=docs/positions metric=ssim
  python -m src.report docs/results/repro_small_kornia out=docs/results readme=README.md   # as `make report`
  python -m src.report runs/repro_small/sweep publish=docs/results/repro_small out=docs/results
  python -m src.report rescore=docs/results/repro_small/dropout.p-0.0_seed-0 sets=[Set5]
  python -m src.report blend=docs/results/repro_small val=[skimage_holdout]
  python -m src.report runs/main fig5=[runs/main/a/checkpoints/last.ckpt,runs/main/b/checkpoints/last.ckpt,img.png]

Outputs in DIR: table1 / table_b3_* / table_a2_* as .md, .tex and .csv (suffix _official for the paper's
protocol, which also shows the paper's published rows), comparison*.csv (seed-level gain per comparison: t interval
over seed pairs, two-level bootstrap, column counts, per-image tests), comparison_columns*.csv (per set x
degradation), fig4_*.png, gains_*.png, curves_*.png, fig5_visual.png, summary.md (every number the README's
results section quotes) and report.md gathering everything.
"""
from __future__ import annotations

import sys
from typing import Sequence

from src import runs
from src.metrics import METRICS
from src.reports import build_report

OPTIONS = ("out", "publish", "weights", "metric", "bicubic", "fig4", "fig5", "fig5_degradations", "backbone", "readme",
           "rescore", "sets", "blend", "val", "device", "cache_dir", "attach", "into")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.strip("[]").split(",") if v.strip()]


def parse_args(argv: Sequence[str]) -> tuple[list[str], dict]:
    """(folders, options). An argument is an option when the text before its first `=` is an option name, so
    folder names that contain `=` stay folders."""
    folders, opts = [], {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if eq and key in OPTIONS:
            opts[key] = value
        elif arg.startswith("-"):
            raise SystemExit(f"src.report: unknown option {arg!r}; options are key=value: {', '.join(OPTIONS)} "
                             "(see python -m src.report --help)")
        else:
            folders.append(arg)
    for key in ("rescore", "sets", "blend", "val"):
        if key in opts:
            opts[key] = _list(opts[key])
    if ("attach" in opts) != ("into" in opts):
        raise SystemExit("src.report: attach=RUN needs into=PUBLISHED (the published run that gets its weights), and "
                         "into= needs attach=")
    if not folders and not {"rescore", "blend", "attach"} & set(opts):
        raise SystemExit("src.report: no FOLDER given (see python -m src.report --help)")
    if opts.get("weights", "true") not in ("true", "half", "false"):
        raise SystemExit(f"src.report: weights={opts['weights']} is not one of true, half, false")
    if opts.get("metric", "psnr") not in METRICS:
        raise SystemExit(f"src.report: metric={opts['metric']} is not one of {', '.join(METRICS)}")
    if "fig5" in opts:
        opts["fig5"] = _list(opts["fig5"])
        if len(opts["fig5"]) != 3:
            raise SystemExit(f"src.report: fig5 needs 3 paths [checkpoint without dropout, with dropout, image]; "
                             f"got {opts['fig5']}")
    if "fig5_degradations" in opts:
        opts["fig5_degradations"] = tuple(_list(opts["fig5_degradations"]))
    return folders, opts


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    if argv[0] == "scorecard":
        from src.reports.scorecard import write_scorecard

        readme = [a.partition("=")[2] for a in argv[1:] if a.startswith("readme=")]
        folders = [a for a in argv[1:] if not a.startswith("readme=")]
        if len(folders) > 1 or len(readme) > 1:
            raise SystemExit(f"src.report scorecard takes one results folder and readme=FILE, got {argv[1:]}")
        for p in write_scorecard(folders[0] if folders else "docs/results", readme=readme[0] if readme else None):
            print(f"[report] scorecard: {p}")
        return 0
    folders, opts = parse_args(argv)
    tool = {k: opts.pop(k) for k in ("rescore", "sets", "blend", "val", "device", "cache_dir", "attach", "into")
            if k in opts}
    device, cache = tool.get("device", "cpu"), tool.get("cache_dir")
    if "attach" in tool:
        from src.models.loading import half_precision
        from src.reports.rescore import attach, format_checks

        weights = opts.pop("weights", "true")
        if weights == "false":
            raise SystemExit("src.report: attach= with weights=false attaches nothing; use weights=true or half")
        try:
            checks = attach(tool["attach"], tool["into"], convert=half_precision if weights == "half" else None,
                            sets=tool.get("sets") or ["Set5"], device=device, cache_dir=cache)
        except (ValueError, OSError) as e:  # each names the folder and what is wrong; nothing was changed
            raise SystemExit(f"src.report: {e}") from None
        print(format_checks(tool["into"], checks, source=f"the weights of {tool['attach']}"))
        ok = bool(checks) and all(c.ok for c in checks)
        print(f"[report] attached: {runs.final_weights(tool['into'])}" if ok else
              f"[report] not attached: these weights do not reproduce the committed scores; {tool['into']} is left "
              f"as it was")
        if not ok or not folders:
            return int(not ok)
    if "rescore" in tool:
        from src.reports.rescore import format_checks, rescore

        bad = 0
        for run in tool["rescore"]:
            checks = rescore(run, tool.get("sets"), device=device, cache_dir=cache)
            print(format_checks(run, checks))
            bad += sum(not c.ok for c in checks)
        if bad or not folders:
            return int(bad > 0)
    if "blend" in tool:
        from src.reports.blend import baselines, blend_run

        for target in tool["blend"]:
            for run in baselines(target):
                for folder in blend_run(run, tool.get("val"), device=device, cache_dir=cache):
                    print(f"[report] control: {folder}")
        if not folders:
            return 0
    if "publish" in opts:
        from src.models.loading import export_safetensors, half_precision

        dest = opts.pop("publish")
        weights = opts.pop("weights", "true")
        export = export_safetensors if weights != "false" else None
        convert = half_precision if weights == "half" else None
        for folder in folders:
            for run in runs.publish(folder, dest, export=export, convert=convert):
                print(f"[report] published: {run}")
        folders = [dest]
    written = build_report(folders, **opts)
    for kind, paths in written.items():
        for p in paths:
            print(f"[report] {kind[:-1]}: {p}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except runs.PublishError as error:  # its message names the file and what is allowed
        sys.exit(f"src.report: {error}")
