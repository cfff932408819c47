"""The paper's 8 test degradations (Table 1), computed on uint8 (H, W, 3) RGB images and cached on disk.

b = Gaussian blur (21 x 21 kernel, sigma 2), then MATLAB-style bicubic x`scale` downscale (always), then
n = Gaussian noise (sigma 20 on the 0-255 scale), then j = JPEG quality 50 (OpenCV's encoder, 4:2:0), applied in
that order; `clean` is the bicubic alone. Every step is rounded to 8 bits, as if the image were saved in between.
The noise is seeded per (seed, image content, degradation), so every model in a sweep sees the same LR inputs,
in any process, whatever the file is called.

    python -m src.data.testsets <set_dir> <out_dir> [--scale 4] [--seed 0] [--degradations clean,blur,...]

writes <out_dir>/HR/<stem>.png (modcropped) and <out_dir>/<degradation>/<stem>.png for other tools.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.data.imageio import ImageReadError, read_image, write_image

TEST_DEGRADATIONS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
TEST_PARAMS = {"blur_kernel_size": 21, "blur_sigma": 2.0, "noise_sigma": 20.0, "jpeg_quality": 50}
# Bump when the output of degrade_test_image changes, so stale cached LR images are not reused.
CODE_VERSION = 1

_STEPS = {"clean": (), "blur": ("b",), "noise": ("n",), "jpeg": ("j",)}


def steps_of(name: str) -> tuple[str, ...]:
    """The components ('b', 'n', 'j') of a test degradation name."""
    if name in _STEPS:
        return _STEPS[name]
    parts = tuple(name.split("+"))
    if name not in TEST_DEGRADATIONS:
        raise ValueError(f"unknown test degradation {name!r}; allowed: {', '.join(TEST_DEGRADATIONS)}")
    return parts


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of scale."""
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    if h == 0 or w == 0:
        raise ValueError(f"image of size {img.shape[:2]} is smaller than scale {scale}")
    return img[:h, :w]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, size: int = 21, sigma: float = 2.0) -> np.ndarray:
    """Isotropic Gaussian blur with a size x size kernel, reflect-101 borders (as BasicSR's filter2D)."""
    ax = np.arange(size) - (size - 1) / 2
    k1 = np.exp(-(ax**2) / (2 * sigma**2))
    kernel = np.outer(k1, k1)
    kernel /= kernel.sum()
    out = cv2.filter2D(img.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(out)


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB imresize(img, 1/scale, 'bicubic') (antialiased cubic, a = -0.5) on a modcropped uint8 image."""
    img = modcrop(img, scale)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(img.shape[0] // scale, img.shape[1] // scale), mode="bicubic",
                      align_corners=False, antialias=True)
    return _to_uint8(y[0].permute(1, 2, 0).numpy())


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent N(0, sigma) noise per pixel and channel on the 0-255 scale."""
    return _to_uint8(img.astype(np.float64) + rng.standard_normal(img.shape) * sigma)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode with OpenCV's JPEG encoder (libjpeg defaults, 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {img.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def _content_digest(img: np.ndarray) -> bytes:
    h = hashlib.sha256(f"{img.shape}|{img.dtype}".encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.digest()


def noise_rng(hr: np.ndarray, name: str, seed: int) -> np.random.Generator:
    """The generator for one (image content, degradation, seed): stable across processes and platforms."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    words = np.frombuffer(hashlib.sha256(_content_digest(hr) + name.encode()).digest()[:16], dtype="<u4")
    return np.random.default_rng([int(seed), *map(int, words)])


def degrade_test_image(hr: np.ndarray, name: str, scale: int = 4, seed: int = 0) -> np.ndarray:
    """The LR image of test degradation `name` for a uint8 (H, W, 3) RGB HR image (modcropped first)."""
    steps = steps_of(name)
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f"hr must be a uint8 (H, W, 3) array, got {hr.dtype} {hr.shape}")
    hr = modcrop(hr, scale)
    p = TEST_PARAMS
    img = gaussian_blur(hr, p["blur_kernel_size"], p["blur_sigma"]) if "b" in steps else hr
    img = bicubic_downscale(img, scale)
    if "n" in steps:
        img = add_gaussian_noise(img, p["noise_sigma"], noise_rng(hr, name, seed))
    if "j" in steps:
        img = jpeg_compress(img, p["jpeg_quality"])
    return img


def cache_key(name: str, scale: int, seed: int) -> str:
    """Folder name for cached LR images: everything that changes their content is in the hash."""
    spec = {"name": name, "steps": steps_of(name), "params": TEST_PARAMS, "scale": scale, "seed": seed,
            "version": CODE_VERSION, "opencv": cv2.__version__.split(".")[0]}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}_x{scale}_s{seed}_{digest}"


def load_test_pairs(paths: Iterable[str | os.PathLike], name: str, scale: int = 4, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """[(path, modcropped HR uint8, LR uint8)] for test degradation `name`.

    With cache_dir, each LR image is computed once and kept as
    <cache_dir>/<cache_key>/<stem>-<content hash>.png; an unreadable or wrongly sized cached file is recomputed.
    """
    steps_of(name)
    folder = Path(cache_dir) / cache_key(name, scale, seed) if cache_dir is not None else None
    pairs = []
    for path in map(Path, paths):
        hr = modcrop(read_image(path), scale)
        lr = None
        if folder is not None:
            cached = folder / f"{path.stem}-{_content_digest(hr).hex()[:12]}.png"
            if cached.exists():
                try:
                    lr = read_image(cached)
                except ImageReadError:
                    lr = None
                if lr is not None and lr.shape != (hr.shape[0] // scale, hr.shape[1] // scale, 3):
                    lr = None
        if lr is None:
            lr = degrade_test_image(hr, name, scale, seed)
            if folder is not None:
                write_image(cached, lr)
        pairs.append((path, hr, lr))
    return pairs


def write_degraded_set(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, scale: int = 4,
                       seed: int = 0, degradations: Sequence[str] = TEST_DEGRADATIONS,
                       cache_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Write <out_dir>/HR/<stem>.png and <out_dir>/<degradation>/<stem>.png; return images written per folder."""
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    for path in paths:
        write_image(out_dir / "HR" / f"{path.stem}.png", modcrop(read_image(path), scale))
    counts = {"HR": len(paths)}
    for name in degradations:
        for path, _, lr in load_test_pairs(paths, name, scale, seed, cache_dir):
            write_image(out_dir / name / f"{path.stem}.png", lr)
        counts[name] = len(paths)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    from src.data.datasets import list_images

    ap = argparse.ArgumentParser(prog="python -m src.data.testsets", description=__doc__.split("\n\n")[0])
    ap.add_argument("set_dir", help="folder of HR images, or a dataset folder holding HR/")
    ap.add_argument("out_dir", help="where the HR/ and <degradation>/ folders of PNGs go")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degradations", default=",".join(TEST_DEGRADATIONS),
                    help=f"comma-separated subset of {','.join(TEST_DEGRADATIONS)}")
    args = ap.parse_args(argv)
    names = [n for n in args.degradations.split(",") if n]
    bad = [n for n in names if n not in TEST_DEGRADATIONS]
    if bad or not names:
        ap.error(f"--degradations: unknown {bad or names}; allowed: {','.join(TEST_DEGRADATIONS)}")
    set_dir = Path(args.set_dir)
    paths = list_images(set_dir / "HR" if (set_dir / "HR").is_dir() else set_dir)
    counts = write_degraded_set(paths, args.out_dir, args.scale, args.seed, names)
    for folder, n in counts.items():
        print(f"{Path(args.out_dir) / folder}: {n} images")


if __name__ == "__main__":
    main()
