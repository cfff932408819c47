"""Upscale images with a trained model: `python -m src.infer ckpt=<path> input=<image|folder> output=<folder>`.

Every input becomes `<output>/<stem>.png`. 8-bit inputs give 8-bit PNGs; 16-bit PNG/TIFF inputs are fed to
the model at full precision and written as 16-bit PNGs, so no precision is thrown away on either side. Gray
inputs are replicated to RGB and alpha is dropped (as the rest of the suite reads images); the output is RGB.
A file that cannot be read is reported by path and skipped; the exit status is 1 if any file failed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.data.imageio import IMAGE_SUFFIXES, decode_image, to_rgb_uint8, write_image
from src.models.loading import model_scale
from src.models.loading import pad_multiple as model_pad_multiple
from src.tiling import TILE_CHOICES, bytes_per_pixel, plan_tile, tiled_forward, upscale_image
from src.utils import resolve_device


@dataclass
class InferenceSummary:
    written: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    def line(self, out_dir: Path) -> str:
        total = len(self.written) + len(self.failed)
        return f"upscaled {len(self.written)}/{total} images into {out_dir}" + (
            f"; {len(self.failed)} failed: {', '.join(map(str, self.failed))}" if self.failed else "")


def read_pixels(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(uint8 or uint16 (H, W, 3) RGB as stored, bit depth 8 or 16); raises ImageReadError naming the path."""
    img = decode_image(path)
    if img.dtype == np.uint16:
        if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
            img = img[:, :, 0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        return np.ascontiguousarray(img[:, :, :3]), 16  # alpha dropped
    return to_rgb_uint8(img, str(path)), 8


def read_input(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float32 (H, W, 3) RGB in [0, 1], bit depth 8 or 16); raises ImageReadError naming the path."""
    img, depth = read_pixels(path)
    return img.astype(np.float32) / (65535.0 if depth == 16 else 255.0), depth


def upscale(model: nn.Module, img: np.ndarray, scale: int, device: torch.device | str = "cpu",
            tile: int | None = None, overlap: int = 8, pad_multiple: int | None = None) -> np.ndarray:
    """float (H, W, 3) in [0, 1] -> float (sH, sW, 3) clamped to [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(device)
    y = tiled_forward(model, x, scale, tile=tile, overlap=overlap, pad_multiple=pad_multiple)
    return y[0].clamp_(0, 1).permute(1, 2, 0).float().cpu().numpy()


def gather_inputs(input_path: str | os.PathLike) -> list[Path]:
    """A single file, or the image files of a folder (sorted; non-image suffixes ignored)."""
    p = Path(input_path)
    if p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"input={p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return paths
    if not p.exists():
        raise FileNotFoundError(f"input={p} does not exist (give an image file or a folder of images)")
    return [p]


def output_paths(inputs: list[Path], out_dir: Path) -> dict[Path, Path]:
    """`<stem>.png`, or `<stem>_<ext>.png` where two inputs share a stem; refuses to overwrite an input."""
    stems = [p.stem for p in inputs]
    out = {p: out_dir / (f"{p.stem}_{p.suffix[1:].lower()}.png" if stems.count(p.stem) > 1 else f"{p.stem}.png")
           for p in inputs}
    resolved_inputs = {p.resolve() for p in inputs}
    clash = [str(o) for o in out.values() if o.resolve() in resolved_inputs]
    if clash:
        raise ValueError(f"output={out_dir}: writing would overwrite input images {clash}; choose another folder")
    return out


def out_of_memory(error: BaseException) -> bool:
    """An allocation failure: CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError
    (what a cgroup or `ulimit -v` limit produces)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in ("can't allocate memory", "out of memory")))


def oom_message(model: nn.Module, path: Path, shape: tuple[int, int] | None, tile: int | None, device,
                pad_multiple: int) -> str:
    """What to tell about an image whose upscaling ran out of memory: how much it needs, and a tile= to pass."""
    smaller = max(TILE_CHOICES[-1], tile // 2) if tile else 256
    if shape is None:  # failed while reading the image
        return f"{path}: out of memory reading it; free memory and run again"
    h, w = shape
    need = bytes_per_pixel(model, device, pad_multiple or 1) * h * w
    tried = f" (tiles of {tile} px were too large too)" if tile else ""
    return (f"{path}: out of memory: this {w}x{h} px image needs ~{need / 2**30:.1f} GB untiled{tried}; pass "
            f"tile={smaller} (or smaller) to upscale it in tiles")


def run_inference(model: nn.Module, inputs: list[Path], out_dir: str | os.PathLike, device="cpu",
                  tile: int | None = None, overlap: int = 8, pad_multiple: int | None = None,
                  progress: bool = True) -> InferenceSummary:
    """Upscale every input into `out_dir`; failures are collected (path -> message), never raised.

    Memory stays bounded: tiles are rounded straight into an 8/16-bit output, and an image too large for one
    pass (on this device's free memory) is tiled automatically, with a note.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    targets = output_paths(inputs, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    scale = model_scale(model)
    if pad_multiple is None:  # window-attention models (SwinIR) need inputs a multiple of their window
        pad_multiple = model_pad_multiple(model)
    summary = InferenceSummary()
    show = progress and sys.stderr.isatty()
    bar = tqdm(inputs, desc="upscaling", unit="img", disable=not show, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.name)
        shape, use = None, tile
        try:
            img, _ = read_pixels(path)
            shape = img.shape[:2]
            use, note = plan_tile(model, img.shape[0], img.shape[1], tile, overlap, device, pad_multiple)
            if note:
                bar.write(f"{path.name}: {note}", file=sys.stderr)
            out = upscale_image(model, img, scale, use, overlap, pad_multiple, device, progress=show, bgr=True,
                                desc=path.name)
            del img
            write_image(targets[path], out, bgr=True)
            summary.written.append(targets[path])
        except Exception as e:  # noqa: BLE001 - one bad image (unreadable, too big, a model error) never stops a folder
            if out_of_memory(e):
                img = out = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                summary.failed[path] = oom_message(model, path, shape, use, device, pad_multiple)
                bar.write(f"error: {summary.failed[path]}", file=sys.stderr)
                continue
            # ImageReadError and our ValueErrors name the path; anything else gets it prepended
            summary.failed[path] = str(e) if str(path) in str(e) else f"{path}: {type(e).__name__}: {e}"
            bar.write(f"error: {summary.failed[path]}", file=sys.stderr)
    return summary


def main(cfg) -> int:
    from hydra.utils import to_absolute_path

    from src.models.loading import load_for_tool

    for key in ("ckpt", "input", "output"):
        if cfg.get(key) in (None, "", "???"):
            raise ValueError(f"{key}=... is required: python -m src.infer ckpt=<path> input=<image|folder> "
                             f"output=<folder>")
    device = resolve_device(str(cfg.device))
    loaded = load_for_tool(to_absolute_path(cfg.ckpt), cfg.get("backbone"), device)
    out_dir = Path(to_absolute_path(cfg.output))
    summary = run_inference(loaded.model, gather_inputs(to_absolute_path(cfg.input)), out_dir, device, cfg.tile,
                            cfg.overlap, cfg.pad_multiple, progress=cfg.progress)
    print(summary.line(out_dir))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    import hydra

    from src.cli import one_line_errors, run

    @hydra.main(config_path="../conf", config_name="infer", version_base="1.3")
    @one_line_errors("infer")
    def _entry(cfg) -> None:
        code = main(cfg)
        if code:
            sys.exit(code)

    run(_entry, "infer")  # errors as one line naming the key (the traceback with HYDRA_FULL_ERROR=1)
