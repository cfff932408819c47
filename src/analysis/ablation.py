"""Channel ablation at layer m with energy-preserving rescaling, paper section 6 (Fig. 6 and 8).

Ablating a set of channels zeroes them in F_m and multiplies the result by Sum(F_m) / Sum(F'_m), Sum being the
plain (signed) sum over all channels and pixels of one image, so the layer's total energy is unchanged; the
rest of the forward pass then runs as usual. When nothing is left (all channels ablated, or the kept channels
sum to exactly 0) the factor is 1, i.e. the features stay zero.

The cumulative curve ablates channels 0..k-1 for k = 0..C by default ("in turn", as the paper's Fig. 8 does);
`order` can also rank channels by their single-channel PSNR drop or shuffle them with a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from src.analysis.common import DEFAULT_LAYER, capture_features, feature_hook, pyplot, save_figure, to_uint8

ORDERS = ("index", "drop_ascending", "drop_descending", "random")


def ablate_features(f: torch.Tensor, drop: torch.Tensor, rescale: bool = True) -> torch.Tensor:
    """Zero the channels where `drop` (B, C) is True in F_m (B, C, H, W) and restore each image's Sum(F_m)."""
    if drop.shape != f.shape[:2]:
        raise ValueError(f"drop mask of shape {tuple(drop.shape)} does not match features {tuple(f.shape)}")
    kept = f * (~drop).to(f.dtype)[:, :, None, None]
    if not rescale:
        return kept
    # Sums in float64: the ratio of two large sums of mixed-sign values loses digits in float32.
    total = f.double().sum(dim=(1, 2, 3))
    rest = kept.double().sum(dim=(1, 2, 3))
    ratio = torch.where(rest != 0, total / torch.where(rest != 0, rest, torch.ones_like(rest)),
                        torch.ones_like(rest))
    return kept * ratio.to(f.dtype)[:, None, None, None]


@torch.no_grad()
def forward_ablated(model: nn.Module, lr: torch.Tensor, drop: torch.Tensor, layer: str = DEFAULT_LAYER,
                    rescale: bool = True) -> torch.Tensor:
    """SR outputs of one LR image (1, 3, h, w) under K ablations `drop` (K, C) bool, as a (K, 3, H, W) batch."""
    drop = drop.to(lr.device)
    with feature_hook(model, lambda f: ablate_features(f, drop, rescale), layer):
        return model(lr.expand(drop.shape[0], -1, -1, -1))


def _psnr(sr_uint8: np.ndarray, hr_uint8: np.ndarray, scale: int) -> float:
    from src.metrics import psnr

    return float(psnr(sr_uint8, hr_uint8, crop_border=scale, y_channel=True))


def ablation_psnr(model: nn.Module, lr: torch.Tensor, hr: np.ndarray, drop: torch.Tensor, scale: int,
                  layer: str = DEFAULT_LAYER, rescale: bool = True, batch_size: int = 8) -> np.ndarray:
    """Y-channel PSNR (crop = scale, 8-bit SR) against `hr` uint8 for each row of `drop` (K, C)."""
    out = []
    for start in range(0, drop.shape[0], batch_size):
        sr = to_uint8(forward_ablated(model, lr, drop[start:start + batch_size], layer, rescale))
        out.extend(_psnr(s, hr, scale) for s in sr)
    return np.asarray(out, dtype=np.float64)


@dataclass
class Ablation:
    baseline: float  # mean PSNR without ablation
    single: np.ndarray  # (C,) mean PSNR with channel c alone ablated
    order: np.ndarray  # (C,) the order in which the cumulative curve ablates channels
    cumulative: np.ndarray  # (C + 1,) mean PSNR with the first k channels of `order` ablated, k = 0..C

    @property
    def drop(self) -> np.ndarray:
        return self.baseline - self.single


def channel_order(single: np.ndarray, baseline: float, order: str = "index", seed: int = 0) -> np.ndarray:
    c = len(single)
    if order == "index":
        return np.arange(c)
    if order == "drop_ascending":  # least important first; stable so ties keep index order
        return np.argsort(baseline - single, kind="stable")
    if order == "drop_descending":
        return np.argsort(-(baseline - single), kind="stable")
    if order == "random":
        return np.random.default_rng(seed).permutation(c)
    raise ValueError(f"ablation order={order!r}; allowed: {', '.join(ORDERS)}")


def channel_ablation(model: nn.Module, pairs: list[tuple[torch.Tensor, np.ndarray]], scale: int,
                     layer: str = DEFAULT_LAYER, order: str = "index", rescale: bool = True,
                     batch_size: int = 8, seed: int = 0, progress: bool = True, desc: str = "ablation"
                     ) -> Ablation:
    """Single-channel PSNR drops and the cumulative curve, averaged over (LR (1,3,h,w), HR uint8) pairs."""
    if order not in ORDERS:
        raise ValueError(f"ablation order={order!r}; allowed: {', '.join(ORDERS)}")
    if not pairs:
        raise ValueError("channel_ablation needs at least one (LR, HR) pair")
    _, f = capture_features(model, pairs[0][0], layer)
    c = f.shape[1]
    eye = torch.eye(c, dtype=torch.bool)
    nothing = torch.zeros(1, c, dtype=torch.bool)
    base, single = [], []
    for lr, hr in tqdm(pairs, desc=f"{desc}: single channels", disable=not progress):
        base.append(ablation_psnr(model, lr, hr, nothing, scale, layer, rescale, batch_size)[0])
        single.append(ablation_psnr(model, lr, hr, eye, scale, layer, rescale, batch_size))
    baseline, single_mean = float(np.mean(base)), np.mean(single, axis=0)
    ranked = channel_order(single_mean, baseline, order, seed)
    # Row k ablates the first k channels of the order: row 0 is the unablated model, row C ablates all.
    cum = torch.zeros(c + 1, c, dtype=torch.bool)
    for k in range(1, c + 1):
        cum[k] = cum[k - 1]
        cum[k, int(ranked[k - 1])] = True
    curves = [ablation_psnr(model, lr, hr, cum, scale, layer, rescale, batch_size)
              for lr, hr in tqdm(pairs, desc=f"{desc}: cumulative", disable=not progress)]
    return Ablation(baseline=baseline, single=single_mean, order=ranked, cumulative=np.mean(curves, axis=0))


def plot_single(results: dict[str, Ablation], path):
    """Fig. 6 style: PSNR drop when one channel is ablated, by channel index, one panel per model."""
    plt = pyplot()
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.8 * n), squeeze=False, sharey=True)
    for ax, (label, r) in zip(axes[:, 0], results.items()):
        ax.bar(np.arange(len(r.single)), r.drop, color="tab:red")
        ax.set_title(f"{label}: baseline {r.baseline:.2f} dB, max drop {r.drop.max():.3f} dB", fontsize=10)
        ax.set_ylabel("PSNR drop (dB)")
        ax.axhline(0, color="black", linewidth=0.5)
    axes[-1, 0].set_xlabel("ablated channel index")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_cumulative(results: dict[str, Ablation], path, order: str = "index"):
    """Fig. 8 style: PSNR vs number of channels ablated, all models on one plot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, r in results.items():
        ax.plot(np.arange(len(r.cumulative)), r.cumulative, marker=".", markersize=3, label=label)
    ax.set_xlabel(f"number of channels ablated (order: {order})")
    ax.set_ylabel("PSNR (dB, Y)")
    ax.set_title("Channel ablation with Sum(F)/Sum(F') rescaling")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
