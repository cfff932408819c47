"""Tiled super-resolution forward pass for images too large to upscale in one go.

Each tile is run with ``overlap`` LR pixels of real image context on every side, and only its
core region is kept (no blending). For a convolutional network whose receptive radius is at most
``overlap`` LR pixels this reproduces the untiled output exactly, up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _windows(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int, int, int]]:
    """Split ``[0, size)`` into cores of ``tile`` px, each inside an input window.

    Returns ``(core_start, core_end, win_start, win_end)`` tuples. All windows have one length, a multiple of
    ``multiple`` (``size`` is assumed to be one already), and start at a multiple of it, so window-attention
    models partition every tile on the same grid as the whole image. The last (short) core borrows context
    from the left instead of shrinking its window.
    """
    # rounding a start down to the grid costs up to multiple-1 px of context, which the window makes up for
    win = min(size, -(-(tile + 2 * overlap + multiple - 1) // multiple) * multiple)
    out = []
    for c0 in range(0, size, tile):
        c1 = min(c0 + tile, size)
        w0 = min(max(c0 - overlap, 0) // multiple * multiple, size - win)
        out.append((c0, c1, w0, w0 + win))
    return out


def _pad_to_multiple(x: torch.Tensor, multiple: int | None) -> torch.Tensor:
    """Pad right/bottom so H and W are multiples of ``multiple`` (e.g. a SwinIR window)."""
    if not multiple or multiple <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # reflect needs pad < size; tiny inputs fall back to replicate rather than failing.
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _run(model: nn.Module, x: torch.Tensor, scale: int) -> torch.Tensor:
    y = model(x)
    h, w = x.shape[-2:]
    if y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[-2:] != (h * scale, w * scale):
        raise ValueError(
            f"model output shape {tuple(y.shape)} does not match input {tuple(x.shape)} "
            f"upscaled by scale={scale}; pass the model's scale")
    return y


def tiled_forward(model: nn.Module, lr: torch.Tensor, scale: int, tile: int | None = None,
                  overlap: int = 8, pad_multiple: int | None = None) -> torch.Tensor:
    """Upscale ``lr`` with ``model``, optionally tile by tile.

    Args:
        model: maps (B, 3, h, w) to (B, C, h*scale, w*scale); called under ``torch.no_grad``.
        lr: (3, h, w) or (B, 3, h, w) tensor in [0, 1], on the model's device.
        scale: upscaling factor of the model.
        tile: core tile size in LR pixels; None runs the whole image at once.
        overlap: LR pixels of context added on each side of a tile and cropped from its output.
            The result is exact when overlap >= the model's receptive radius (in LR pixels).
        pad_multiple: if set, the image is reflect-padded on the right/bottom to a multiple of
            it (e.g. 8 for SwinIR windows), tile windows are sized and placed on its grid, and
            the output is cropped back. Padding the whole image once (not each tile) keeps the
            tiled border identical to the untiled one.

    Returns:
        SR tensor (unclamped) of shape (B, C, h*scale, w*scale), or (C, ...) for a 3-D input.
    """
    if lr.dim() not in (3, 4):
        raise ValueError(f"lr must have shape (3, h, w) or (B, 3, h, w), got {tuple(lr.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if tile is not None and (not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be None or a positive int, got {tile!r}")
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"overlap must be a non-negative int, got {overlap!r}")
    if pad_multiple is not None and (not isinstance(pad_multiple, int) or pad_multiple < 1):
        raise ValueError(f"pad_multiple must be None or a positive int, got {pad_multiple!r}")
    squeeze = lr.dim() == 3
    x = lr.unsqueeze(0) if squeeze else lr
    h0, w0 = x.shape[-2:]
    x = _pad_to_multiple(x, pad_multiple)
    h, w = x.shape[-2:]
    m = pad_multiple or 1

    with torch.no_grad():
        if tile is None or (tile >= h and tile >= w):
            out = _run(model, x, scale)
        else:
            out = None
            for c0y, c1y, w0y, w1y in _windows(h, tile, overlap, m):
                for c0x, c1x, w0x, w1x in _windows(w, tile, overlap, m):
                    y = _run(model, x[..., w0y:w1y, w0x:w1x], scale)
                    if out is None:
                        out = y.new_empty(x.shape[0], y.shape[1], h * scale, w * scale)
                    oy, ox = (c0y - w0y) * scale, (c0x - w0x) * scale
                    out[..., c0y * scale:c1y * scale, c0x * scale:c1x * scale] = \
                        y[..., oy:oy + (c1y - c0y) * scale, ox:ox + (c1x - c0x) * scale]
    out = out[..., : h0 * scale, : w0 * scale]
    return out.squeeze(0) if squeeze else out
