"""The interpretation tools run on models in memory (what tests, notebooks, seeds.py and released.py call).

`analyze(models, tool, out, pairs, ddr_images, **options)` runs each tool named by `tool` on every model, its
options an `AnalysisOptions`. Writes into `out`: csm.png + csm_scores.csv/png (channel saliency maps;
csm_<point>.png per point with several CSM points), ablation_channels.png/csv (PSNR drop per ablated channel) +
ablation_curve.png/csv (PSNR vs number of channels ablated, all models on one plot), ddr_tsne.png + ddr_chi.png/csv
+ ddr_embedding.csv (deep degradation representations), summary.json (headline numbers per model) and
analysis.json (the options and what each number means). src/analysis/pipeline.py runs them from a config.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from src.analysis import ablation as abl
from src.analysis import ddr as ddr_mod
from src.analysis import saliency as sal
from src.analysis.common import DEFAULT_LAYER, center_crop, to_tensor, write_csv
from src.utils import atomic_write_text

TOOLS = ("csm", "ablation", "ddr", "all")


def tool_set(tool: str | Sequence[str]) -> set[str]:
    """The tools `tool` names: one of TOOLS (`all` = csm, ablation and ddr) or a list of them."""
    names = [tool] if isinstance(tool, str) else list(tool)
    bad = [t for t in names if t not in TOOLS]
    if bad or not names:
        raise ValueError(f"tool={tool!r}; allowed: {', '.join(TOOLS)} (or a list of them)")
    return {"csm", "ablation", "ddr"} if "all" in names else set(names)


def model_label(path: str | Path) -> str:
    """A suite run's folder name for a run folder or its `checkpoints/last.ckpt`, else the file's stem."""
    from src.runs import run_of_checkpoint

    path = Path(path)
    if path.is_dir():
        return path.name
    run = run_of_checkpoint(path)
    return run.name if run is not None else path.stem


def load_pairs(paths: Sequence[Path], degradation: str, scale: int, crop: int | None, seed: int = 0
               ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, LR uint8, HR uint8) with HR centre-cropped to a multiple of the scale (and to `crop` px)."""
    from src.data.imageio import read_image
    from src.data.testsets import degrade_test_image

    out = []
    for p in paths:
        hr = center_crop(read_image(p), crop, multiple=scale)
        out.append((Path(p).stem, degrade_test_image(hr, degradation, scale=scale, seed=seed), hr))
    return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass
class AnalysisOptions:
    """How `analyze` runs the tools (its keyword arguments); checked when made. The ablation's conventions are
    in src/analysis/ablation.py, the CSM's in saliency.py, the DDR's in ddr.py."""

    scale: int = 4
    layer: str = DEFAULT_LAYER        # the layer F_m every tool reads (CSM: unless csm_layers names others)
    device: Any = "cpu"
    batch_size: int = 8
    seed: int = 0
    progress: bool = True
    max_channels: int = 64            # channels shown in csm.png
    order: str = "index"              # ablation: the order channels are added to the cumulative curve
    rescale: bool | str = True        # ablation: l1 | sum | none (True = sum)
    score: str = "y"                  # ablation: y | rgb
    csm_norm: str = "minmax"          # minmax | max | channel
    csm_layers: Any = None            # None = `layer` alone, `official` (SRResNet's 19 points), or a list
    degradations: Sequence[str] = ddr_mod.DDR_DEGRADATIONS
    input_size: int = 128             # DDR: LR input side
    perplexity: float = 30.0          # DDR: t-SNE

    def __post_init__(self):
        self.rescale = abl.rescale_mode(self.rescale)
        if self.score not in abl.SCORES:
            raise ValueError(f"ablation score={self.score!r}; allowed: {', '.join(abl.SCORES)}")
        if self.csm_norm not in sal.NORMS:
            raise ValueError(f"csm norm={self.csm_norm!r}; allowed: {', '.join(sal.NORMS)}")


def run_ablation(models, pairs, out: Path, opts: AnalysisOptions):
    results = {}
    for label, model in models.items():
        tensors = [(to_tensor(lr, opts.device), hr) for _, lr, hr in pairs]
        results[label] = abl.channel_ablation(
            model, tensors, opts.scale, layer=opts.layer, order=opts.order, rescale=opts.rescale,
            batch_size=opts.batch_size, seed=opts.seed, progress=opts.progress, desc=f"ablation {label}",
            score=opts.score)
    layer, order = opts.layer, opts.order
    # psnr/psnr_drop/baseline_psnr hold the chosen `score`; every score is written beside it.
    extra = [f"{k}_{s}" for s in abl.SCORES for k in ("psnr", "psnr_drop")]
    write_csv(out / "ablation_channels.csv",
              ["model", "channel", "psnr", "psnr_drop", "baseline_psnr", *extra, "score", "rescale", "layer"],
              [[lab, c, float(r.single[c]), float(r.drop[c]), r.baseline,
                *[float(v) for s in abl.SCORES for v in (r.by_score[s][1][c], r.drop_of(s)[c])],
                r.score, r.rescale, layer]
               for lab, r in results.items() for c in range(len(r.single))])
    write_csv(out / "ablation_curve.csv",
              ["model", "n_ablated", "last_ablated_channel", "psnr", *[f"psnr_{s}" for s in abl.SCORES], "score",
               "rescale", "order", "layer"],
              [[lab, k, int(r.order[k - 1]) if k else "", float(r.cumulative[k]),
                *[float(r.by_score[s][2][k]) for s in abl.SCORES], r.score, r.rescale, order, layer]
               for lab, r in results.items() for k in range(len(r.cumulative))])
    abl.plot_single(results, out / "ablation_channels.png")
    abl.plot_cumulative(results, out / "ablation_curve.png", order)
    return results


def csm_points(model: nn.Module, layer: str, layers=None) -> dict[str, str]:
    """{point name: layer spec} the CSM reads: `layer` alone (layers=None), the official 19 points of SRResNet
    (`official`), or a list of layer specs / official point names (`first`, `b1`..`b16`, `hr`, `last`)."""
    if layers is None or (not isinstance(layers, str) and len(layers) == 0):
        return {layer: layer}
    if layers == "official":
        return sal.official_layers(model)
    if isinstance(layers, str):
        layers = [layers]
    try:
        official = sal.official_layers(model)
    except ValueError:  # plain layer specs still work on a backbone without the official points
        official = {}
    points = {}
    for spec in layers:
        spec = str(spec)
        if spec in sal.OFFICIAL_POINTS and spec not in official:
            raise ValueError(f"csm layer {spec!r}: this model has the official points {', '.join(official)}")
        points[spec] = official.get(spec, spec)
    return points


def _file_tag(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def run_csm(models, pairs, out: Path, opts: AnalysisOptions, ablation=None) -> dict[str, dict[str, np.ndarray]]:
    """CSM of every model at every point; returns {model: {point: per-channel saliency scores (C,)}}.

    One point (layers=None): csm.png and csm_scores.png. Several: csm_<point>.png per point, and csm.png for
    the point reading `layer` (the one channel ablation uses), if any.
    """
    layer, layers, norm, device = opts.layer, opts.csm_layers, opts.csm_norm, opts.device
    points = {label: csm_points(model, layer, layers) for label, model in models.items()}
    if len({tuple(p) for p in points.values()}) != 1:
        raise ValueError(f"the models have different CSM points: {points}")
    names = list(next(iter(points.values())))
    main = next((n for n in names if points[next(iter(points))][n] == layer), None if len(names) > 1 else names[0])
    entries = {n: [] for n in names}
    scores: dict[str, dict[str, np.ndarray]] = {}
    rows, notes = [], []
    for label, model in models.items():
        acc: dict[str, torch.Tensor] = {}
        for k, (_, lr, _) in enumerate(tqdm(pairs, desc=f"csm {label}", disable=not opts.progress)):
            x = to_tensor(lr, device)
            if layers is None:
                result = {names[0]: sal.channel_saliency(model, x, layer, norm=norm)}
            else:
                result = sal.channel_saliency_layers(model, x, points[label], norm=norm)
            for n, s in result.items():
                stats = torch.stack([s.scores, s.csm.mean(dim=(0, 2, 3)), s.features.mean(dim=(0, 2, 3))])
                acc[n] = stats if n not in acc else acc[n] + stats
                if k == 0:
                    entries[n].append((label, s.features[0], s.csm[0]))
        scores[label] = {}
        for n in names:
            a = (acc[n] / len(pairs)).numpy().astype(np.float64)
            scores[label][n] = a[0]
            rel = a[0] / max(a[0].max(), 1e-30)
            rows += [[label, n, points[label][n], c, float(a[0, c]), float(rel[c]), float(a[1, c]), float(a[2, c]),
                      norm] for c in range(a.shape[1])]
        if ablation is not None and label in ablation:
            notes.append({c: f"{d:+.2f}" for c, d in enumerate(-ablation[label].drop)})
    write_csv(out / "csm_scores.csv", ["model", "point", "layer", "channel", "saliency", "saliency_rel",
                                       "csm_mean", "feature_mean", "norm"], rows)
    title = f"CSM norm: {norm}"
    for n in names:
        if n == main:
            sal.plot_csm_grid(entries[n], out / "csm.png", max_channels=opts.max_channels, channel_notes=notes or None,
                              title=f"{title}; layer {points[next(iter(points))][n]}")
            sal.plot_scores({lab: sc[n] for lab, sc in scores.items()}, out / "csm_scores.png")
        if len(names) > 1:
            sal.plot_csm_grid(entries[n], out / f"csm_{_file_tag(n)}.png", max_channels=opts.max_channels,
                              title=f"{title}; point {n} = layer {points[next(iter(points))][n]}")
    return scores


def spread_stats(s: np.ndarray) -> dict[str, float]:
    """How unequal the channels' saliency is: coefficient of variation and the top channel's share."""
    return {"saliency_cv": float(s.std() / max(s.mean(), 1e-30)),
            "top_channel_share": float(s.max() / max(s.sum(), 1e-30))}


def run_ddr(models, hr_images, out: Path, opts: AnalysisOptions):
    samples = ddr_mod.make_samples(hr_images, opts.degradations, scale=opts.scale, input_size=opts.input_size,
                                   seed=opts.seed)
    results = {label: ddr_mod.compute_ddr(model, samples, layer=opts.layer, batch_size=opts.batch_size,
                                          device=opts.device, seed=opts.seed, perplexity=opts.perplexity,
                                          progress=opts.progress, desc=f"ddr {label}")
               for label, model in models.items()}
    write_csv(out / "ddr_chi.csv", ["model", "chi", "chi_tsne", "n_samples", "n_channels"],
              [[lab, r.chi, r.chi_tsne, len(r.degradations), r.features.shape[1]] for lab, r in results.items()])
    write_csv(out / "ddr_embedding.csv", ["model", "image", "degradation", "x", "y"],
              [[lab, im, d, float(x), float(y)] for lab, r in results.items()
               for im, d, (x, y) in zip(r.images, r.degradations, r.embedding)])
    ddr_mod.plot_tsne(results, out / "ddr_tsne.png", opts.degradations)
    ddr_mod.plot_chi(results, out / "ddr_chi.png")
    return results


# What each number of summary.json means; written beside it (analysis.json) so a reader needs no code.
DEFINITIONS = {
    "ablation.baseline_psnr": "PSNR (dB, `score`) of the unablated model, mean over the images",
    "ablation.max_drop": "largest single-channel drop: max over channels c of baseline_psnr minus the PSNR with "
                         "channel c alone ablated (each a mean over the images), dB",
    "ablation.mean_drop / std_drop": "mean / standard deviation over channels of that single-channel drop",
    "ablation.psnr_half_ablated / psnr_all_ablated": "PSNR of the cumulative curve with C//2 / all C channels "
                                                     "ablated (in `order`)",
    "ablation.scores": "the same baseline/max/mean drop for every score (y: PSNR-Y with a `scale` px border "
                       "crop, SR rounded; rgb: RGB PSNR without crop, SR truncated, the official metric)",
    "csm.saliency_cv": "spread of saliency: standard deviation / mean over channels of the per-channel saliency "
                       "score (mean |dD/dF_m| over pixels and images); 0 = all channels equally important",
    "csm.top_channel_share": "the most salient channel's share of the summed per-channel saliency (1/C = equal)",
    "csm.points": "saliency_cv and top_channel_share at every CSM point (layers=...)",
    "ddr.chi": "Calinski-Harabasz index of the degradation clusters of global-average-pooled F_m "
               "(lower = weaker clustering)",
    "ddr.chi_tsne": "the same index on the 2-D t-SNE embedding",
}


def analyze(models: dict[str, nn.Module], tool: str, out: str | Path, pairs=None, ddr_images=None,
            **options) -> dict:
    """Run `tool` on every model; `pairs` = [(name, LR, HR)] for csm/ablation, `ddr_images` = [(name, HR)];
    `options` are AnalysisOptions' fields. Returns (and writes as summary.json) per model the headline numbers of
    each tool; analysis.json holds the options and the definition of each number.
    """
    tools = tool_set(tool)
    if tools & {"csm", "ablation"} and not pairs:
        raise ValueError(f"tool={tool} needs (name, LR, HR) image pairs; got none")
    if "ddr" in tools and not ddr_images:
        raise ValueError(f"tool={tool} needs HR images for DDR; got none")
    opts = AnalysisOptions(**options)
    layer, csm_layers = opts.layer, opts.csm_layers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"tool": tool if isinstance(tool, str) else sorted(tools), "scale": opts.scale, "layer": layer,
              "seed": opts.seed, "n_images": len(pairs or []), "images": [n for n, *_ in pairs or []],
              "ablation": {"rescale": opts.rescale, "score": opts.score, "order": opts.order},
              "csm": {"norm": opts.csm_norm, "layers": csm_layers if isinstance(csm_layers, (str, type(None)))
                      else list(csm_layers)},
              "ddr": {"degradations": list(opts.degradations), "input_size": opts.input_size,
                      "perplexity": opts.perplexity, "n_images": len(ddr_images or [])}}
    atomic_write_text(out / "analysis.json", json.dumps({"models": list(models), "options": record,
                                                        "definitions": DEFINITIONS}, indent=2) + "\n")
    summary: dict[str, dict] = {label: {} for label in models}
    ablation = None
    if "ablation" in tools:  # before csm so the CSM grid can carry each channel's PSNR drop
        ablation = run_ablation(models, pairs, out, opts)
        for label, r in ablation.items():
            c = len(r.single)
            summary[label]["ablation"] = {
                "baseline_psnr": _finite(r.baseline), "max_drop": _finite(r.drop.max()),
                "mean_drop": _finite(r.drop.mean()), "std_drop": _finite(r.drop.std()),
                "psnr_half_ablated": _finite(r.cumulative[c // 2]), "psnr_all_ablated": _finite(r.cumulative[c]),
                "score": r.score, "rescale": r.rescale,
                "scores": {s: {"baseline_psnr": _finite(r.by_score[s][0]), "max_drop": _finite(r.drop_of(s).max()),
                               "mean_drop": _finite(r.drop_of(s).mean())} for s in abl.SCORES}}
    if "csm" in tools:
        scores = run_csm(models, pairs, out, opts, ablation)
        for label, by_point in scores.items():
            points = csm_points(models[label], layer, csm_layers)
            main = next((n for n, spec in points.items() if spec == layer), next(iter(points)))
            summary[label]["csm"] = {**spread_stats(by_point[main]), "layer": points[main], "norm": opts.csm_norm}
            if len(by_point) > 1:
                summary[label]["csm"]["points"] = {n: spread_stats(v) for n, v in by_point.items()}
    if "ddr" in tools:
        res = run_ddr(models, ddr_images, out, opts)
        for label, r in res.items():
            summary[label]["ddr"] = {"chi": r.chi, "chi_tsne": r.chi_tsne, "n_samples": len(r.degradations)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
