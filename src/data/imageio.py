"""Reading and writing images the way SR benchmarks expect: 8-bit RGB arrays."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from src.utils import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that cannot be decoded (missing, truncated, not an image)."""


def to_rgb_uint8(img: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Convert gray, gray+alpha, RGBA and 16-bit arrays to uint8 (H, W, 3) RGB, as SR test code does.

    Gray is replicated to three channels and alpha is dropped (benchmark images are opaque); 16-bit data is
    scaled by 255/65535 and rounded, which is what saving a 16-bit image as 8-bit does.
    """
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{source}: unsupported pixel type {img.dtype}; expected 8- or 16-bit integers")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"{source}: unsupported image shape {img.shape}")
    if img.shape[2] in (1, 2):
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """The file's pixels as stored (8- or 16-bit, gray/RGB/RGBA, channels in RGB(A) order); raises ImageReadError."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({e.strerror or e})") from e
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (empty, truncated or unknown format)")
    if img.ndim == 3 and img.shape[2] >= 3:
        # OpenCV decodes to BGR(A); the rest of the suite is RGB.
        img = img[:, :, [2, 1, 0] + list(range(3, img.shape[2]))]
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; raise ImageReadError naming the path if it cannot be decoded."""
    return to_rgb_uint8(decode_image(path), str(path))


def write_image(path: str | os.PathLike, img: np.ndarray, bgr: bool = False) -> Path:
    """Write a (H, W, 3) RGB or (H, W) gray uint8/uint16 array; the format follows the suffix. Atomic.

    `bgr=True`: the array is already in OpenCV's channel order, which saves a copy of a large image.
    """
    path = Path(path)
    if img.ndim == 3 and not bgr:
        img = img[:, :, ::-1]
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(img))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode an image of shape {img.shape} as {path.suffix}")
    return atomic_write_bytes(path, buf.tobytes())
