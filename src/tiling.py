"""Tiled super-resolution forward pass for images too large to upscale in one go.

Each tile is run with ``overlap`` LR pixels of real image context on every side, and only its
core region is kept (no blending). For a convolutional network whose receptive radius is at most
``overlap`` LR pixels this reproduces the untiled output exactly, up to float rounding.
"""
from __future__ import annotations

import os
import sys

import numpy as np
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


def pad_to_multiple(x: torch.Tensor, multiple: int | None) -> torch.Tensor:
    """Pad right/bottom so H and W are multiples of ``multiple`` (e.g. a SwinIR window), by reflection.

    The one padding rule of the suite (tiling, evaluation, inference, SwinIR's forward, the ONNX graph). It
    pads by zero px rather than branching when the sides already fit, so a traced graph stays valid for every
    input size; inputs too small to reflect fall back to replicate.
    """
    if not multiple or multiple <= 1:
        return x
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
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
    x = pad_to_multiple(x, pad_multiple)
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


# ------------------------------------------------------------------------------------------------ bounded images


def _proc_kib(path: str, field: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # absent, or "max": no limit


def _limits_left() -> list[int]:
    """Bytes this process may still take under its own limits: its container's memory cgroup (v2, else v1) and
    RLIMIT_AS (`ulimit -v`, counted against the address space it already maps)."""
    import resource

    left = []
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # v1 writes "no limit" as a huge number
            left.append(max(cap - used, 0))
            break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _proc_kib("/proc/self/status", "VmSize:")
    if soft != resource.RLIM_INFINITY and mapped is not None:
        left.append(max(soft - mapped, 0))
    return left


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for a forward pass on `device`: CUDA's free memory, else the least of the host's MemAvailable
    and what the process's limits leave it (see `_limits_left`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    host = _proc_kib("/proc/meminfo", "MemAvailable:")
    if host is None:
        host = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min([host, *_limits_left()])


def bytes_per_pixel(model: nn.Module, device: torch.device | str = "cpu", multiple: int = 1, probe: int = 32) -> float:
    """Working memory of a forward pass per LR input pixel, from a probe: 3x the largest activation.

    Three, because a layer's input and output are alive together and some layers (pixel shuffle, attention)
    need one temporary of that size; convolutional SR networks' activations grow linearly with the pixel count.
    """
    probe = -(-probe // multiple) * multiple
    sizes = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, probe, probe, device=device))
    finally:
        for h in handles:
            h.remove()
    return 3 * max(sizes, default=4 * 3) / (probe * probe)


TILE_CHOICES = (2048, 1024, 512, 256, 128, 64, 32)


def plan_tile(model: nn.Module, h: int, w: int, tile: int | None, overlap: int, device="cpu",
              multiple: int = 1, budget: float = 0.5) -> tuple[int | None, str | None]:
    """(tile to use, note or None): `tile` itself, or the largest of TILE_CHOICES that fits in `budget` x the
    free memory when an untiled pass would not. Raises a ValueError (with the numbers) if even the smallest is too big.
    """
    if tile is not None:
        return tile, None
    per_px = bytes_per_pixel(model, device, multiple)
    free = available_bytes(device) * budget
    if per_px * h * w <= free:
        return None, None
    for t in TILE_CHOICES:
        if t < max(h, w) and per_px * (t + 2 * overlap + multiple) ** 2 <= free:
            return t, (f"a {w}x{h} px image needs ~{per_px * h * w / 2**30:.1f} GiB untiled, more than half the "
                       f"{free / budget / 2**30:.1f} GiB free on {torch.device(device).type}: upscaling in tiles of "
                       f"{t} px (set tile= to choose)")
    t = TILE_CHOICES[-1]
    raise ValueError(f"a {w}x{h} px image needs ~{per_px * (t + 2 * overlap + multiple) ** 2 / 2**20:.0f} MiB per "
                     f"{t} px tile, more than half of the {free / budget / 2**20:.0f} MiB free on "
                     f"{torch.device(device).type}: free memory or use a smaller overlap=")


def upscale_image(model: nn.Module, img: np.ndarray, scale: int, tile: int | None = None, overlap: int = 8,
                  pad_multiple: int | None = None, device: torch.device | str = "cpu", progress: bool = False,
                  bgr: bool = False, desc: str = "tiles") -> np.ndarray:
    """uint8 or uint16 (H, W, 3) RGB -> the same dtype (sH, sW, 3), clamped and rounded, tile by tile.

    Each tile's result is rounded into the integer output array as soon as it is computed, so the peak memory
    is the input and output images (integers) plus one tile's float activations; no float copy of the whole
    output exists. The tiles, overlap and padding are those of `tiled_forward`, so the result equals the
    untiled pass's (clamped, rounded) wherever `tiled_forward` does. `bgr` stores the channels reversed (what
    OpenCV writes). A progress bar over tiles shows when `progress` and stderr is a terminal.
    """
    from tqdm import tqdm

    if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"img must be a uint8/uint16 (H, W, 3) array, got {img.dtype} {img.shape}")
    if tile is not None and (not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be None or a positive int, got {tile!r}")
    maxval = 255.0 if img.dtype == np.uint8 else 65535.0
    h0, w0 = img.shape[:2]
    m = pad_multiple or 1
    ph, pw = (m - h0 % m) % m, (m - w0 % m) % m
    if ph or pw:  # as pad_to_multiple does, on the integer image: reflect, or replicate when too small
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h0 and pw < w0 else "edge")
    h, w = img.shape[:2]
    if tile is None or (tile >= h and tile >= w):
        rows, cols = [(0, h, 0, h)], [(0, w, 0, w)]
    else:
        rows, cols = _windows(h, tile, overlap, m), _windows(w, tile, overlap, m)
    out = np.empty((h0 * scale, w0 * scale, 3), dtype=img.dtype)
    show = progress and len(rows) * len(cols) > 1 and sys.stderr.isatty()
    bar = tqdm(total=len(rows) * len(cols), desc=desc, unit="tile", leave=False, disable=not show, file=sys.stderr)
    with torch.no_grad():
        for c0y, c1y, w0y, w1y in rows:
            for c0x, c1x, w0x, w1x in cols:
                # cores past the original image (padding) are not kept
                e1y, e1x = min(c1y, h0), min(c1x, w0)
                if c0y >= e1y or c0x >= e1x:
                    bar.update()
                    continue
                x = torch.from_numpy(np.array(img[w0y:w1y, w0x:w1x]))  # a copy: the image may be a read-only map
                x = x.to(device).permute(2, 0, 1)[None].float().div_(maxval)
                y = _run(model, x, scale)[0]
                oy, ox = (c0y - w0y) * scale, (c0x - w0x) * scale
                y = y[:, oy:oy + (e1y - c0y) * scale, ox:ox + (e1x - c0x) * scale]
                if bgr:  # a slice, not an index list: the RGB case makes no float copy of the output
                    y = y.flip(0)
                y = y.clamp_(0, 1).mul_(maxval).round_().to(torch.int32 if maxval > 255 else torch.uint8)
                out[c0y * scale:e1y * scale, c0x * scale:e1x * scale] = y.permute(1, 2, 0).cpu().numpy()
                bar.update()
    bar.close()
    return out
