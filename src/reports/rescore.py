"""Re-score a published run from its committed weights and check its committed per-image scores: that the
weights in docs/results are the models the tables describe."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from src.reports.collect import read_results

# Scores of 8-bit outputs: the same weights give the same pixels, except where a float sum lands on a rounding
# boundary on another machine or thread count, which moves a PSNR by far less than this.
TOLERANCE = 1e-3
# Weights published at half precision (`half_precision`) are the trained ones rounded, so their outputs move a
# little: per-image PSNR by up to 3e-4 dB for the 4-block SRResNet and 5.4e-3 dB for the reduced RRDB (Set5, both
# protocols, four models). Another model differs by tenths of a dB, so this still tells the weights apart.
HALF_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Check:
    protocol: str
    set: str
    degradation: str
    images: int
    max_diff: float     # largest |rescored - committed| over the images and metrics
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance


def tolerance_for(weights: os.PathLike) -> float:
    """HALF_TOLERANCE for a safetensors file that says it holds float16-rounded weights, else TOLERANCE."""
    path = Path(weights)
    if path.suffix != ".safetensors":
        return TOLERANCE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return HALF_TOLERANCE if (f.metadata() or {}).get("dtype") == "float16" else TOLERANCE


def rescore(run_dir: os.PathLike, sets: Sequence[str] | None = None, data_root: os.PathLike | None = None,
            device: str = "cpu", cache_dir: os.PathLike | None = None,
            weights: os.PathLike | None = None) -> list[Check]:
    """Evaluate the run's weights (`src.models.loading.weights_file`, or the file `weights`) on `sets` (default:
    every set of its results files) under each protocol it has results for, with the seed, degradations and Y
    rounding those results record, and compare image by image with them."""
    from src.data.datasets import default_data_root, resolve_set
    from src.evaluation import evaluate
    from src.models.loading import load_for_tool

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not results:
        raise FileNotFoundError(f"rescore={run_dir}: no results.json or results_official.json to check against")
    loaded = load_for_tool(weights or run_dir, device=device)
    tolerance = tolerance_for(loaded.path)
    root = Path(data_root) if data_root else default_data_root()
    checks = []
    for protocol, res in results.items():
        names = list(sets) if sets else list(res)
        missing = [s for s in names if s not in res]
        if missing:
            raise ValueError(f"rescore: sets {missing} have no committed scores in {run_dir} ({protocol}); "
                             f"allowed: {', '.join(res)}")
        for s in names:
            degs = list(res[s])
            first = res[s][degs[0]]
            new = evaluate(loaded.model, {s: resolve_set(s, root)}, degs, scale=loaded.scale,
                           seed=int(first.get("seed", 0)), device=device, cache_dir=cache_dir, protocol=protocol,
                           round_y=bool(first.get("round_y", protocol == "literature")))
            for d in degs:
                old_images, new_images = res[s][d].get("per_image") or {}, new[s][d]["per_image"]
                if set(old_images) != set(new_images):
                    raise ValueError(f"rescore: {s}/{d} ({protocol}) committed images {sorted(old_images)} differ "
                                     f"from the set's {sorted(new_images)}")
                diff = max((abs(float(new_images[i][m]) - float(v)) for i, ms in old_images.items()
                            for m, v in ms.items()), default=math.nan)
                checks.append(Check(protocol, s, d, len(new_images), diff, tolerance))
    return checks


def attach(run_dir: os.PathLike, published: os.PathLike, convert: Callable[[Path], bytes] | None = None,
           sets: Sequence[str] | None = ("Set5",), data_root: os.PathLike | None = None, device: str = "cpu",
           cache_dir: os.PathLike | None = None) -> list[Check]:
    """Give a published run that has no weights (lost with the machine that trained it) those of `run_dir`, a
    retraining of it: training is seeded and deterministic, so the same command retrains the same weights, and
    they are kept only if they are. `run_dir` must have finished training (`train_done.json` and its checkpoint;
    it need not have scored) at the published run's step, with the published run's identity (config and image
    lists); or it is a weights file kept elsewhere, which the scores alone vouch for. The weights are exported
    (`convert`ed, e.g. to half precision) beside the published results, re-scored on `sets` and become the
    published run's `WEIGHTS` only when every column reproduces the committed per-image scores. Anything else
    leaves the published run as it was, with an error naming what differs. Returns the checks (their `ok` says
    whether the weights were attached)."""
    from src import runs
    from src.models.loading import export_safetensors

    run_dir, published = Path(run_dir), Path(published)
    target = runs.final_weights(published)
    if target.exists():
        raise FileExistsError(f"attach: {target} exists; a published run's weights are never replaced")
    if run_dir.is_file():  # a weights file (a copy kept elsewhere, an older commit's): its scores are the check
        source = run_dir
    else:
        done, trained = runs.training_done(published), runs.training_done(run_dir)
        if trained is None or not runs.checkpoint(run_dir).is_file():
            raise ValueError(f"attach: {run_dir} has not finished training (no {runs.DONE} and {runs.CKPT}); "
                             f"rerun its command until {runs.DONE} appears")
        if done is not None and done.get("global_step") != trained.get("global_step"):
            raise ValueError(f"attach: {run_dir} trained {trained.get('global_step')} steps, {published} "
                             f"{done.get('global_step')}; not the same weights")
        diff = runs.published_difference(published, run_dir)
        if diff:
            raise ValueError(f"attach: {run_dir} is not a retraining of {published}; what differs (published -> "
                             f"run): " + "; ".join(diff))
        source = runs.checkpoint(run_dir)
    trial = published / f"{target.stem}.unverified{target.suffix}"
    try:
        runs.export_weights(export_safetensors, source, trial, convert, doing="attaching",
                            advice="" if convert else "attach it at half precision (weights=half)")
        checks = rescore(published, sets, data_root, device, cache_dir, weights=trial)
        if checks and all(c.ok for c in checks):
            os.replace(trial, target)
        return checks
    finally:
        trial.unlink(missing_ok=True)


def format_checks(run_dir: os.PathLike, checks: list[Check], source: str | None = None) -> str:
    from src.models.loading import weights_file

    lines = [f"{run_dir}: re-scored from {source or weights_file(run_dir).name}"]
    for c in checks:
        lines.append(f"  {c.set}/{c.degradation} ({c.protocol}): {c.images} images, largest difference to the "
                     f"committed per-image scores {c.max_diff:.1e} ({'ok' if c.ok else 'MISMATCH'})")
    bad = [c for c in checks if not c.ok]
    tolerance = max((c.tolerance for c in checks), default=TOLERANCE)
    half = " (float16-rounded weights)" if tolerance == HALF_TOLERANCE else ""
    lines.append(f"  {len(checks) - len(bad)} of {len(checks)} columns reproduce their committed scores within "
                 f"{tolerance:g} dB{half}")
    return "\n".join(lines)
