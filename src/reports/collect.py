"""Runs of a report: what each run folder trained (the config it ran) and what it scored (its results files).

A run folder holds `config.yaml` (the config the run actually used; older runs only have Hydra's
`.hydra/config.yaml`, written before the run size narrowed the network) and `results.json` (the literature
protocol) and/or `results_official.json` (the paper's official protocol). Runs that differ only in their seed are
one `Setting`: its values are the mean over the seeds, with their standard deviation and count.
"""
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
from src.data.testsets import TEST_DEGRADATIONS
from src.metrics import protocol_metric  # noqa: F401 - the report modules take it from here with the labels
from src.models.dropout import POSITIONS, is_baseline

SET_ORDER = ("Set5", "Set14", "BSD100", "Manga109", "Urban100")
DEGS = TEST_DEGRADATIONS
POSITION_ORDER = POSITIONS
POSITION_LABEL = {"last": "last", "b4": "B4", "b8": "B8", "b12": "B12", "b16": "B16", "quarter": "quarter",
                  "half": "half", "all": "all"}
BACKBONE_LABEL = {"MSRResNet": "SRResNet", "RRDBNet": "RRDB", "SwinIR": "SwinIR"}
# Results file of each test protocol (the metric each quotes is src.metrics.protocol_metric's).
RESULTS_FILE = run_folders.RESULTS
METRIC_LABEL = {"psnr": "PSNR-Y (dB)", "ssim": "SSIM-Y", "psnr_rgb": "PSNR-RGB (dB)", "ssim_rgb": "SSIM-RGB"}


def read_results(run_dir: Path) -> dict[str, dict]:
    """{protocol: results dict} of the results files present in `run_dir`."""
    out = {}
    for protocol in RESULTS_FILE:
        results = run_folders.read_state(run_folders.results_file(run_dir, protocol))
        if results is not None:
            out[protocol] = results
    return out


@dataclass
class Run:
    """One trained model: what it was (from the config it ran) and its results per protocol."""
    dir: Path
    backbone: str                   # display name, e.g. SRResNet
    group: str                      # what is compared within a table: training degradation + architecture
    position: str
    dim: str
    p: float
    results: dict = field(default_factory=dict)    # {protocol: {set: {degradation: {metric: value, ...}}}}
    seed: int | None = None
    size: dict = field(default_factory=dict)       # width/depth, iterations, training data, batch
    fingerprint: str = ""           # the config without seed and bookkeeping keys: equal = same experiment
    config_file: str = "config.yaml"
    control: str = ""               # a control made from a baseline model (e.g. "blind blend"), not trained
    family: str = ""                # the fingerprint less dropout and control: runs that differ only in those
    pipeline: str = ""              # the training degradation's class, e.g. RealESRGANPipeline

    @property
    def dropout(self) -> bool:
        return not (self.position == "none" or self.p == 0)

    @property
    def baseline(self) -> bool:
        return is_baseline(self.position, self.p) and not self.control

    def cell(self, protocol: str, s: str, d: str) -> dict:
        return self.results.get(protocol, {}).get(s, {}).get(d, {})

    def value(self, s: str, d: str, metric: str, protocol: str = "literature") -> float:
        v = self.cell(protocol, s, d).get(metric)
        return float(v) if isinstance(v, (int, float)) else math.nan


@dataclass
class Setting:
    """Runs that differ only in their seed: one row of a table (mean over the seeds, their std and count)."""
    runs: list[Run]
    tag: str = ""                   # set when same-looking rows come from different experiments

    def __getattr__(self, name):    # backbone, group, position, dim, p, size, dir: those of its runs
        if name in ("backbone", "group", "position", "dim", "p", "size", "dir", "fingerprint", "baseline", "dropout",
                    "control", "family", "pipeline"):
            return getattr(self.runs[0], name)
        raise AttributeError(name)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def label(self) -> str:
        extra = (f" [mean of {self.n} seeds]" if self.n > 1 else "") + (f" [{self.tag}]" if self.tag else "")
        if self.control:
            return f"{self.group} (p=0) {self.control}{extra}"
        if self.baseline or self.position == "last" and self.dim == "channel":  # the paper's naming
            return f"{self.group} (p={self.p:g}){extra}"
        return f"{self.group} {POSITION_LABEL.get(self.position, self.position)} {self.dim} (p={self.p:g}){extra}"

    def values(self, s: str, d: str, metric: str, protocol: str = "literature") -> np.ndarray:
        return np.array([r.value(s, d, metric, protocol) for r in self.runs], dtype=float)

    def value(self, s: str, d: str, metric: str, protocol: str = "literature") -> float:
        v = self.values(s, d, metric, protocol)
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan

    def std(self, s: str, d: str, metric: str, protocol: str = "literature") -> float:
        """Sample standard deviation over the seeds; NaN with fewer than two."""
        v = self.values(s, d, metric, protocol)
        v = v[~np.isnan(v)]
        return float(v.std(ddof=1)) if v.size >= 2 else math.nan

    def protocols(self) -> set[str]:
        return {p for r in self.runs for p in r.results}


@dataclass
class Reference:
    """A reference that was not trained (bicubic upsampling), scored by the same evaluation."""
    label: str
    dir: Path
    results: dict                   # {protocol: results}

    def value(self, s: str, d: str, metric: str, protocol: str = "literature") -> float:
        v = self.results.get(protocol, {}).get(s, {}).get(d, {}).get(metric)
        return float(v) if isinstance(v, (int, float)) else math.nan


def _select(cfg, key, default=None):
    from omegaconf import OmegaConf

    try:
        v = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:  # an interpolation that needs Hydra's resolvers: read the raw node instead
        v = default
    return default if v is None else v


def config_path(run_dir: Path) -> Path | None:
    """The config a run actually ran (src.runs decides which file that is)."""
    return run_folders.run_config_path(run_dir)


def run_size(cfg) -> dict:
    """What sets a run's cost: width/depth of the backbone, iterations, training data and batch."""
    arch = {k: _select(cfg, f"backbone.{k}") for k in ("num_feat", "num_block", "num_grow_ch", "embed_dim", "depths")}
    data, val = _select(cfg, "data.train_sets"), _select(cfg, "data.val_sets")
    # `data.val_degradations` (a list) since validation covers several; older runs saved `data.val_degradation`.
    val_deg = _select(cfg, "data.val_degradations") or _select(cfg, "data.val_degradation")
    if val_deg is not None and not isinstance(val_deg, str):
        val_deg = "+".join(map(str, val_deg))
    return {"arch": {k: v for k, v in arch.items() if v is not None},
            "val": ("+".join(map(str, val)) if val is not None and not isinstance(val, str) else val or "")
            + (f" ({val_deg})" if val_deg else ""),
            "iterations": _select(cfg, "trainer.max_steps"),
            "data": "+".join(map(str, data)) if data is not None and not isinstance(data, str) else data,
            "batch": _select(cfg, "data.batch_size"), "lr_patch": _select(cfg, "data.lr_patch_size")}


def size_text(size: dict) -> str:
    """e.g. `num_feat 32, num_block 4; 2000 iterations; T91+BSD200; batch 16 x 32 px LR`; a batch split over
    several devices says so: `batch 16 (2 on each of 8 devices) x 32 px LR`."""
    parts = [", ".join(f"{k} {v}" for k, v in size.get("arch", {}).items())]
    if size.get("iterations") is not None:
        parts.append(f"{int(size['iterations']):,} iterations")
    if size.get("data"):
        parts.append(str(size["data"]))
    if size.get("batch") is not None:
        devices = int(size.get("devices") or 1)
        split = f" ({size['batch'] // devices} on each of {devices} devices)" if devices > 1 else ""
        parts.append(f"batch {size['batch']}{split}" + (f" x {size['lr_patch']} px LR" if size.get("lr_patch") else ""))
    return "; ".join(p for p in parts if p)


def read_run(run_dir: Path) -> Run | None:
    """A Run from a run folder, or None if it has no results yet."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg_path = config_path(run_dir)
    if cfg_path is None:
        raise ValueError(f"{run_dir}: no config.yaml (nor .hydra/config.yaml); cannot tell what this run trained")
    results = read_results(run_dir)
    if not results:
        return None
    cfg = OmegaConf.load(cfg_path)
    cls = str(_select(cfg, "backbone._target_", "?")).rsplit(".", 1)[-1]
    name = BACKBONE_LABEL.get(cls, cls)
    deg = str(_select(cfg, "degradation._target_", "")).rsplit(".", 1)[-1]
    prefix = "Real-" if "RealESRGAN" in deg else ("" if deg in ("", "BicubicPipeline") else f"{deg}-")
    size = run_size(cfg)
    # The batch as trained (train_done.json): data.batch_size is the global batch, split over the devices.
    batch = (run_folders.training_done(run_dir) or {}).get("batch")
    if isinstance(batch, dict) and batch.get("global"):
        size.update(batch=int(batch["global"]), devices=int(batch.get("devices") or 1))
    # Same class but a different width/depth must not share rows with the full one.
    arch = ",".join(f"{k}={v}" for k, v in size["arch"].items() if k in ("num_feat", "num_block", "embed_dim"))
    position = str(_select(cfg, "dropout.position", "none"))
    p = float(_select(cfg, "dropout.p", 0.0) or 0.0)
    if is_baseline(position, p):
        position, p = "none", 0.0
    seed = _select(cfg, "seed")
    control = _select(cfg, "control.label", "")
    return Run(run_dir, name, prefix + name + (f"[{arch}]" if arch else ""), position,
               str(_select(cfg, "dropout.dim", "channel")), p, results, seed=seed, size=size,
               fingerprint=_fingerprint(cfg), config_file=str(cfg_path.relative_to(run_dir)), control=str(control),
               family=_fingerprint(cfg, ("dropout", "module.dropout", "control")), pipeline=deg)


def _fingerprint(cfg, also: tuple = ()) -> str:
    """The config less the keys that do not split seeds (src.runs.KEY_ROLES) and `also`: equal = seeds of one
    setting."""
    from omegaconf import OmegaConf

    kept = run_folders.drop_keys(cfg, run_folders.keys_without("seeds") + tuple(also))
    return json.dumps(OmegaConf.to_container(kept, resolve=False), sort_keys=True, default=str)


def _short_groups(runs: list[Run]) -> None:
    """Drop the size tag from group names when one size per architecture is present."""
    sizes = defaultdict(set)
    for r in runs:
        sizes[r.group.split("[")[0]].add(r.group)
    for r in runs:
        base = r.group.split("[")[0]
        if len(sizes[base]) == 1:
            r.group = base


def _run_dirs(folder: Path, notes: list[str]) -> list[Path]:
    """Run folders under `folder` (src.runs.find_runs), less the jobs its sweep manifest records as not completed
    (noted) and the bicubic reference."""
    jobs = (run_folders.read_manifest(folder) or {}).get("jobs", {})
    by_dir = {folder / job.get("dir", key): job for key, job in jobs.items()}
    dirs = []
    for d in run_folders.find_runs(folder):
        job = by_dir.get(d)
        if job is not None and job.get("status") != "completed":
            notes.append(f"{d}: job {job.get('status')} ({job.get('error', 'no error recorded')}); left out")
        elif not is_reference(d):
            dirs.append(d)
    return dirs


def is_reference(folder: Path) -> bool:
    """A bicubic reference folder (results files but nothing trained)."""
    return Path(folder).name == "bicubic"


def load_runs(sweeps: Sequence[os.PathLike]) -> tuple[list[Run], list[str]]:
    """(runs with results, notes about jobs left out) for sweep, run or committed-results folders."""
    runs, notes, hydra_only = [], [], []
    for sweep in map(Path, sweeps):
        for d in _run_dirs(sweep, notes):
            run = read_run(d)
            if run is None:
                notes.append(f"{d}: no results.json (run `python -m src.eval ckpt={d}`); left out")
            else:
                if run.config_file != "config.yaml":
                    hydra_only.append(d.name)
                runs.append(run)
    if hydra_only:
        notes.append(f"{len(hydra_only)} run(s) without config.yaml ({', '.join(hydra_only[:5])}"
                     f"{', ...' if len(hydra_only) > 5 else ''}): labelled from .hydra/config.yaml, which is written "
                     "before the run size is applied, so their width may be wrong")
    if not runs:
        raise ValueError(f"no run with a config and results.json / results_official.json under "
                         f"{', '.join(map(str, sweeps))}")
    _short_groups(runs)
    return runs, notes


def find_reference(sweeps: Sequence[os.PathLike], bicubic: os.PathLike | None = None) -> Reference | None:
    """The bicubic reference: `bicubic` if given, else a `bicubic` folder inside or beside the first source."""
    if bicubic is not None:
        candidates = [Path(bicubic)]
    else:
        first = Path(sweeps[0])
        candidates = [first / "bicubic", first.parent / "bicubic"]
    for c in candidates:
        results = read_results(c) if c.is_dir() else {}
        if results:
            return Reference("Bicubic (reference)", c, results)
    if bicubic is not None:
        raise FileNotFoundError(f"bicubic={bicubic}: no results.json or results_official.json there "
                                "(make one with `python -m src.eval ckpt=bicubic`)")
    return None


def merge_seeds(runs: list[Run]) -> list[Setting]:
    """Runs that differ only in seed become one Setting."""
    by = defaultdict(list)
    for r in runs:
        by[(r.group, r.position, r.dim, r.p, r.control, r.fingerprint)].append(r)
    clash = defaultdict(list)
    for key, rs in by.items():
        clash[key[:5]].append(rs[0].dir.parent.name)
    out = []
    for key, rs in by.items():  # same row label, different experiments: tell them apart by folder
        rs = sorted(rs, key=lambda r: (r.seed is None, r.seed if isinstance(r.seed, (int, float)) else 0, str(r.dir)))
        parents = clash[key[:5]]
        # two campaigns (folders) of one setting are named by their campaign, else by the run's own folder
        name = rs[0].dir.parent.name if len(set(parents)) == len(parents) else rs[0].dir.name
        out.append(Setting(rs, tag=name if len(parents) > 1 else ""))
    return out


def columns(settings: list[Setting], protocol: str = "literature") -> list[tuple[str, str]]:
    sets = {s for st in settings for r in st.runs for s in r.results.get(protocol, {})}
    ordered = [s for s in SET_ORDER if s in sets] + sorted(sets - set(SET_ORDER))
    return [(s, d) for s in ordered for d in DEGS
            if any(d in r.results.get(protocol, {}).get(s, {}) for st in settings for r in st.runs)]


def columns_within(settings: list[Setting], cols, protocol: str = "literature") -> list[tuple[str, str]]:
    """The columns of `cols` that `settings` scored, in `cols`' order: a group scored on fewer columns (the bicubic
    setting: clean alone) gets no empty ones, and the shared list stays whole for the groups after it."""
    scored = set(columns(settings, protocol))
    return [c for c in cols if c in scored]


def groups(settings) -> list[str]:
    """Groups in the paper's order: SRResNet before RRDB before SwinIR."""
    order = list(BACKBONE_LABEL.values())
    first = {}
    for r in settings:
        first.setdefault(r.group, (order.index(r.backbone) if r.backbone in order else len(order), r.group))
    return sorted(first, key=first.get)


def sort_key(r):
    """Baseline first, dropout settings by position, dimension and p, controls (made from the baseline) last."""
    pos = POSITION_ORDER.index(r.position) if r.position in POSITION_ORDER else len(POSITION_ORDER)
    return (bool(r.control), not r.baseline, pos, r.dim != "channel", r.p, r.control)


def read_curve(run_dir: Path, key: str = "val/psnr") -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in the run's metrics.csv; the last row per step wins (a resumed run repeats
    the steps between its last checkpoint and the kill)."""
    path = Path(run_dir) / run_folders.METRICS
    points = {}
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            v, s = row.get(key, ""), row.get("step", "")
            if v not in ("", None) and s not in ("", None):
                points[float(s)] = float(v)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def curve_key(run_dir: Path) -> str | None:
    """The validation PSNR column of a run's metrics.csv: `val/psnr` (Y), else `val/psnr_rgb` (RGB, the official
    recipe's), else the first `val/.../psnr` or `val/.../psnr_rgb`."""
    path = Path(run_dir) / run_folders.METRICS
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    for key in ("val/psnr", "val/psnr_rgb"):
        if key in header:
            return key
    return next((h for h in header if h.startswith("val/") and h.endswith(("/psnr", "/psnr_rgb"))), None)
