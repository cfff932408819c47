"""Channel saliency maps (CSM), paper section 6.

Attribution target, following LAM (Gu & Dong 2021): D(I) = sum over pixels (and colour channels) of the image
gradient magnitude of the SR output, sqrt(dx^2 + dy^2) with forward differences, over the whole image (LAM
sums it inside a window; the paper's CSM uses the whole output). The output is not clamped, because clamping
would zero the gradient of saturated pixels. CSM = |dD / dF_m| per channel, normalised per image (`NORMS`):
- `minmax`: all elements of one image's map min-max normalised to [0, 1] together (this suite's first choice);
- `max`: all elements divided by their joint maximum, as the official code does (CSM/generate_map.py applies
  `grad_abs_norm_singlechannel` to the whole (C, H, W) gradient of one image) and the paper says ("normalize
  all its elements to [0, 1]"); differs from `minmax` only where the smallest |gradient| is not 0;
- `channel`: each channel divided by its own maximum, so every channel's map spans [0, 1] (shows where each
  channel looks, not how much it matters).
The per-channel saliency score is the mean of the raw |dD / dF_m| over pixels and images, whatever the norm.

The official code reads 19 points of SRResNet in one backward pass (`OFFICIAL_POINTS`, `official_layers`):
after conv_first (+ LeakyReLU), after each of the 16 residual blocks, after the upsampler (input of conv_hr)
and after conv_hr (+ LeakyReLU, input of conv_last); `channel_saliency_layers` does the same for any list.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.analysis.common import DEFAULT_LAYER, feature_hook, pyplot, save_figure

# Keeps d sqrt(x)/dx finite at x = 0 (flat regions); shifts D by a constant only.
_EPS = 1e-12


def image_gradient_sum(img: torch.Tensor) -> torch.Tensor:
    """D(I): summed forward-difference gradient magnitude of a (B, C, H, W) batch, a scalar."""
    dy = img[:, :, 1:, :-1] - img[:, :, :-1, :-1]
    dx = img[:, :, :-1, 1:] - img[:, :, :-1, :-1]
    return torch.sqrt(dx * dx + dy * dy + _EPS).sum()


NORMS = ("minmax", "max", "channel")


def normalise(t: torch.Tensor, norm: str = "minmax") -> torch.Tensor:
    """Scale each sample of a (B, ...) tensor to [0, 1] (for `channel`: each (sample, channel) of (B, C, ...)).

    `minmax` maps min..max to 0..1 and a constant map to 0; `max` and `channel` divide a non-negative map by its
    maximum (an all-zero map stays 0).
    """
    if norm not in NORMS:
        raise ValueError(f"csm norm={norm!r}; allowed: {', '.join(NORMS)}")
    tiny = torch.finfo(t.dtype).tiny
    if norm == "channel":
        flat = t.flatten(2)
        return t / flat.max(2).values.clamp_min(tiny).view(*t.shape[:2], *(1,) * (t.ndim - 2))
    flat = t.flatten(1)
    shape = (-1,) + (1,) * (t.ndim - 1)
    if norm == "max":
        return t / flat.max(1).values.clamp_min(tiny).view(shape)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (t - lo.view(shape)) / (hi - lo).clamp_min(tiny).view(shape)


@dataclass
class Saliency:
    features: torch.Tensor  # F_m, (B, C, H, W), on CPU
    grad: torch.Tensor  # |dD/dF_m|, same shape
    csm: torch.Tensor  # grad normalised to [0, 1] per image (`norm`)
    scores: torch.Tensor  # (C,) mean |dD/dF_m| per channel over pixels and images
    norm: str = "minmax"


def _saliency(features: torch.Tensor, grad: torch.Tensor, norm: str) -> Saliency:
    grad = grad.abs().detach().float().cpu()
    return Saliency(features=features.detach().float().cpu(), grad=grad, csm=normalise(grad, norm),
                    scores=grad.mean(dim=(0, 2, 3)), norm=norm)


def channel_saliency(model: nn.Module, lr: torch.Tensor, layer: str = DEFAULT_LAYER,
                     target=image_gradient_sum, norm: str = "minmax") -> Saliency:
    """CSM of layer m for a batch of LR images (B, 3, h, w) in [0, 1] on the model's device.

    The batch's images are independent in eval mode, so one backward pass of the summed D gives each image's
    own gradient.
    """
    store: dict[str, torch.Tensor] = {}

    def make_leaf(f: torch.Tensor) -> torch.Tensor:
        # Cut the graph at F_m: only the part after layer m needs a backward pass.
        store["f"] = f.detach().requires_grad_(True)
        return store["f"]

    with torch.enable_grad(), feature_hook(model, make_leaf, layer):
        out = model(lr)
        if "f" not in store:
            raise ValueError(f"layer={layer!r} was never called in the forward pass of {type(model).__name__}")
        (grad,) = torch.autograd.grad(target(out), store["f"])
    return _saliency(store["f"], grad, norm)


# The official code's names of its 19 points, in forward order.
OFFICIAL_POINTS = ("first", *(f"b{i}" for i in range(1, 17)), "hr", "last")


def official_layers(model: nn.Module) -> dict[str, str]:
    """{official point name: layer} for a backbone with a `body` trunk, `conv_hr` and `conv_last` (SRResNet, RRDB).

    `first` is the input of the first block (after conv_first and, in SRResNet, its LeakyReLU), `b<k>` the
    output of block k, `hr` the input of conv_hr (after the upsampler), `last` the input of conv_last. A trunk of
    N blocks gives N + 3 points (19 for the paper's 16).
    """
    from src.analysis.common import resolve_layer

    try:
        body = resolve_layer(model, "body")
        resolve_layer(model, "conv_hr")
        resolve_layer(model, "conv_last")
    except ValueError as err:
        raise ValueError(f"layers=official needs a model with `body`, `conv_hr` and `conv_last` (SRResNet, RRDB); "
                         f"{type(model).__name__} lacks one: {err}") from None
    n = len(body)
    points = {"first": "body.0"}
    points.update({f"b{k}": f"body.{k}" for k in range(1, n)})  # block k's output is block k+1's input
    points[f"b{n}"] = f"body.{n - 1}:out"
    points.update(hr="conv_hr", last="conv_last")
    return points


def channel_saliency_layers(model: nn.Module, lr: torch.Tensor, layers: dict[str, str] | list[str],
                            target=image_gradient_sum, norm: str = "minmax") -> dict[str, Saliency]:
    """CSM at several layers from one forward and one backward pass, as {name: Saliency}.

    `layers` maps a name to a layer spec (or is a list of specs, each its own name). The feature maps stay in
    the graph (the input is made to require grad, so this works whatever the parameters' requires_grad), and
    dD/dF at each point is read with autograd.grad, so hooking one point does not cut the gradient of another.
    """
    from src.analysis.common import feature_hook

    layers = dict(layers) if isinstance(layers, dict) else {name: name for name in layers}
    if not layers:
        raise ValueError("channel_saliency_layers needs at least one layer")
    store: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for name, layer in layers.items():
            stack.enter_context(feature_hook(model, lambda f, name=name: store.__setitem__(name, f), layer))
        out = model(lr.detach().clone().requires_grad_(True))
        missing = [f"{n}={layers[n]!r}" for n in layers if n not in store]
        if missing:
            raise ValueError(f"layers {', '.join(missing)} were never called in the forward pass of "
                             f"{type(model).__name__}")
        grads = torch.autograd.grad(target(out), [store[n] for n in layers])
    return {n: _saliency(store[n], g, norm) for n, g in zip(layers, grads)}


def _mosaic(maps: torch.Tensor, cols: int, tile: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(C, H, W) maps in [0, 1] -> (one 2-D array of tiles with NaN gaps, the tile step (dy, dx) in it).

    Tiles are shrunk by area averaging to at most `tile` px so 64 HR-size maps stay a readable figure.
    """
    c, h, w = maps.shape
    k = max(1, int(np.ceil(max(h, w) / tile)))
    if k > 1:
        maps = F.avg_pool2d(maps[None], k, ceil_mode=True)[0]
    c, h, w = maps.shape
    cols = min(cols, c)
    rows = int(np.ceil(c / cols))
    pad = max(1, h // 16)
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan, dtype=np.float32)
    for i in range(c):
        r, q = divmod(i, cols)
        canvas[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = maps[i].numpy()
    return canvas, (h + pad, w + pad)


def plot_csm_grid(entries: list[tuple[str, torch.Tensor, torch.Tensor]], path, max_channels: int = 64,
                  cols: int = 8, tile: int = 64, channel_notes: list[dict[int, str]] | None = None,
                  title: str = ""):
    """Fig. 6/7 style: per model a row with its feature maps (left) and their CSMs (right), channel by index.

    `entries` holds (label, features (C, H, W), csm (C, H, W)) of one image. Feature maps are min-max
    normalised over all channels together, like the CSM, so a dominant channel shows up as the bright one.
    `channel_notes` (one dict per entry) adds text after each tile's channel index.
    """
    plt = pyplot()
    counts = [min(f.shape[0], max_channels) for _, f, _ in entries]
    grids = [(_mosaic(normalise(f[None, :c])[0], cols, tile), _mosaic(m[:c], cols, tile))
             for (_, f, m), c in zip(entries, counts)]
    aspect = grids[0][0][0].shape[0] / grids[0][0][0].shape[1]
    fig, axes = plt.subplots(len(entries), 2, figsize=(12, (6 * aspect + 0.5) * len(entries)), squeeze=False)
    for row, ((label, _, _), pair, c) in enumerate(zip(entries, grids, counts)):
        notes = channel_notes[row] if channel_notes else {}
        for ax, (grid, (dy, dx)), name, cmap in zip(axes[row], pair, ("feature maps", "CSM"), ("viridis", "gray")):
            cm = plt.get_cmap(cmap).with_extremes(bad="white")  # NaN gaps between tiles
            ax.imshow(grid, cmap=cm, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{label}: {name}", fontsize=11)
            ax.axis("off")
            for i in range(c):
                r, q = divmod(i, min(cols, c))
                text = f"{i}" + (f" {notes[i]}" if i in notes else "")
                ax.text(q * dx + 1, r * dy + 1, text, color="white", fontsize=6, va="top",
                        bbox=dict(facecolor="black", alpha=0.5, pad=0.5, linewidth=0))
    extra = "; tile label: channel, PSNR change (dB) when it alone is ablated" if channel_notes else ""
    head = f"Feature maps and channel saliency maps (first {max(counts)} channels{extra})"
    fig.suptitle(head + (f"\n{title}" if title else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_scores(scores: dict[str, np.ndarray], path):
    """Per-channel saliency scores of each model, each normalised by its maximum."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    n = len(scores)
    width = 0.8 / max(n, 1)
    for k, (label, s) in enumerate(scores.items()):
        s = np.asarray(s, dtype=np.float64)
        ax.bar(np.arange(len(s)) + k * width, s / max(s.max(), 1e-30), width=width, label=label)
    ax.set_xlabel("channel index")
    ax.set_ylabel("saliency / max")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Channel saliency scores (mean |dD/dF_m|)")
    return save_figure(fig, path)
