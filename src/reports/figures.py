"""The paper's figures: dropout bars (Fig. 4), training curves (Fig. C.1), visual comparison (Fig. 5)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from src.reports.collect import POSITION_LABEL, POSITION_ORDER, Run, _sort_key, read_curve
from src.utils import atomic_write_bytes


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

