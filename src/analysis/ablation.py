"""Channel ablation at layer m with energy-preserving rescaling, paper section 6 (Fig. 6 and 8).

Ablating a set of channels zeroes them in F_m and multiplies the result by Sum(F_m) / Sum(F'_m), Sum running
over all channels and pixels of one image; the rest of the forward pass then runs as usual. `rescale` picks Sum:
- `l1`: the sum of absolute values, i.e. the factor sum|F| / (sum|F| - sum|F_c|), as the official code does
  (CSM/ModelZoo/NN/srresnet_arch.py, the `*_details_*ob` classes behind Fig. 6/8);
- `sum`: the plain signed sum (the paper's text read literally; this suite's first convention);
- `none`: plain zeroing.
When nothing is left (all channels ablated, or the kept channels sum to exactly 0) the factor is 1, i.e. the
features stay zero.

Each ablated output is scored two ways (`SCORES`), both always computed and written:
- `y`: PSNR on the Y channel with a border of `scale` px cropped, SR rounded to 8 bits (this suite, the
  literature's protocol);
- `rgb`: PSNR over the three RGB channels without a crop, SR truncated to 8 bits as torchvision's ToPILImage
  does and 80 dB for identical images (the official CSM/metric.py `calculate_psnr`).

The cumulative curve ablates channels 0..k-1 for k = 0..C by default ("in turn", as the paper's Fig. 8 does);
`order` can also rank channels by their single-channel PSNR drop or shuffle them with a seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from src.analysis.common import DEFAULT_LAYER, capture_features, feature_hook, pyplot, save_figure, to_uint8

ORDERS = ("index", "drop_ascending", "drop_descending", "random")
RESCALES = ("l1", "sum", "none")
SCORES = ("y", "rgb")
SCORE_NAMES = {"y": "PSNR-Y, border crop = scale", "rgb": "RGB PSNR, no crop (official)"}
RESCALE_NAMES = {"l1": "sum|F|/(sum|F|-sum|F_c|)", "sum": "Sum(F)/Sum(F')", "none": "no rescaling"}


def rescale_mode(rescale: bool | str) -> str:
    """`rescale` as one of RESCALES; True/False are the older spelling of `sum`/`none`."""
    if rescale is True:
        return "sum"
    if rescale is False or rescale is None:
        return "none"
    if rescale not in RESCALES:
        raise ValueError(f"ablation rescale={rescale!r}; allowed: {', '.join(RESCALES)}")
    return rescale


def ablate_features(f: torch.Tensor, drop: torch.Tensor, rescale: bool | str = True) -> torch.Tensor:
    """Zero the channels where `drop` (B, C) is True in F_m (B, C, H, W) and restore each image's Sum(F_m).

    `rescale`: `l1` (sum of |F|), `sum` (signed sum; also True) or `none` (also False), see the module doc.
    """
    mode = rescale_mode(rescale)
    if drop.shape != f.shape[:2]:
        raise ValueError(f"drop mask of shape {tuple(drop.shape)} does not match features {tuple(f.shape)}")
    kept = f * (~drop).to(f.dtype)[:, :, None, None]
    if mode == "none":
        return kept
    # Sums in float64: the ratio of two large sums of mixed-sign values loses digits in float32.
    mass = (lambda t: t.double().abs()) if mode == "l1" else (lambda t: t.double())
    total = mass(f).sum(dim=(1, 2, 3))
    rest = mass(kept).sum(dim=(1, 2, 3))
    ratio = torch.where(rest != 0, total / torch.where(rest != 0, rest, torch.ones_like(rest)),
                        torch.ones_like(rest))
    return kept * ratio.to(f.dtype)[:, None, None, None]


@torch.no_grad()
def forward_ablated(model: nn.Module, lr: torch.Tensor, drop: torch.Tensor, layer: str = DEFAULT_LAYER,
                    rescale: bool | str = True) -> torch.Tensor:
    """SR outputs of one LR image (1, 3, h, w) under K ablations `drop` (K, C) bool, as a (K, 3, H, W) batch."""
    drop = drop.to(lr.device)
    with feature_hook(model, lambda f: ablate_features(f, drop, rescale), layer):
        return model(lr.expand(drop.shape[0], -1, -1, -1))


def _scores(sr: torch.Tensor, hr: np.ndarray, scale: int) -> list[tuple[float, float]]:
    """(y, rgb) PSNR of each SR output in the batch (B, 3, H, W) against `hr` uint8, see SCORES."""
    from src.metrics import psnr

    out = []
    for y8, t8 in zip(to_uint8(sr), to_uint8(sr, rounding="floor")):
        rgb = float(psnr(t8, hr, crop_border=0, y_channel=False))
        out.append((float(psnr(y8, hr, crop_border=scale, y_channel=True)), 80.0 if rgb == float("inf") else rgb))
    return out


def ablation_scores(model: nn.Module, lr: torch.Tensor, hr: np.ndarray, drop: torch.Tensor, scale: int,
                    layer: str = DEFAULT_LAYER, rescale: bool | str = True, batch_size: int = 8
                    ) -> dict[str, np.ndarray]:
    """Both scores (SCORES: `y`, `rgb`) against `hr` uint8 for each row of `drop` (K, C), as {score: (K,)}."""
    out = []
    for start in range(0, drop.shape[0], batch_size):
        out.extend(_scores(forward_ablated(model, lr, drop[start:start + batch_size], layer, rescale), hr, scale))
    arr = np.asarray(out, dtype=np.float64).reshape(-1, len(SCORES))
    return {name: arr[:, k] for k, name in enumerate(SCORES)}


def ablation_psnr(model: nn.Module, lr: torch.Tensor, hr: np.ndarray, drop: torch.Tensor, scale: int,
                  layer: str = DEFAULT_LAYER, rescale: bool | str = True, batch_size: int = 8,
                  score: str = "y") -> np.ndarray:
    """PSNR (`score`: y = Y channel, crop = scale; rgb = official) against `hr` for each row of `drop` (K, C)."""
    if score not in SCORES:
        raise ValueError(f"ablation score={score!r}; allowed: {', '.join(SCORES)}")
    return ablation_scores(model, lr, hr, drop, scale, layer, rescale, batch_size)[score]


@dataclass
class Ablation:
    baseline: float  # mean PSNR (`score`) without ablation
    single: np.ndarray  # (C,) mean PSNR with channel c alone ablated
    order: np.ndarray  # (C,) the order in which the cumulative curve ablates channels
    cumulative: np.ndarray  # (C + 1,) mean PSNR with the first k channels of `order` ablated, k = 0..C
    score: str = "y"  # which of SCORES the fields above hold
    rescale: str = "sum"  # which of RESCALES produced them
    # Every score by name (the primary one included): (baseline, single (C,), cumulative (C + 1,)).
    by_score: dict[str, tuple[float, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def drop(self) -> np.ndarray:
        return self.baseline - self.single

    def drop_of(self, score: str) -> np.ndarray:
        baseline, single, _ = self.by_score[score]
        return baseline - single


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
                     layer: str = DEFAULT_LAYER, order: str = "index", rescale: bool | str = True,
                     batch_size: int = 8, seed: int = 0, progress: bool = True, desc: str = "ablation",
                     score: str = "y") -> Ablation:
    """Single-channel PSNR drops and the cumulative curve, averaged over (LR (1,3,h,w), HR uint8) pairs.

    Every score of SCORES is computed (`by_score`); `score` picks the one in the main fields and the one a
    `drop_*` order ranks by.
    """
    if order not in ORDERS:
        raise ValueError(f"ablation order={order!r}; allowed: {', '.join(ORDERS)}")
    if score not in SCORES:
        raise ValueError(f"ablation score={score!r}; allowed: {', '.join(SCORES)}")
    mode = rescale_mode(rescale)
    if not pairs:
        raise ValueError("channel_ablation needs at least one (LR, HR) pair")
    _, f = capture_features(model, pairs[0][0], layer)
    c = f.shape[1]
    # Row 0 is the unablated model, row 1 + i ablates channel i alone.
    single_masks = torch.cat([torch.zeros(1, c, dtype=torch.bool), torch.eye(c, dtype=torch.bool)])
    singles = [ablation_scores(model, lr, hr, single_masks, scale, layer, mode, batch_size)
               for lr, hr in tqdm(pairs, desc=f"{desc}: single channels", disable=not progress)]
    single_mean = {s: np.mean([r[s] for r in singles], axis=0) for s in SCORES}
    ranked = channel_order(single_mean[score][1:], float(single_mean[score][0]), order, seed)
    # Row k ablates the first k channels of the order: row 0 is the unablated model, row C ablates all.
    cum = torch.zeros(c + 1, c, dtype=torch.bool)
    for k in range(1, c + 1):
        cum[k] = cum[k - 1]
        cum[k, int(ranked[k - 1])] = True
    curves = [ablation_scores(model, lr, hr, cum, scale, layer, mode, batch_size)
              for lr, hr in tqdm(pairs, desc=f"{desc}: cumulative", disable=not progress)]
    by_score = {s: (float(single_mean[s][0]), single_mean[s][1:], np.mean([r[s] for r in curves], axis=0))
                for s in SCORES}
    baseline, single, cumulative = by_score[score]
    return Ablation(baseline=baseline, single=single, order=ranked, cumulative=cumulative, score=score,
                    rescale=mode, by_score=by_score)


def describe(r: Ablation) -> str:
    """The conventions behind an ablation result, for figure titles."""
    return f"rescale {r.rescale}: {RESCALE_NAMES[r.rescale]}; {SCORE_NAMES[r.score]}"


def plot_single(results: dict[str, Ablation], path):
    """Fig. 6 style: PSNR drop when one channel is ablated, by channel index, one panel per model."""
    plt = pyplot()
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.8 * n), squeeze=False, sharey=True)
    for ax, (label, r) in zip(axes[:, 0], results.items()):
        ax.bar(np.arange(len(r.single)), r.drop, color="tab:red")
        ax.set_title(f"{label}: baseline {r.baseline:.2f} dB, max drop {r.drop.max():.3f} dB ({describe(r)})",
                     fontsize=10)
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
    first = next(iter(results.values()), None)
    ax.set_ylabel(f"PSNR (dB, {'RGB' if first is not None and first.score == 'rgb' else 'Y'})")
    ax.set_title("Channel ablation" + (f" ({describe(first)})" if first is not None else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
