"""Rebuild the paper's tables and figures from the result files of sweeps, run folders or committed results.

usage: python -m src.report FOLDER [FOLDER ...] [key=value ...]

FOLDER is a sweep folder, a run folder, or a folder of committed results (docs/results/<campaign>); every run
folder below it with a config (config.yaml, the config the run actually used) and results.json (literature
protocol) / results_official.json (the paper's protocol) is read. Runs that differ only in their seed are one
setting: mean +- std over the seeds, with the seed count. Each dropout setting is compared with its baseline
image by image (needs per_image in the results files) and against the seeds' spread.

options (key=value):
  out=DIR                 output folder (default: <first FOLDER>/report)
  publish=DIR             first copy each finished run's small result files (config, job, results, metrics; no
                          checkpoints) to DIR/<run folder>, then report from DIR: how a campaign's results are
                          committed (docs/results/<campaign>) and grow run by run
  metric=NAME             psnr | ssim | psnr_rgb | ssim_rgb (default: psnr; psnr means each protocol's own:
                          PSNR-Y for the literature protocol, RGB PSNR for the paper's official one)
  bicubic=DIR             results of the bicubic reference (default: a bicubic/ folder in or beside FOLDER)
  fig4=SET/DEG            the column of the dropout bar chart (default: BSD100/clean)
  fig5=[WITHOUT,WITH,IMG] checkpoints without and with dropout and an HR image: the visual comparison grid
  fig5_degradations=[..]  rows of that grid (default: [clean,noise])
  backbone=NAME           conf/backbone name, for BasicSR .pth checkpoints in fig5

examples:
  python -m src.report runs/positions
  python -m src.report runs/positions runs/probabilities out=docs/positions metric=ssim
  python -m src.report docs/results/repro_small out=docs/results       # what `make report` runs
  python -m src.report runs/repro_small/sweep publish=docs/results/repro_small out=docs/results
  python -m src.report runs/main fig5=[runs/main/a/checkpoints/last.ckpt,runs/main/b/checkpoints/last.ckpt,img.png]

Outputs in DIR: table1 / table_b3_* / table_a2_* as .md, .tex and .csv (suffix _official for the paper's
protocol, which also shows the paper's published rows), comparison*.csv, fig4_*.png, gains_*.png, curves_*.png,
fig5_visual.png, and report.md gathering everything.
"""
from __future__ import annotations

import sys
from typing import Sequence

from src import runs
from src.reports import build_report

OPTIONS = ("out", "publish", "metric", "bicubic", "fig4", "fig5", "fig5_degradations", "backbone")
METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb")


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
    if not folders:
        raise SystemExit("src.report: no FOLDER given (see python -m src.report --help)")
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
    folders, opts = parse_args(argv)
    if "publish" in opts:
        dest = opts.pop("publish")
        for folder in folders:
            for run in runs.publish(folder, dest):
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
