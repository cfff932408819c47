"""Rebuild the paper's tables and figures from the result files of one or more sweeps.

    python -m src.report runs/positions [runs/probabilities ...] [--out DIR] [--metric psnr]
    python -m src.report runs/main --fig5 runs/main/sweep/dropout-none/checkpoints/last.ckpt \
        runs/main/sweep/dropout-last/checkpoints/last.ckpt ../shared/datasets/Set14/HR/zebra.png

A run is a folder with `config.yaml` (the config that ran: backbone, dropout position/dim/p, training
degradation) and `results.json` (written by src.eval / src.train); `metrics.csv` (CSV logger) gives training
curves. A sweep's `manifest.json` (from src.sweep) is used when present, so failed jobs are listed, not guessed.

Outputs in DIR (default <first sweep>/report): table1 / table_b3 / table_a2 as .md, .tex and .csv, fig4_*.png,
curves_*.png, fig5_visual.png, and report.md gathering everything. Best / second-best entries are bold /
italic in Markdown and red / blue in LaTeX (needs \\usepackage{xcolor}), as in the paper.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from src import runs as run_folders
from src.utils import atomic_write_bytes, atomic_write_text

SET_ORDER = ("Set5", "Set14", "BSD100", "Manga109", "Urban100")
DEGS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
POSITION_ORDER = ("none", "last", "b4", "b8", "b12", "b16", "quarter", "half", "all")
POSITION_LABEL = {"last": "last", "b4": "B4", "b8": "B8", "b12": "B12", "b16": "B16", "quarter": "quarter",
                  "half": "half", "all": "all"}
BACKBONE_LABEL = {"MSRResNet": "SRResNet", "RRDBNet": "RRDB", "SwinIR": "SwinIR"}


# --- runs -----------------------------------------------------------------------------------------------
@dataclass
class Run:
    dir: Path
    backbone: str                   # display name, e.g. SRResNet
    group: str                      # what is compared within a table: training degradation + architecture
    position: str
    dim: str
    p: float
    results: dict = field(default_factory=dict)
    n: int = 1                      # runs (seeds) averaged into this row
    fingerprint: str = ""           # the config without seed and bookkeeping keys: equal = same experiment
    tag: str = ""                   # set when same-looking rows come from different experiments

    @property
    def baseline(self) -> bool:
        return self.position == "none" or self.p == 0

    @property
    def label(self) -> str:
        seeds = (f" [mean of {self.n}]" if self.n > 1 else "") + (f" [{self.tag}]" if self.tag else "")
        if self.baseline or self.position == "last" and self.dim == "channel":  # the paper's naming
            return f"{self.group} (p={self.p:g}){seeds}"
        return f"{self.group} {POSITION_LABEL.get(self.position, self.position)} {self.dim} (p={self.p:g}){seeds}"

    def value(self, s: str, d: str, metric: str) -> float:
        v = self.results.get(s, {}).get(d, {}).get(metric)
        return float(v) if isinstance(v, (int, float)) else math.nan


def _select(cfg, key, default=None):
    from omegaconf import OmegaConf

    try:
        v = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:  # an interpolation that needs Hydra's resolvers: read the raw node instead
        v = default
    return default if v is None else v


def read_run(run_dir: Path) -> Run | None:
    """A Run from a run folder (labelled from the config that actually ran), or None if it has no results yet."""
    cfg = run_folders.load_run_config(run_dir)
    results = run_folders.read_state(run_folders.results_file(run_dir))
    if results is None:
        return None
    target = str(_select(cfg, "backbone._target_", "?"))
    cls = target.rsplit(".", 1)[-1]
    name = BACKBONE_LABEL.get(cls, cls)
    deg = str(_select(cfg, "degradation._target_", "")).rsplit(".", 1)[-1]
    prefix = "Real-" if "RealESRGAN" in deg else ("" if deg in ("", "BicubicPipeline") else f"{deg}-")
    # Same class but a different size (the tiny quickstart backbone) must not share rows with the full one.
    size = [f"{k}={_select(cfg, f'backbone.{k}')}" for k in ("num_feat", "num_block", "embed_dim")
            if _select(cfg, f"backbone.{k}") is not None]
    position = str(_select(cfg, "dropout.position", "none"))
    p = float(_select(cfg, "dropout.p", 0.0) or 0.0)
    if position == "none" or p == 0:
        position, p = "none", 0.0
    return Run(run_dir, name, prefix + name + ("" if not size else f"[{','.join(size)}]"), position,
               str(_select(cfg, "dropout.dim", "channel")), p, results, fingerprint=_fingerprint(cfg))


# Keys that do not change what a run learns; runs equal in everything else are seeds of one experiment.
_BOOKKEEPING = ("seed", "name", "paths", "logger", "resume", "force", "eval", "ckpt_every_n_steps", "data.root",
                "data.num_workers", "data.cache_dir", "data.seed", "module.seed", "trainer.devices",
                "trainer.accelerator", "trainer.strategy", "trainer.enable_progress_bar", "hydra")


def _fingerprint(cfg) -> str:
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=False)
    for key in _BOOKKEEPING:
        *parents, last = key.split(".")
        node = c
        for k in parents:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(c, sort_keys=True, default=str)


def _short_groups(runs: list[Run]) -> None:
    """Drop the size tag from group names when one size per architecture is present."""
    sizes = defaultdict(set)
    for r in runs:
        sizes[r.group.split("[")[0]].add(r.group)
    for r in runs:
        base = r.group.split("[")[0]
        if len(sizes[base]) == 1:
            r.group = base


def load_runs(sweeps: Sequence[os.PathLike]) -> tuple[list[Run], list[str]]:
    """(runs with results, notes about jobs left out) for sweep or run folders."""
    runs, notes = [], []
    for sweep in map(Path, sweeps):
        jobs = (run_folders.read_manifest(sweep) or {}).get("jobs", {})
        by_dir = {sweep / job.get("dir", key): job for key, job in jobs.items()}
        for d in run_folders.find_runs(sweep):
            job = by_dir.get(d)
            if job is not None and job.get("status") != "completed":
                notes.append(f"{d}: job {job.get('status')} ({job.get('error', 'no error recorded')}); left out")
                continue
            run = read_run(d)
            if run is None:
                notes.append(f"{d}: no results.json (run `python -m src.eval ckpt={d}`); left out")
            else:
                runs.append(run)
    if not runs:
        raise ValueError(f"no run with config.yaml and results.json under {', '.join(map(str, sweeps))}")
    _short_groups(runs)
    return runs, notes


def _merge_seeds(runs: list[Run]) -> list[Run]:
    """Runs that differ only in seed become one row holding their mean."""
    by = defaultdict(list)
    for r in runs:
        by[(r.group, r.position, r.dim, r.p, r.fingerprint)].append(r)
    clash = defaultdict(int)
    for key in by:
        clash[key[:4]] += 1
    for key, rs in by.items():  # same row label, different experiments: tell them apart by folder
        if clash[key[:4]] > 1:
            for r in rs:
                r.tag = r.dir.name
    out = []
    for rs in by.values():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        merged = {}
        for s in {s for r in rs for s in r.results}:
            for d in {d for r in rs for d in r.results.get(s, {})}:
                cells = [r.results[s][d] for r in rs if d in r.results.get(s, {})]
                merged.setdefault(s, {})[d] = {m: float(np.nanmean([c[m] if c.get(m) is not None else np.nan
                                                                    for c in cells]))
                                               for m in ("psnr", "ssim", "psnr_rgb", "ssim_rgb") if m in cells[0]}
        r0 = rs[0]
        out.append(Run(r0.dir, r0.backbone, r0.group, r0.position, r0.dim, r0.p, merged, len(rs), r0.fingerprint,
                       r0.tag))
    return out


def _columns(runs: list[Run]) -> list[tuple[str, str]]:
    sets = {s for r in runs for s in r.results}
    ordered = [s for s in SET_ORDER if s in sets] + sorted(sets - set(SET_ORDER))
    return [(s, d) for s in ordered for d in DEGS if any(d in r.results.get(s, {}) for r in runs)]


def _groups(runs: list[Run]) -> list[str]:
    """Groups in the paper's order: SRResNet before RRDB before SwinIR."""
    order = list(BACKBONE_LABEL.values())
    first = {}
    for r in runs:
        first.setdefault(r.group, (order.index(r.backbone) if r.backbone in order else len(order), r.group))
    return sorted(first, key=first.get)


def _sort_key(r: Run):
    pos = POSITION_ORDER.index(r.position) if r.position in POSITION_ORDER else len(POSITION_ORDER)
    return (not r.baseline, pos, r.dim != "channel", r.p)


# --- tables ---------------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str
    caption: str
    col_groups: list[str]           # header over each block of columns (a set), "" for none
    columns: list[str]
    rows: list[tuple[str, list[float], str]]   # (label, values, kind: "model" | "delta")
    per_row: bool = False           # rank best/second within rows (Table A.2) instead of columns
    row_header: str = "Model"

    def marks(self) -> dict[tuple[int, int], str]:
        """{(row, col): "best" | "second"} over the model rows, per column."""
        out = {}
        model_rows = [i for i, (_, _, kind) in enumerate(self.rows) if kind == "model"]
        for j in range(len(self.columns)):
            vals = sorted({round(self.rows[i][1][j], 2) for i in model_rows if not math.isnan(self.rows[i][1][j])},
                          reverse=True)
            if len(model_rows) < 3 or not vals:
                continue
            for i in model_rows:
                v = self.rows[i][1][j]
                if not math.isnan(v) and round(v, 2) == vals[0]:
                    out[(i, j)] = "best"
                elif len(vals) > 1 and not math.isnan(v) and round(v, 2) == vals[1]:
                    out[(i, j)] = "second"
        return out


def _fmt(v: float, kind: str, digits: int) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:+.{digits}f}" if kind == "delta" else f"{v:.{digits}f}"


def table_main(runs: list[Run], cols, metric: str) -> Table:
    """Table 1 layout: per group, the baseline, then each dropout variant and its Improvement over the baseline."""
    rows = []
    for group in _groups(runs):
        rs = sorted((r for r in runs if r.group == group), key=_sort_key)
        base = rs[0] if rs[0].baseline else None
        for r in rs:
            vals = [r.value(s, d, metric) for s, d in cols]
            rows.append((r.label, vals, "model"))
            if base is not None and r is not base:
                rows.append(("Improvement", [v - base.value(s, d, metric) for v, (s, d) in zip(vals, cols)], "delta"))
    return Table("table1", f"{metric.upper()} of models x4; Improvement = with dropout minus without (p=0).",
                 [s for s, _ in cols], [d for _, d in cols], rows)


def table_positions(runs: list[Run], cols, metric: str) -> list[Table]:
    """Table B.3: one table per (group, dim, p) that has two or more dropout positions, plus its baseline."""
    out = []
    keys = sorted({(r.group, r.dim, r.p) for r in runs if not r.baseline})
    for group, dim, p in keys:
        rs = [r for r in runs if r.group == group and not r.baseline and r.dim == dim and r.p == p]
        if len({r.position for r in rs}) < 2:
            continue
        base = [r for r in runs if r.group == group and r.baseline]
        rows = [(f"{r.group} (p=0)" if r.baseline else f"{POSITION_LABEL.get(r.position, r.position)} (p={r.p:g})",
                 [r.value(s, d, metric) for s, d in cols], "model") for r in sorted(base + rs, key=_sort_key)]
        out.append(Table(f"table_b3_{_slug(group)}_{dim}_p{p:g}",
                         f"{metric.upper()} of {group} with {dim}-wise dropout (p={p:g}) at different positions.",
                         [s for s, _ in cols], [d for _, d in cols], rows))
    return out


def table_probabilities(runs: list[Run], cols, metric: str) -> list[Table]:
    """Table A.2: per (group, position, dim) with two or more probabilities; rows = set/degradation, columns = p."""
    out = []
    for group, pos, dim in sorted({(r.group, r.position, r.dim) for r in runs if not r.baseline}):
        rs = sorted([r for r in runs if r.group == group and r.position == pos and r.dim == dim], key=lambda r: r.p)
        base = [r for r in runs if r.group == group and r.baseline][:1]
        if len(rs) < 2:
            continue
        rs = base + rs
        rows = [(f"{s} {d}", [r.value(s, d, metric) for r in rs], "model") for s, d in cols]
        out.append(Table(f"table_a2_{_slug(group)}_{pos}_{dim}",
                         f"{metric.upper()} of {group} with {dim}-wise dropout at {pos} for different probabilities.",
                         [""] * len(rs), [f"p={r.p:g}" for r in rs], rows, per_row=True,
                         row_header="Test set"))
    return out


def _row_marks(t: Table) -> dict[tuple[int, int], str]:
    if not t.per_row:
        return t.marks()
    out = {}
    for i, (_, vals, _) in enumerate(t.rows):
        ranked = sorted({round(v, 2) for v in vals if not math.isnan(v)}, reverse=True)
        for j, v in enumerate(vals):
            if len(vals) >= 3 and ranked and not math.isnan(v):
                if round(v, 2) == ranked[0]:
                    out[(i, j)] = "best"
                elif len(ranked) > 1 and round(v, 2) == ranked[1]:
                    out[(i, j)] = "second"
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def to_markdown(t: Table, digits: int = 2) -> str:
    marks = _row_marks(t)
    blocks = []
    # One block per set keeps 8 columns per line, as the paper stacks its test sets.
    spans = defaultdict(list)
    for j, g in enumerate(t.col_groups):
        spans[g].append(j)
    for g, js in spans.items():
        lines = [f"**{g}**\n" if g else "", f"| {t.row_header} | " + " | ".join(t.columns[j] for j in js) + " |",
                 "|---|" + "---:|" * len(js)]
        for i, (label, vals, kind) in enumerate(t.rows):
            cells = []
            for j in js:
                c = _fmt(vals[j], kind, digits)
                m = marks.get((i, j))
                cells.append(f"**{c}**" if m == "best" else f"*{c}*" if m == "second" else c)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(x for x in lines if x))
    return f"{t.caption} Bold: best, italic: second best.\n\n" + "\n\n".join(blocks) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def to_latex(t: Table, digits: int = 2) -> str:
    marks = _row_marks(t)
    spans = defaultdict(list)
    for j, g in enumerate(t.col_groups):
        spans[g].append(j)
    width = max(len(js) for js in spans.values())
    out = ["% needs \\usepackage{xcolor}; red = best, blue = second best", "\\begin{table}[t]", "\\centering",
           "\\small", f"\\begin{{tabular}}{{l{'c' * width}}}", "\\toprule"]
    for g, js in spans.items():
        if g:
            out.append(f"\\multicolumn{{{width + 1}}}{{c}}{{{_tex_escape(g)}}} \\\\")
        out.append(f"{t.row_header} & " + " & ".join(_tex_escape(t.columns[j]) for j in js) + " \\\\")
        out.append("\\midrule")
        for i, (label, vals, kind) in enumerate(t.rows):
            cells = []
            for j in js:
                c = _fmt(vals[j], kind, digits)
                m = marks.get((i, j))
                cells.append(f"\\textcolor{{red}}{{{c}}}" if m == "best" else
                             f"\\textcolor{{blue}}{{{c}}}" if m == "second" else c)
            out.append(f"{_tex_escape(label)} & " + " & ".join(cells) + " \\\\")
        out.append("\\midrule" if g != list(spans)[-1] else "\\bottomrule")
    out += ["\\end{tabular}", f"\\caption{{{_tex_escape(t.caption)}}}", f"\\label{{tab:{t.name}}}",
            "\\end{table}", ""]
    return "\n".join(out)


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)])
    for label, vals, kind in t.rows:
        w.writerow([label, kind] + ["" if math.isnan(v) else f"{v:.4f}" for v in vals])
    return buf.getvalue()


def log_tables_to_wandb(tables: list[Table]) -> bool:
    """Log each table as a wandb.Table when a W&B run is active (never starts one)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    for t in tables:
        cols = ["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)]
        data = [[label, kind] + [None if math.isnan(v) else v for v in vals] for label, vals, kind in t.rows]
        wandb.log({f"report/{t.name}": wandb.Table(columns=cols, data=data)})
    return True


# --- figures --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def fig_dropout_bars(runs: list[Run], group: str, s: str, d: str, metric: str, path: Path) -> Path | None:
    """Fig. 4: bars per position x probability, one panel per dropout dimension, baseline as a dashed line."""
    rs = [r for r in runs if r.group == group]
    drop = [r for r in rs if not r.baseline and not math.isnan(r.value(s, d, metric))]
    if len({(r.position, r.dim, r.p) for r in drop}) < 2:  # one bar compares nothing; Table 1 has it
        return None
    plt = _plt()
    dims = [x for x in ("channel", "element") if any(r.dim == x for r in drop)]
    positions = [p for p in POSITION_ORDER if any(r.position == p for r in drop)]
    probs = sorted({r.p for r in drop})
    panel_w = max(4.5, 1.1 * len(positions) * len(probs) ** 0.5)
    fig, axes = plt.subplots(1, len(dims), figsize=(panel_w * len(dims), 3.6), squeeze=False, sharey=True)
    vals_all = [r.value(s, d, metric) for r in drop]
    base = [r.value(s, d, metric) for r in rs if r.baseline]
    width = 0.8 / len(probs)
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(probs)))
    for ax, dim in zip(axes[0], dims):
        for k, p in enumerate(probs):
            ys = []
            for pos in positions:
                match = [r.value(s, d, metric) for r in drop if r.dim == dim and r.position == pos and r.p == p]
                ys.append(match[0] if match else np.nan)
            ax.bar(np.arange(len(positions)) + (k - (len(probs) - 1) / 2) * width, ys, width, label=f"p={p:g}",
                   color=colors[k])
        if base:
            ax.axhline(base[0], color="k", ls="--", lw=1, label="no dropout")
        ax.set_xticks(np.arange(len(positions)), [POSITION_LABEL.get(p, p) for p in positions])
        ax.set_title(f"({'ab'[dims.index(dim)]}) {dim}-wise dropout")
        ax.grid(axis="y", alpha=0.3)
    lo, hi = np.nanmin(vals_all + base), np.nanmax(vals_all + base)
    pad = max(0.05, 0.15 * (hi - lo))
    axes[0][0].set_ylim(lo - pad, hi + pad)  # zoom, as the paper's histograms do
    axes[0][0].set_ylabel(f"{metric.upper()} {'(dB)' if 'psnr' in metric else ''} on {s} ({d})")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"{group}: dropout methods and probabilities")
    return _save(fig, path)


def read_curve(run_dir: Path, key: str = "val/psnr") -> tuple[list[float], list[float]]:
    path = run_dir / run_folders.METRICS
    steps, vals = [], []
    if not path.is_file():
        return steps, vals
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            v, s = row.get(key, ""), row.get("step", "")
            if v not in ("", None) and s not in ("", None):
                steps.append(float(s)), vals.append(float(v))
    return steps, vals


def fig_curves(runs: list[Run], group: str, path: Path, key: str = "val/psnr") -> Path | None:
    """Fig. C.1: validation PSNR against training step for every run of a group."""
    curves = [(r, *read_curve(r.dir, key)) for r in sorted((r for r in runs if r.group == group), key=_sort_key)]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r, steps, vals in curves:
        ax.plot(steps, vals, lw=1.4, ls="--" if r.baseline else "-", label=r.label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{key} (dB)")
    ax.set_title(f"Training curves of {group}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _texture_crop(hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the size x size window with the most gradient energy: a detailed region, picked without
    looking at any model output."""
    g = np.abs(np.diff(hr.mean(2), axis=0))[:, :-1] + np.abs(np.diff(hr.mean(2), axis=1))[:-1]
    ii = np.pad(g, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = g.shape
    s = min(size, h, w)
    win = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
    y, x = np.unravel_index(np.argmax(win), win.shape)
    return int(y), int(x)


def fig_visual(ckpt_without, ckpt_with, image, path: Path, degradations=("clean", "noise"), scale: int = 4,
               seed: int = 0, crop: int = 96, backbone=None, device="cpu") -> Path:
    """Fig. 5: rows = degradations; columns = HR (with crop box), LR, SR without / with dropout, HR crop.

    PSNR (Y, `scale` px border) in the titles is over the whole image, not the crop.
    """
    from src.data.imageio import read_image
    from src.data.testsets import degrade_test_image, modcrop
    from src.evaluation import super_resolve
    from src.metrics import psnr
    from src.models.io import load_model

    models = [load_model(c, backbone=backbone, map_location=device) for c in (ckpt_without, ckpt_with)]
    hr = modcrop(read_image(image), scale)
    y, x = _texture_crop(hr, crop)
    c = min(crop, *hr.shape[:2])
    plt = _plt()
    aspect = hr.shape[1] / hr.shape[0]
    fig, axes = plt.subplots(len(degradations), 5, figsize=(10 + 2.6 * aspect, 2.8 * len(degradations)),
                             squeeze=False, gridspec_kw={"width_ratios": [aspect, 1, 1, 1, 1]})
    for row, d in zip(axes, degradations):
        lr = degrade_test_image(hr, d, scale, seed)
        srs = [super_resolve(m, lr, scale, device) for m in models]
        lr_up = np.repeat(np.repeat(lr, scale, 0), scale, 1)  # nearest: shows the LR pixels as they are
        panels = [(hr, "HR"), (lr_up[y:y + c, x:x + c], f"LR ({d})")]
        panels += [(sr[y:y + c, x:x + c], f"{name}\n{psnr(sr, hr, scale):.2f} dB")
                   for sr, name in zip(srs, ("w/o dropout", "w/ dropout"))]
        panels.append((hr[y:y + c, x:x + c], "HR crop"))
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        row[0].add_patch(plt.Rectangle((x, y), c, c, fill=False, ec="red", lw=1.5))
    fig.suptitle(f"{Path(image).name}: PSNR-Y over the whole image", fontsize=10)
    return _save(fig, path)


# --- entry point ----------------------------------------------------------------------------------------
def build_report(sweeps: Sequence[os.PathLike], out: os.PathLike | None = None, metric: str = "psnr",
                 fig4: str | None = None, fig5: Sequence[str] | None = None, fig5_degradations=("clean", "noise"),
                 backbone=None) -> dict[str, list[Path]]:
    """Write tables and figures; returns {"tables": [...], "figures": [...]} paths."""
    runs, notes = load_runs(sweeps)
    runs = _merge_seeds(runs)
    out = Path(out) if out else Path(sweeps[0]) / "report"
    cols = _columns(runs)
    digits = 4 if metric.startswith("ssim") else 2
    tables = [table_main(runs, cols, metric)] + table_positions(runs, cols, metric) \
        + table_probabilities(runs, cols, metric)
    written = {"tables": [], "figures": []}
    md = [f"# Report: {', '.join(map(str, sweeps))}", "", f"{len(runs)} model(s); metric {metric} "
          f"({'Y channel' if metric in ('psnr', 'ssim') else 'RGB'}).", ""]
    for t in tables:
        for ext, text in (("md", to_markdown(t, digits)), ("tex", to_latex(t, digits)), ("csv", to_csv(t))):
            written["tables"].append(atomic_write_text(out / f"{t.name}.{ext}", text))
        md += [f"## {t.name}", "", to_markdown(t, digits)]
    log_tables_to_wandb(tables)

    if fig4:
        s, d = fig4.split("/", 1)
    else:  # the paper's Fig. 4 uses BSD100 (bicubic); fall back to the first column available
        s, d = ("BSD100", "clean") if ("BSD100", "clean") in cols else cols[0]
    for group in _groups(runs):
        for kind, fn in (("fig4", lambda p: fig_dropout_bars(runs, group, s, d, metric, p)),
                         ("curves", lambda p: fig_curves(runs, group, p))):
            p = fn(out / f"{kind}_{_slug(group)}.png")
            if p:
                written["figures"].append(p)
    if fig5:
        if len(fig5) != 3:
            raise ValueError(f"--fig5 needs 3 paths (checkpoint without dropout, with dropout, image); got {fig5}")
        written["figures"].append(fig_visual(*fig5, out / "fig5_visual.png", degradations=fig5_degradations,
                                             backbone=backbone))
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written["figures"]]
    if notes:
        md += ["", "## Left out", ""] + [f"- {n}" for n in notes]
    written["tables"].append(atomic_write_text(out / "report.md", "\n".join(md) + "\n"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", help="sweep folders (or run folders) holding results.json files")
    ap.add_argument("--out", default=None, help="output folder (default: <first sweep>/report)")
    ap.add_argument("--metric", default="psnr", choices=["psnr", "ssim", "psnr_rgb", "ssim_rgb"])
    ap.add_argument("--fig4", default=None, metavar="SET/DEG", help="column for the bar chart (default BSD100/clean)")
    ap.add_argument("--fig5", nargs=3, default=None, metavar=("CKPT_WITHOUT", "CKPT_WITH", "IMAGE"))
    ap.add_argument("--fig5-degradations", default="clean,noise", help="comma-separated rows of Fig. 5")
    ap.add_argument("--backbone", default=None, help="conf/backbone name, for BasicSR .pth checkpoints in --fig5")
    args = ap.parse_args(argv)
    written = build_report(args.sweeps, args.out, args.metric, args.fig4, args.fig5,
                           tuple(args.fig5_degradations.split(",")), args.backbone)
    for kind, paths in written.items():
        for p in paths:
            print(f"[report] {kind[:-1]}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
