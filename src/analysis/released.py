"""The paper's released models, checked against its Table 1 under its own protocol and analysed as in its Fig. 6-8.

    python -m src.analyze released released.dir=<folder with the downloaded .pth files> [device=cuda]

The authors publish Real-SRResNet and Real-RRDB, each without and with dropout (the official repository's README
links them; its test options name them `Real-SRResNet.pth`, `Real-SRResNet_withdropout.pth`, `Real-RRDB.pth`,
`Real-RRDB_withdropout.pth`, and its CSM folder ships `RealSRResNetx4_details.pth` and
`RealSRResNetx4_details_droplast_channel07.pth`). `check_released` finds them in a folder by these names,
evaluates each under the `official` protocol (src.evaluation), prints every cell beside the paper's published
row (src/reports/paper_results.yaml, via src.reports.paper) with the difference, and runs the channel ablation
and the CSM (official conventions: L1-mass rescaling, RGB PSNR, max-normalised CSM at the 19 official points)
on the SRResNet pair.
Writes into `out`: results_official.json per model (`<model tag>/`), released_vs_paper.csv/txt, and the
analysis files of src/analysis/tools.py under `interp/`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torch import nn

from src.analysis.common import write_csv
from src.analysis.tools import analyze
from src.reports.paper import labelled_rows
from src.utils import atomic_write_text


@dataclass(frozen=True)
class Released:
    row: str  # the paper's Table 1 row label (src/reports/paper_results.yaml)
    backbone: str  # conf/backbone choice for its architecture
    names: tuple[str, ...]  # file stems it is published under (matched case-insensitively)
    baseline: str | None = None  # the row of its pair without dropout (for the "Improvement" line)


RELEASED = (
    Released("Real-SRResNet (p=0)", "srresnet", ("Real-SRResNet", "RealSRResNetx4_details")),
    Released("Real-SRResNet (p=0.7)", "srresnet",
             ("Real-SRResNet_withdropout", "RealSRResNetx4_details_droplast_channel07"), "Real-SRResNet (p=0)"),
    Released("Real-RRDB (p=0)", "rrdb", ("Real-RRDB",)),
    Released("Real-RRDB (p=0.5)", "rrdb", ("Real-RRDB_withdropout",), "Real-RRDB (p=0)"),
)
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")



def tag(row: str) -> str:
    """A file-name-safe form of a row label: `Real-SRResNet (p=0.7)` -> `Real-SRResNet_p0.7`."""
    return "".join(ch for ch in row.replace(" (", "_").replace("=", "") if ch.isalnum() or ch in "-_.")


def find_released(folder: str | os.PathLike) -> dict[Released, Path]:
    """{release: its file} for the released models found in `folder` (by their published file names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"released.dir={str(folder)!r}: no such folder")
    files = {p.stem.lower(): p for p in sorted(folder.iterdir()) if p.suffix.lower() in WEIGHT_SUFFIXES}
    found = {}
    for rel in RELEASED:
        hits = [files[n.lower()] for n in rel.names if n.lower() in files]
        if hits:
            found[rel] = hits[0]
    if not found:
        expected = ", ".join(f"{n}.pth" for rel in RELEASED for n in rel.names)
        raise FileNotFoundError(f"released.dir={str(folder)!r} holds none of the released models; expected any of: "
                                f"{expected}")
    return found


def compare(results: Mapping[str, Mapping], paper=None, metric: str = "psnr_rgb") -> list[list]:
    """Rows (set, degradation, model, ours, paper, ours - paper) for every evaluated cell, plus "Improvement"
    rows (dropout model minus its baseline) where both models of a pair were evaluated."""
    published = paper or {}
    by_row = {rel.row: rel for rel in RELEASED}
    out = []

    def cell(row, s, d):
        e = results.get(row, {}).get(s, {}).get(d)
        return None if e is None or not math.isfinite(e.get(metric, math.nan)) else float(e[metric])

    def published_cell(row, s, d):
        v = published.get(row, {}).get(s, {}).get(d)
        return None if v is None else float(v)

    for row, by_set in results.items():
        base = by_row[row].baseline if row in by_row else None
        for s, by_deg in by_set.items():
            for d in by_deg:
                ours, theirs = cell(row, s, d), published_cell(row, s, d)
                out.append([s, d, row, ours, theirs, _diff(ours, theirs)])
                if base in results:
                    ours_imp = _diff(ours, cell(base, s, d))
                    theirs_imp = _diff(theirs, published_cell(base, s, d))
                    out.append([s, d, f"Improvement ({row} - {base})", ours_imp, theirs_imp,
                                _diff(ours_imp, theirs_imp)])
    return out


def _diff(a, b):
    return None if a is None or b is None else a - b


def format_comparison(rows: Sequence[Sequence], metric: str = "psnr_rgb") -> str:
    lines = [f"{metric} (dB), official protocol: this evaluation vs the paper's Table 1",
             f"{'set':<10} {'degradation':<11} {'model':<58} {'ours':>7} {'paper':>7} {'diff':>7}"]

    def f(v):
        return f"{v:7.2f}" if v is not None else f"{'-':>7}"

    for s, d, row, ours, theirs, diff in rows:
        lines.append(f"{s:<10} {d:<11} {row:<58} {f(ours)} {f(theirs)} {f(diff)}")
    return "\n".join(lines)


def check_released(folder: str | os.PathLike, out: str | os.PathLike, sets: Mapping[str, Sequence[os.PathLike]],
                   load: Callable[[Path, Released], nn.Module], degradations: Sequence[str] | None = None,
                   *, device="cpu", tile: int | None = None, cache_dir=None, interp_pairs=None,
                   interp_options: Mapping | None = None, paper_file: str | os.PathLike | None = None,
                   evaluate_models: bool = True) -> dict:
    """Evaluate the released models found in `folder` (official protocol) beside the paper's rows, and run the
    ablation + CSM on the SRResNet pair when `interp_pairs` ([(name, LR, HR)]) are given.

    `load(path, release)` builds one model. Returns {"results": {row: results}, "comparison": rows,
    "interp": summary or None}.
    """
    from src.data.testsets import TEST_DEGRADATIONS
    from src.evaluation import evaluate, write_results

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = find_released(folder)
    for rel, path in found.items():
        print(f"[released] {rel.row}: {path}")
    models = {rel.row: load(path, rel) for rel, path in found.items()}
    results = {}
    if evaluate_models:
        for rel in found:
            res = evaluate(models[rel.row], sets, tuple(degradations or TEST_DEGRADATIONS), scale=4, device=device,
                           tile=tile, cache_dir=cache_dir, protocol="official")
            write_results(out / tag(rel.row), res, "official")
            results[rel.row] = res
    paper = labelled_rows("table1", paper_file)
    if paper is None:
        print(f"[released] {paper_file} not found: the paper's rows are left out of the comparison")
    rows = compare(results, paper)
    write_csv(out / "released_vs_paper.csv", ["set", "degradation", "model", "psnr_rgb", "paper_psnr_rgb", "diff"],
              [[s, d, m, "" if a is None else a, "" if b is None else b, "" if c is None else c]
               for s, d, m, a, b, c in rows])
    text = format_comparison(rows)
    atomic_write_text(out / "released_vs_paper.txt", text + "\n")
    if rows:
        print(text)
    summary = None
    pair = {row: m for row, m in models.items() if row.startswith("Real-SRResNet")}
    if interp_pairs and pair:
        opts = {"rescale": "l1", "score": "rgb", "csm_norm": "max", "csm_layers": "official", "device": device,
                **(interp_options or {})}
        summary = analyze(pair, ("ablation", "csm"), out / "interp", interp_pairs, **opts)
    return {"results": results, "comparison": rows, "interp": summary}
