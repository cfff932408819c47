"""Runs of a report: what each run folder trained (its config) and scored (its results files)."""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from src import runs as run_folders

SET_ORDER = ("Set5", "Set14", "BSD100", "Manga109", "Urban100")
DEGS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
POSITION_ORDER = ("none", "last", "b4", "b8", "b12", "b16", "quarter", "half", "all")
POSITION_LABEL = {"last": "last", "b4": "B4", "b8": "B8", "b12": "B12", "b16": "B16", "quarter": "quarter",
                  "half": "half", "all": "all"}
BACKBONE_LABEL = {"MSRResNet": "SRResNet", "RRDBNet": "RRDB", "SwinIR": "SwinIR"}

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

