"""Re-score a published run from its committed weights and check its committed per-image scores: that the
weights in docs/results are the models the tables describe."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from src.reports.collect import read_results

# Scores of 8-bit outputs: the same weights give the same pixels, except where a float sum lands on a rounding
# boundary on another machine or thread count, which moves a PSNR by far less than this.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Check:
    protocol: str
    set: str
    degradation: str
    images: int
    max_diff: float     # largest |rescored - committed| over the images and metrics

    @property
    def ok(self) -> bool:
        return self.max_diff <= TOLERANCE


def rescore(run_dir: os.PathLike, sets: Sequence[str] | None = None, data_root: os.PathLike | None = None,
            device: str = "cpu", cache_dir: os.PathLike | None = None) -> list[Check]:
    """Evaluate the run's weights (`src.models.loading.weights_file`) on `sets` (default: every set of its results files) under
    each protocol it has results for, with the seed, degradations and Y rounding those results record, and
    compare image by image with them."""
    from src.data.datasets import default_data_root, resolve_set
    from src.evaluation import evaluate
    from src.models.loading import load_for_tool

    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not results:
        raise FileNotFoundError(f"rescore={run_dir}: no results.json or results_official.json to check against")
    loaded = load_for_tool(run_dir, device=device)
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
                checks.append(Check(protocol, s, d, len(new_images), diff))
    return checks


def format_checks(run_dir: os.PathLike, checks: list[Check]) -> str:
    from src.models.loading import weights_file

    lines = [f"{run_dir}: re-scored from {weights_file(run_dir).name}"]
    for c in checks:
        lines.append(f"  {c.set}/{c.degradation} ({c.protocol}): {c.images} images, largest difference to the "
                     f"committed per-image scores {c.max_diff:.1e} ({'ok' if c.ok else 'MISMATCH'})")
    bad = [c for c in checks if not c.ok]
    lines.append(f"  {len(checks) - len(bad)} of {len(checks)} columns reproduce their committed scores within "
                 f"{TOLERANCE:g}")
    return "\n".join(lines)
