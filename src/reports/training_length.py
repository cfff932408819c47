"""Gain against training length (the paper's Fig. C.1-C.3: the dropout model is ahead throughout training): the
weights each run kept at chosen steps (`ckpt_keep_steps`: `checkpoints/step-000250.safetensors`, ...) scored on
test sets, and the dropout-minus-baseline gain at each step with a seed-level 95% interval.

    python -m src.reports.training_length docs/results/repro_small out=docs/results/training_length
    python -m src.reports.training_length runs/repro_small/sweep out=... sets=[Set5,Set14] protocol=official device=cuda

Scores go to each run folder as `steps_<protocol>.json` ({step: results dict, as results_<protocol>.json}); steps
already scored there are reused, so the command resumes and grows as weights are added. `out` gets
`gain_vs_steps.csv` (one row per dropout setting x set x step; `set=all` is the mean over every set and degradation
scored, what the scorecard reads) and `gain_vs_steps.png`.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from src import runs as run_folders
from src.reports.collect import Run, load_runs, protocol_metric
from src.reports.scorecard import LENGTH_TABLE, base_fingerprint
from src.reports.stats import Interval, seed_difference
from src.utils import atomic_write_json, atomic_write_text

STEP_FILE = re.compile(r"step-(\d+)\.safetensors$")
DEFAULT_SETS = ("Set5", "Set14")
OPTIONS = ("out", "sets", "degradations", "protocol", "device", "root", "cache_dir")


def steps_file(run_dir: os.PathLike, protocol: str) -> Path:
    return Path(run_dir) / f"steps_{protocol}.json"


def kept_steps(run_dir: os.PathLike) -> list[int]:
    """The steps whose weights the run kept, ascending."""
    folder = run_folders.step_weights(run_dir, 0).parent
    return sorted(int(m.group(1)) for p in folder.glob("step-*.safetensors") if (m := STEP_FILE.search(p.name)))


def score_steps(run_dir: os.PathLike, sets: dict[str, list], degradations: Sequence[str], protocol: str = "official",
                device: str = "cpu", cache_dir: os.PathLike | None = None) -> dict[int, dict]:
    """Score every kept step of one run on `sets` ({name: HR paths}); {step: results dict}, also written to
    `steps_<protocol>.json` in the run folder after each step (cells already there are not recomputed)."""
    from src.evaluation import evaluate
    from src.models.loading import load

    path = steps_file(run_dir, protocol)
    scored = {int(k): v for k, v in (run_folders.read_state(path) or {}).items()}
    for step in kept_steps(run_dir):
        done = scored.get(step, {})
        if all(d in done.get(s, {}) for s in sets for d in degradations):
            continue
        loaded = load(run_folders.step_weights(run_dir, step), device=device)
        new = evaluate(loaded.model, sets, degradations, scale=loaded.scale, device=device, cache_dir=cache_dir,
                       done=done, protocol=protocol)
        scored[step] = {s: {**done.get(s, {}), **new.get(s, {})} for s in set(done) | set(new)}
        atomic_write_json(path, {str(k): scored[k] for k in sorted(scored)})
        print(f"[training_length] {run_dir}: step {step} scored")
    return scored


def _step_value(scores: dict, step: int, cols, metric: str) -> float:
    cells = scores.get(step, {})
    vals = [cells.get(s, {}).get(d, {}).get(metric) for s, d in cols]
    return float(np.mean(vals)) if vals and all(isinstance(v, (int, float)) for v in vals) else math.nan


def gain_rows(runs: list[Run], protocol: str = "official") -> list[dict]:
    """One row per dropout setting x (each set, and `all`) x step: the gain over the baseline of the same experiment
    (config without dropout), paired by seed (Welch's interval when the seeds do not pair), and each side's mean."""
    metric = protocol_metric(protocol, "psnr")
    scores = {r.dir: {int(k): v for k, v in (run_folders.read_state(steps_file(r.dir, protocol)) or {}).items()}
              for r in runs}
    rows = []
    variants = [r for r in runs if not r.baseline and scores[r.dir]]
    settings = sorted({(r.position, r.dim, r.p) for r in variants})
    for position, dim, p in settings:
        var = [r for r in variants if (r.position, r.dim, r.p) == (position, dim, p)]
        fp = base_fingerprint(var[0])
        var = [r for r in var if base_fingerprint(r) == fp]
        base = [r for r in runs if r.baseline and scores[r.dir] and base_fingerprint(r) == fp]
        if not base:
            continue
        involved = var + base
        steps = sorted(set.intersection(*(set(scores[r.dir]) for r in involved)))
        for step in steps:
            cells = [scores[r.dir][step] for r in involved]
            common_sets = sorted(set.intersection(*(set(c) for c in cells)))
            all_cols = [(s, d) for s in common_sets for d in sorted(set.intersection(*(set(c[s]) for c in cells)))]
            for label in common_sets + ["all"]:
                cols = all_cols if label == "all" else [c for c in all_cols if c[0] == label]
                v = {r.seed: _step_value(scores[r.dir], step, cols, metric) for r in var}
                b = {r.seed: _step_value(scores[r.dir], step, cols, metric) for r in base}
                iv: Interval = seed_difference(b, v)
                rows.append({"setting": f"{position} {dim} p={p:g}", "set": label, "step": step, "n": iv.n,
                             "mean": iv.mean, "low": iv.low, "high": iv.high, "p": iv.p, "kind": iv.kind,
                             "base": float(np.nanmean(list(b.values()))), "variant": float(np.nanmean(list(v.values()))),
                             "metric": metric, "protocol": protocol, "columns": len(cols)})
    return rows


def write_table(rows: list[dict], out: os.PathLike) -> Path:
    fields = ["setting", "set", "step", "n", "mean", "low", "high", "p", "kind", "base", "variant", "metric",
              "protocol", "columns"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(Path(out) / LENGTH_TABLE, buf.getvalue())


def draw(rows: list[dict], out: os.PathLike) -> Path | None:
    """Gain per step with its 95% interval (left; zero marked) and each side's mean PSNR (right)."""
    from src.reports.figures import _plain, _plt, _save

    if not rows:
        return None
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (setting, label), group in _groups(rows).items():
        steps = [r["step"] for r in group]
        mean = np.array([r["mean"] for r in group])
        err = np.array([[r["mean"] - r["low"], r["high"] - r["mean"]] for r in group]).T
        err = np.where(np.isnan(err), 0, err)
        ax.errorbar(steps, mean, yerr=err, marker="o", capsize=3, lw=2 if label == "all" else 1,
                    label=f"{setting}, {label}")
        if label == "all":
            ax2.plot(steps, [r["base"] for r in group], "o--", label="p=0")
            ax2.plot(steps, [r["variant"] for r in group], "o-", label=setting)
    ax.axhline(0, color="k", lw=0.8)
    steps = sorted({r["step"] for r in rows})
    for a in (ax, ax2):  # kept steps double (250, 500, 1000, 2000): even spacing on a log axis, labelled as numbers
        a.set_xscale("log", base=2)
        a.set_xticks(steps, [f"{s:,}" for s in steps])
        a.minorticks_off()
        _plain(a)
    fig.subplots_adjust(wspace=0.35)
    metric, protocol = rows[0]["metric"], rows[0]["protocol"]
    ax.set(xlabel="training step", ylabel=f"gain ({metric}, dB)",
           title=f"dropout minus p=0, 95% CI over seed pairs ({protocol})")
    ax2.set(xlabel="training step", ylabel=f"{metric} (dB), mean of all columns", title="each setting")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _save(fig, (Path(out) / LENGTH_TABLE).with_suffix(".png"))


def _groups(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault((r["setting"], r["set"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


def build(folders: Sequence[os.PathLike], out: os.PathLike, sets: Sequence[str] = DEFAULT_SETS,
          degradations: Sequence[str] | None = None, protocol: str = "official", device: str = "cpu",
          root: os.PathLike | None = None, cache_dir: os.PathLike | None = None) -> list[Path]:
    """Score every run's kept steps, then write the gain table and figure to `out`."""
    from src.data.datasets import default_data_root, resolve_set
    from src.data.testsets import TEST_DEGRADATIONS, check_protocol

    check_protocol(protocol)
    degradations = list(degradations or TEST_DEGRADATIONS)
    runs, _ = load_runs(folders)
    with_steps = [r for r in runs if kept_steps(r.dir)]
    if not with_steps:
        raise FileNotFoundError(f"no run under {', '.join(map(str, folders))} kept step weights "
                                f"(checkpoints/step-*.safetensors; train with ckpt_keep_steps=[...])")
    data_root = Path(root) if root else default_data_root()
    resolved = {s: resolve_set(s, data_root) for s in sets}
    for r in with_steps:
        score_steps(r.dir, resolved, degradations, protocol, device, cache_dir)
    rows = gain_rows(with_steps, protocol)
    written = [write_table(rows, out)]
    figure = draw(rows, out)
    return written + ([figure] if figure else [])


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.strip("[]").split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    folders, opts = [], {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in OPTIONS:
            opts[key] = value
        elif eq:
            raise SystemExit(f"training_length: unknown option {key!r}; options: {', '.join(OPTIONS)}")
        else:
            folders.append(arg)
    if not folders or "out" not in opts:
        raise SystemExit("training_length: give FOLDER [FOLDER ...] out=DIR (see --help)")
    for key in ("sets", "degradations"):
        if key in opts:
            opts[key] = _list(opts[key])
    for p in build(folders, **opts):
        print(f"[training_length] wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
