"""Training HR images cut into overlapping sub-images once, cached (BasicSR's extract_subimages.py).

The official recipe trains on DIV2K_train_HR_sub: every 2K image cut into 480x480 sub-images with a step of 240
(thresh_size 0), and training crops drawn uniformly over the sub-images. That weighs each image by its number of
sub-images (about its area) and cuts every 400 px crop from a 480 px sub-image. This module reproduces the cut:
the same positions, in the same order (row-major, BasicSR's `_s001`, `_s002`, ...). BasicSR fails on an image
shorter than the sub-image size; here such an image is kept whole.

Cache: the sub-images of one source file are one .npy of shape (n, size, size, C) under
`<data.cache_dir>/subimages/`, named by the file's stem, a digest of its bytes and the three parameters, written
to a temporary name and renamed when complete. A second run (or a DDP rank, or a data loader worker) finds the
file and reads it memory-mapped; nothing is cut again. Disk: the sub-images overlap, so they take about 4x the
decoded images at step = size / 2 (DIV2K's 800 images: about 32.6k sub-images, 22.5 GB).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from src.data.imageio import read_image

SUBIMAGE_KEYS = ("size", "step", "thresh_size")


class SubImage(NamedTuple):
    """Sub-image `index` (0-based; BasicSR's file suffix is index + 1) of `source`, stored in `file`."""
    file: Path
    index: int
    source: Path

    @property
    def name(self) -> str:
        return f"{self.source.stem}_s{self.index + 1:03d}"


def positions(length: int, size: int, step: int, thresh_size: int = 0) -> list[int]:
    """Start offsets of the sub-images along one side: every `step` while a whole sub-image fits, then one flush
    with the far edge when more than `thresh_size` pixels would otherwise be left out. A side shorter than `size`
    gives none."""
    if length < size:
        return []
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > thresh_size:
        starts.append(length - size)
    return starts


def check_params(params: Mapping | None) -> tuple[int, int, int] | None:
    """(size, step, thresh_size) from the `data.subimages` node, or None when it is off; a clear error otherwise."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise ValueError(f"data.subimages={params!r}: must be null (off) or {{size: 480, step: 240, thresh_size: 0}}")
    extra = sorted(set(params) - set(SUBIMAGE_KEYS))
    if extra:
        raise ValueError(f"data.subimages has unknown key(s) {', '.join(extra)}; keys: {', '.join(SUBIMAGE_KEYS)}")
    values = {k: params.get(k, 0 if k == "thresh_size" else None) for k in SUBIMAGE_KEYS}
    for key, value in values.items():
        low = 0 if key == "thresh_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"data.subimages.{key}={value!r}: must be an integer >= {low} (the official recipe: "
                             f"size 480, step 240, thresh_size 0)")
    return values["size"], values["step"], values["thresh_size"]


def _content_key(path: Path) -> str:
    h = hashlib.blake2b(digest_size=10)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cut(path: Path, size: int, step: int, thresh_size: int, cache_dir: str | os.PathLike) -> list[SubImage]:
    """The sub-images of one image file, cut on first use and cached; [] when a side is shorter than `size`."""
    path = Path(path)
    out = Path(cache_dir) / "subimages" / f"{path.stem}-{_content_key(path)}-{size}-{step}-{thresh_size}.npy"
    if not out.exists():
        img = read_image(path)
        tops = positions(img.shape[0], size, step, thresh_size)
        lefts = positions(img.shape[1], size, step, thresh_size)
        if not tops or not lefts:
            return []
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        stack = np.lib.format.open_memmap(tmp, mode="w+", dtype=img.dtype,
                                          shape=(len(tops) * len(lefts), size, size, img.shape[2]))
        for i, (t, l) in enumerate((t, l) for t in tops for l in lefts):
            stack[i] = img[t:t + size, l:l + size]
        stack.flush()
        del stack
        os.replace(tmp, out)
    n = np.load(out, mmap_mode="r").shape[0]
    return [SubImage(out, i, path) for i in range(n)]


def cut_all(paths: list[Path], params: Mapping | None, cache_dir: str | os.PathLike | None) -> list:
    """`paths` with each image replaced by its sub-images; images too small to cut are kept whole (with a
    warning). Off (`params` None): `paths` unchanged."""
    checked = check_params(params)
    if checked is None:
        return list(paths)
    if not cache_dir:
        raise ValueError("data.subimages needs data.cache_dir (the sub-images are cut once and kept there); "
                         "set data.cache_dir=<folder> or data.subimages=null")
    items, whole = [], []
    for p in paths:
        subs = cut(p, *checked, cache_dir)
        items.extend(subs or [p])
        if not subs:
            whole.append(p)
    if whole:
        warnings.warn(f"data.subimages: {len(whole)} image(s) smaller than {checked[0]} px on a side are used whole: "
                      f"{', '.join(p.name for p in whole[:10])}")
    return items
