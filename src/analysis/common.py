"""Shared pieces of the interpretation tools: the layer m hook, image <-> tensor, CSV and figure writing.

Layer m is named by the submodule whose INPUT is the feature map F_m (default `conv_last`: the input of the
output conv is where `last` dropout acts), or by `<submodule>:out` for its OUTPUT (e.g. `body.15:out`, the
trunk's last block, which no submodule takes as its sole input). Reading and replacing F_m with a forward
(pre-)hook works on every backbone without touching its forward().
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from src.utils import atomic_write_bytes, atomic_write_text

DEFAULT_LAYER = "conv_last"


OUTPUT_SUFFIX = ":out"


def split_layer(layer: str) -> tuple[str, bool]:
    """(submodule name, True when the layer is that submodule's output rather than its input)."""
    if layer.endswith(OUTPUT_SUFFIX):
        return layer[:-len(OUTPUT_SUFFIX)], True
    return layer, False


def resolve_layer(model: nn.Module, layer: str = DEFAULT_LAYER) -> nn.Module:
    """The submodule named `layer` (a trailing `:out` ignored); also looks under `net.` so a LightningModule
    (SRModule) works too."""
    layer = split_layer(layer)[0]
    for name in (layer, f"net.{layer}"):
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    names = [n for n, _ in model.named_modules() if n]
    hint = ", ".join(names[-8:]) if names else "(model has no submodules)"
    raise ValueError(f"layer={layer!r}: model {type(model).__name__} has no such submodule; "
                     f"its last submodules are: {hint}")


@contextlib.contextmanager
def feature_hook(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None],
                 layer: str = DEFAULT_LAYER) -> Iterator[None]:
    """While active, `fn(F_m)` sees the first input of `layer` (its output for `<name>:out`); a tensor it
    returns replaces that input (output)."""
    module = resolve_layer(model, layer)

    def pre_hook(_module, args):
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    def post_hook(_module, _args, output):
        return fn(output)

    if split_layer(layer)[1]:
        handle = module.register_forward_hook(post_hook)
    else:
        handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def capture_features(model: nn.Module, lr: torch.Tensor, layer: str = DEFAULT_LAYER
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(SR output, F_m) for a batch of LR images."""
    store: dict[str, torch.Tensor] = {}

    def grab(f: torch.Tensor) -> None:
        store["f"] = f.detach()

    with feature_hook(model, grab, layer):
        out = model(lr)
    if "f" not in store:
        raise ValueError(f"layer={layer!r} was never called in the forward pass of {type(model).__name__}")
    return out, store["f"]


def to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div(255).to(device)


def to_uint8(sr: torch.Tensor, rounding: str = "round") -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) float -> uint8 (..., H, W, 3).

    `round` as SR test code saves its outputs; `floor` truncates as torchvision's ToPILImage (the official
    interpretation code's conversion) does.
    """
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding={rounding!r}; allowed: round, floor")
    # A wildly rescaled ablation can overflow; NaN would otherwise cast to an arbitrary byte.
    arr = sr.detach().float().nan_to_num(0.0, 1.0, 0.0).clamp(0, 1).mul(255)
    arr = (arr.round() if rounding == "round" else arr.floor()).byte().cpu()
    return arr.permute(0, 2, 3, 1).numpy() if arr.ndim == 4 else arr.permute(1, 2, 0).numpy()


def center_crop(img: np.ndarray, size: int | None, multiple: int = 1) -> np.ndarray:
    """The centre crop of at most size x size, both sides a multiple of `multiple` (None: modcrop only)."""
    h, w = img.shape[:2]
    th = min(h, size or h) // multiple * multiple
    tw = min(w, size or w) // multiple * multiple
    if th == 0 or tw == 0:
        raise ValueError(f"image {w}x{h} is smaller than one {multiple}x{multiple} block")
    top, left = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(img[top:top + th, left:left + tw])


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return atomic_write_text(path, buf.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are files, never windows (headless machines, CI)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
