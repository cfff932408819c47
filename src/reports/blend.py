"""The shrinkage control: a baseline model's output pulled toward interpolation, scored like a model.

A model can gain over a baseline by being more conservative (closer to bicubic) rather than better. The control
blends the baseline's output with the protocol's own bicubic upscaling of the same LR image,
`a * SR + (1 - a) * bicubic`, with `a` on a grid (steps of 0.05) chosen on validation images only, never on the
test sets:

- **blind**: one `a` for every degradation (chosen over the mix of the test degradations), what a model that does
  not know the degradation could do: the fair control;
- **oracle**: one `a` per degradation: an upper bound that knows the degradation.

Each image is super-resolved once per degradation and protocol; the blends over the grid reuse that output (only
PSNR is computed to choose `a`). The results are written as the run folders of two controls (config.yaml with a
`control` node, results files in the evaluation's format), so `src.report` compares dropout with the baseline and
with both blends by the same seed-level intervals.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from src import runs as run_folders

GRID_STEP = 0.05
MODES = ("blind", "oracle")


def grid(step: float = GRID_STEP) -> np.ndarray:
    """a = 0, step, ..., 1 (0 = bicubic, 1 = the model)."""
    return np.round(np.linspace(0.0, 1.0, int(round(1 / step)) + 1), 6)


def blend(sr: np.ndarray, bicubic: np.ndarray, a: float) -> np.ndarray:
    """`a * sr + (1 - a) * bicubic` of two uint8 images, rounded to uint8 as a saved image would be.

    Example:
        >>> blend(np.array([200], np.uint8), np.array([100], np.uint8), 0.25).tolist()
        [125]
    """
    return np.clip(np.round(a * sr.astype(np.float64) + (1 - a) * bicubic.astype(np.float64)), 0, 255).astype(np.uint8)


def _best(scores: np.ndarray, a_grid: np.ndarray) -> float:
    """The `a` of the highest mean score; among ties the largest (the least shrinkage)."""
    i = len(a_grid) - 1 - int(np.argmax(scores[::-1]))
    return float(a_grid[i])


def _outputs(model, paths, degradation, scale, seed, protocol, device, cache_dir):
    """(path, hr, sr, bicubic) per image: one forward each."""
    from src.data.testsets import bicubic_upscale, load_test_pairs
    from src.evaluation import super_resolve

    for path, hr, lr in load_test_pairs(paths, degradation, scale, seed, cache_dir, protocol):
        yield path, hr, super_resolve(model, lr, scale, device), bicubic_upscale(lr, scale, protocol)


def choose(model, val_paths: Sequence[os.PathLike], degradations: Sequence[str], scale: int, seed: int,
           protocol: str, device="cpu", cache_dir=None, step: float = GRID_STEP) -> dict:
    """{"blind": a, "oracle": {degradation: a}, "grid": [...], "psnr": {degradation: [mean PSNR per a]}} on the
    validation images, PSNR being the protocol's headline (Y for literature, RGB for official)."""
    from src.metrics import psnr

    a_grid = grid(step)
    y = protocol == "literature"
    curves = {}
    for d in degradations:
        rows = [[psnr(blend(sr, bic, a), hr, scale, y_channel=y, round_y=y) for a in a_grid]
                for _, hr, sr, bic in _outputs(model, val_paths, d, scale, seed, protocol, device, cache_dir)]
        curves[d] = np.mean(rows, axis=0)
    blind = _best(np.mean(list(curves.values()), axis=0), a_grid)
    return {"blind": blind, "oracle": {d: _best(c, a_grid) for d, c in curves.items()}, "grid": a_grid.tolist(),
            "psnr": {d: [round(float(v), 6) for v in c] for d, c in curves.items()}}


def score(model, sets: Mapping[str, Sequence[os.PathLike]], degradations: Mapping[str, Sequence[str]],
          weights: Mapping[str, Mapping[str, float]], scale: int, seed: int, protocol: str, round_y: bool = True,
          device="cpu", cache_dir=None) -> dict[str, dict]:
    """{mode: results dict} of each blend, `weights[mode][degradation]` its `a`, on every set x degradation
    (`degradations[set]`), one forward per image, scored as `src.evaluation.evaluate` scores a model."""
    from src.evaluation import results_entry, score_image, usable_paths

    round_y = bool(round_y) and protocol == "literature"
    out = {mode: {} for mode in weights}
    for s, paths in sets.items():
        good, rejected, gray = usable_paths(paths, scale)
        gray = gray if protocol == "literature" else set()
        for d in degradations[s]:
            per_image = {mode: {} for mode in weights}
            for path, hr, sr, bic in _outputs(model, good, d, scale, seed, protocol, device, cache_dir):
                for mode, a in weights.items():
                    per_image[mode][Path(path).stem] = score_image(blend(sr, bic, a[d]), hr, scale, round_y,
                                                                   path in gray)
            for mode in weights:
                out[mode].setdefault(s, {})[d] = results_entry(per_image[mode], len(rejected), scale, seed, protocol,
                                                               round_y)
    return out


def control_label(mode: str) -> str:
    return f"blend toward bicubic ({mode})"


def blend_run(run_dir: os.PathLike, val_sets: Sequence[str] | None = None, out: os.PathLike | None = None,
              data_root: os.PathLike | None = None, device="cpu", cache_dir=None, step: float = GRID_STEP
              ) -> list[Path]:
    """The blind and oracle controls of one run (a trained run folder, or a published one with its weights):
    `a` chosen on `val_sets` (default: the run's data.val_sets) under each protocol the run has results for, then
    scored on the run's own test columns. Writes `<out>/<run>.blend-<mode>/` (default `out`: beside the run)
    and returns those folders."""
    from omegaconf import OmegaConf

    from src.data.datasets import default_data_root, resolve_set
    from src.evaluation import write_results
    from src.models.loading import load_for_tool
    from src.reports.collect import read_results
    from src.utils import atomic_write_text

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    cfg_path = run_folders.run_config_path(run_dir)
    if not results or cfg_path is None:
        raise FileNotFoundError(f"blend={run_dir}: needs a run folder with config.yaml and results.json / "
                                "results_official.json (the test columns to score the blends on)")
    if val_sets is None:
        val_sets = list(OmegaConf.load(cfg_path).get("data", {}).get("val_sets") or [])
    tests = {s for res in results.values() for s in res}
    leak = sorted(set(val_sets) & tests)
    if leak or not val_sets:
        raise ValueError(f"blend: val={list(val_sets)} must name validation sets that are not test sets of "
                         f"{run_dir.name} ({', '.join(sorted(tests))}); `a` is chosen on them")
    root = Path(data_root) if data_root else default_data_root()
    val_paths = [p for name in val_sets for p in resolve_set(name, root)]
    loaded = load_for_tool(run_dir, device=device)
    out = Path(out) if out else run_dir.parent
    chosen, scored = {}, {mode: {} for mode in MODES}
    for protocol, res in results.items():
        degs = {s: list(res[s]) for s in res}
        mix = list(dict.fromkeys(d for ds in degs.values() for d in ds))
        first = next(iter(res[next(iter(res))].values()))
        seed = int(first.get("seed", 0))
        pick = choose(loaded.model, val_paths, mix, loaded.scale, seed, protocol, device, cache_dir, step)
        chosen[protocol] = pick
        weights = {"blind": {d: pick["blind"] for d in mix}, "oracle": pick["oracle"]}
        sets = {s: resolve_set(s, root) for s in res}
        for mode, r in score(loaded.model, sets, degs, weights, loaded.scale, seed, protocol,
                             bool(first.get("round_y", True)), device, cache_dir).items():
            scored[mode][protocol] = r
    written = []
    for mode in MODES:
        folder = out / f"{run_dir.name}.blend-{mode}"
        cfg = OmegaConf.load(cfg_path)
        a = {p: (c["blind"] if mode == "blind" else c["oracle"]) for p, c in chosen.items()}
        cfg.control = {"label": control_label(mode), "kind": "blend", "toward": "bicubic", "mode": mode,
                       "of": run_dir.name, "val_sets": list(val_sets), "grid_step": step, "a": a}
        atomic_write_text(folder / run_folders.CONFIG, OmegaConf.to_yaml(cfg))
        atomic_write_text(folder / "blend.json", json.dumps(chosen, indent=1) + "\n")
        for protocol, r in scored[mode].items():
            write_results(folder, r, protocol)
        written.append(folder)
    return written


def baselines(target: os.PathLike) -> list[Path]:
    """The runs under `target` (a run, sweep or published campaign folder) that have no dropout and are not
    controls themselves: the models the control is made from."""
    from src.reports.collect import read_run

    found = []
    for d in run_folders.find_runs(target):
        run = read_run(d) if run_folders.run_config_path(d) else None
        if run is not None and run.baseline:
            found.append(d)
    if not found:
        raise FileNotFoundError(f"blend={target}: no run without dropout (p=0) with results in it or below it")
    return found
