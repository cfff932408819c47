"""The paper's 8 test degradations (Table 1) under two protocols, computed on uint8 images and cached on disk.

Protocols (`protocol=`):

- ``literature`` (default): the SR literature's convention. b = Gaussian blur (21 x 21 kernel, sigma 2), then
  MATLAB-style bicubic x`scale` downscale (always), then n = Gaussian noise (sigma 20 on the 0-255 scale), then
  j = JPEG quality 50 (OpenCV's encoder, 4:2:0), applied in that order on (H, W, 3) RGB; `clean` is the bicubic
  alone. Every step is rounded to 8 bits, as if the image were saved in between. Gray images are replicated to
  RGB first.
- ``official``: the steps of the paper's own script (``dataset/add_degradations.py`` of the official repository,
  after its 2024 fix of the noise level): ``cv2.GaussianBlur`` 21 x 21, sigma 2 on the uint8 HR; PIL
  ``Image.resize((w // scale, h // scale), BICUBIC)``; Gaussian noise of sigma 20/255 on [0, 1] (float32 image),
  clipped, then ``astype(uint8)`` of x * 255 (truncation); PIL JPEG quality 50, decoded as RGB. A gray image stays
  single-channel through it (only JPEG turns it into RGB), as there.

The noise is seeded per (seed, image content, degradation), so every model in a sweep sees the same LR inputs,
in any process, whatever the file is called (the official script leaves it unseeded).

    python -m src.data.testsets <set> <out_dir> [protocol=literature|official] [scale=4] [seed=0]

writes <out_dir>/HR/<stem>.png (modcropped) and <out_dir>/<degradation>/<stem>.png for other tools.

Unseen degradations (`UNSEEN_DEGRADATIONS`), for the paper's claim that dropout helps on degradations the
training never drew (Fig. 2d, Table 2). Each is absent from Real-ESRGAN's training distribution (the `realesrgan`
pipeline: Gaussian-family/plateau/sinc blurs, area/bilinear/bicubic resizes, Gaussian/Poisson noise, JPEG q 30-95):

- ``nearest``: nearest-neighbour x`scale` downsampling, LR[i, j] = HR[scale*i + scale//2, scale*j + scale//2]
  (MATLAB's and PIL's nearest at 1/scale pick these pixels); Real-ESRGAN never resizes with nearest (Fig. 2d).
- ``motion``: a horizontal linear motion blur, the uniform 1 x 21 kernel (1/21 each, a 21 px straight path) on
  the HR, then the protocol's bicubic. Real-ESRGAN's kernels are 2-D Gaussian-like, plateau or sinc with both
  sigmas >= 0.2 px; a one-pixel-wide box path is none of them.
- ``jpeg15``: the protocol's bicubic, then JPEG quality 15 (the protocol's encoder), below the q 30-95 both
  orders of Real-ESRGAN draw from.
- ``impulse``: the protocol's bicubic, then salt-and-pepper noise of density 0.05: each LR pixel (all channels
  together) becomes black with probability 0.025 and white with probability 0.025, from the same per-image
  seeded generator as the Gaussian noise; Real-ESRGAN draws only Gaussian and Poisson noise.

The same definitions hold under both protocols; only the bicubic (MATLAB or PIL) and the JPEG encoder (OpenCV or
PIL) are the protocol's, and under `official` a gray image stays gray as for the 8.

Test sets can also bring their own LR images (NTIRE 2018 mild/difficult/wild, RealSR-style pairs): a folder of
LR files matched to the HR files by name (`baby.png`, `babyx4.png` or `0801x4m.png` for HR `0801.png`), evaluated
as the degradation `given` (`load_given_pairs`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

from src import seeding
from src.data.imageio import (IMAGE_SUFFIXES, ImageReadError, decode_image, read_image, to_rgb_uint8,
                              write_image)

TEST_DEGRADATIONS = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
UNSEEN_DEGRADATIONS = ("nearest", "motion", "jpeg15", "impulse")
ALL_TEST_DEGRADATIONS = TEST_DEGRADATIONS + UNSEEN_DEGRADATIONS
GIVEN = "given"  # the degradation name of a test set's own LR images
PROTOCOLS = ("literature", "official")
TEST_PARAMS = {"blur_kernel_size": 21, "blur_sigma": 2.0, "noise_sigma": 20.0, "jpeg_quality": 50}
# Kept apart from TEST_PARAMS so that adding the unseen set left the cache keys of the 8 unchanged.
UNSEEN_PARAMS = {"motion_length": 21, "jpeg_quality": 15, "impulse_density": 0.05}
# Bump when the output of degrade_test_image changes, so stale cached LR images are not reused.
CODE_VERSION = 3

_STEPS = {"clean": (), "blur": ("b",), "noise": ("n",), "jpeg": ("j",)}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is unknown; allowed: {', '.join(PROTOCOLS)}")
    return protocol


def steps_of(name: str) -> tuple[str, ...]:
    """The components ('b', 'n', 'j') of a test degradation name."""
    if name in _STEPS:
        return _STEPS[name]
    if name in UNSEEN_DEGRADATIONS:  # one step each, not a combination of b, n, j
        return (name,)
    parts = tuple(name.split("+"))
    if name not in TEST_DEGRADATIONS:
        raise ValueError(f"unknown test degradation {name!r}; allowed: {', '.join(ALL_TEST_DEGRADATIONS)}")
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


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5, as MATLAB's imresize."""
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    return ((1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights, 0-based source indices), each (n_out, taps): MATLAB imresize's `contributions`.

    When shrinking, the kernel is stretched by 1/scale (antialiasing); sources beyond the edge are mirrored
    (symmetric padding: ... 2 1 | 1 2 ... n | n n-1 ...) and taps whose weight is zero for every output dropped.
    """
    width = 4.0
    if scale < 1:
        kernel, width = (lambda t: scale * _cubic(scale * t)), width / scale
    else:
        kernel = _cubic
    u = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based source positions
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None]
    weights = kernel(u[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


def matlab_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's `imresize(img, scale, 'bicubic')` of a uint8 (H, W) or (H, W, C) image, borders included.

    Rows are resized first, then columns, in float64 (no rounding in between, as MATLAB does for uint8), and the
    result is rounded half away from zero and saturated to uint8. The output is ceil(H * scale) x ceil(W * scale).
    Bit-exact against MATLAB's Set5 LR images at x3 and x4 (at x2, where sums fall exactly on .5, ~1 pixel in
    10^4 differs by one grey level: MATLAB sums in another order).
    """
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"matlab_imresize: expected a uint8 (H, W) or (H, W, C) array, got {img.dtype} {img.shape}")
    out = img.astype(np.float64)
    for axis in (0, 1):
        n_in = out.shape[axis]
        weights, idx = _contributions(n_in, int(np.ceil(n_in * scale)), scale)
        # as one (n_out, n_in) matrix (mirrored taps add up), applied with a matrix product along `axis`
        matrix = np.zeros((weights.shape[0], n_in))
        np.add.at(matrix, (np.arange(weights.shape[0])[:, None], idx), weights)
        out = np.moveaxis(np.tensordot(matrix, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB imresize(img, 1/scale, 'bicubic') (antialiased cubic, a = -0.5) of a modcropped uint8 image."""
    return matlab_imresize(modcrop(img, scale), 1 / scale)


def bicubic_upscale(img: np.ndarray, scale: int, protocol: str = "literature") -> np.ndarray:
    """The protocol's bicubic enlargement of a uint8 image by `scale`: MATLAB imresize (literature) or PIL's
    `Image.resize(..., BICUBIC)` (official)."""
    if check_protocol(protocol) == "official":
        return pil_bicubic_resize(img, (img.shape[1] * scale, img.shape[0] * scale))
    return matlab_imresize(img, scale)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent N(0, sigma) noise per pixel and channel on the 0-255 scale."""
    return _to_uint8(img.astype(np.float64) + rng.standard_normal(img.shape) * sigma)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode with OpenCV's JPEG encoder (libjpeg defaults, 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {img.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def nearest_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour downscale of a modcropped uint8 image: the pixel at (scale*i + scale//2, scale*j +
    scale//2) of each scale x scale cell, which is what MATLAB's `imresize(img, 1/scale, 'nearest')` and PIL's
    `resize(..., NEAREST)` pick (OpenCV's INTER_NEAREST picks the cell's corner instead).

    Example:
        >>> nearest_downscale(np.arange(16, dtype=np.uint8).reshape(4, 4), 2).tolist()
        [[5, 7], [13, 15]]
    """
    img = modcrop(img, scale)
    return np.ascontiguousarray(img[scale // 2::scale, scale // 2::scale])


def motion_blur(img: np.ndarray, length: int = UNSEEN_PARAMS["motion_length"]) -> np.ndarray:
    """Horizontal linear motion blur: the mean of `length` (odd) horizontally adjacent pixels centred on each
    pixel, reflect-101 borders, computed in float and rounded to uint8 as the Gaussian test blur is."""
    if length < 1 or length % 2 == 0:
        raise ValueError(f"motion blur length must be a positive odd integer, got {length}")
    kernel = np.full((1, length), 1.0 / length)
    out = cv2.filter2D(img.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(out)


def impulse_noise(img: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise: one uniform draw u per pixel (shared by its channels); u < density/2 makes the pixel
    0, u >= 1 - density/2 makes it 255, the rest is kept."""
    if not 0 <= density <= 1:
        raise ValueError(f"impulse noise density must be in [0, 1], got {density}")
    u = rng.random(img.shape[:2])
    out = img.copy()
    out[u < density / 2] = 0
    out[u >= 1 - density / 2] = 255
    return out


# --- the official script's steps (PIL + OpenCV), on uint8 (H, W) gray or (H, W, 3) RGB ------------------------
def official_blur(img: np.ndarray) -> np.ndarray:
    """cv2.GaussianBlur(img, (21, 21), 2) on the uint8 image, as the official script (OpenCV's 8-bit path)."""
    k = TEST_PARAMS["blur_kernel_size"]
    return cv2.GaussianBlur(np.ascontiguousarray(img), (k, k), TEST_PARAMS["blur_sigma"])


def pil_bicubic_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL `Image.resize((w, h), BICUBIC)` of a uint8 gray or RGB array; `size` is (width, height)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.BICUBIC))


def official_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official script's Gaussian noise: float32 [0, 1] image + N(0, 20/255), clipped, x255 truncated.

    The noise is drawn in the script's (C, H, W) layout (one channel for a gray image).
    """
    chw = img.transpose(2, 0, 1) if img.ndim == 3 else img[None]
    x = chw.astype(np.float32) / 255.0
    noisy = np.clip(x + rng.standard_normal(x.shape) * (TEST_PARAMS["noise_sigma"] / 255.0), 0, 1)
    # float32 before the x255 and astype's truncation, as there: a -0.5 grey-level bias
    out = np.clip(noisy.astype(np.float32) * 255, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0) if img.ndim == 3 else out[0])


def pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Save with PIL as JPEG at `quality`, reopen and convert to RGB (so a gray image comes back as RGB)."""
    with io.BytesIO() as f:
        Image.fromarray(np.ascontiguousarray(img)).save(f, format="JPEG", quality=int(quality))
        f.seek(0)
        return np.asarray(Image.open(f).convert("RGB"))


def _content_digest(img: np.ndarray) -> bytes:
    h = hashlib.sha256(f"{img.shape}|{img.dtype}".encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.digest()


def noise_rng(hr: np.ndarray, name: str, seed: int) -> np.random.Generator:
    """The generator for one (image content, degradation, seed): stable across processes and platforms."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    words = np.frombuffer(hashlib.sha256(_content_digest(hr) + name.encode()).digest()[:16], dtype="<u4")
    return seeding.numpy_rng(int(seed), "test_noise", key=[int(w) for w in words])


def _check_hr(hr: np.ndarray, protocol: str) -> None:
    gray_ok = protocol == "official" and hr.ndim == 2
    if hr.dtype != np.uint8 or not (gray_ok or (hr.ndim == 3 and hr.shape[2] == 3)):
        allowed = "(H, W) gray or (H, W, 3) RGB" if protocol == "official" else "(H, W, 3) RGB"
        raise ValueError(f"hr must be a uint8 {allowed} array for protocol={protocol}, got {hr.dtype} {hr.shape}")


def degrade_test_image(hr: np.ndarray, name: str, scale: int = 4, seed: int = 0,
                       protocol: str = "literature") -> np.ndarray:
    """The LR image of test degradation `name` for a uint8 HR image (modcropped first).

    `literature`: (H, W, 3) RGB in, (h, w, 3) out. `official`: (H, W) gray or (H, W, 3) RGB in; the LR is what the
    official script saves: gray stays (h, w) except after JPEG, which returns RGB.
    """
    check_protocol(protocol)
    steps = steps_of(name)
    _check_hr(hr, protocol)
    hr = modcrop(hr, scale)
    if name in UNSEEN_DEGRADATIONS:
        return _degrade_unseen(hr, name, scale, seed, protocol)
    p = TEST_PARAMS
    if protocol == "official":
        img = official_blur(hr) if "b" in steps else hr
        img = pil_bicubic_resize(img, (hr.shape[1] // scale, hr.shape[0] // scale))
        if "n" in steps:
            img = official_noise(img, noise_rng(hr, name, seed))
        if "j" in steps:
            img = pil_jpeg(img, p["jpeg_quality"])
        return img
    img = gaussian_blur(hr, p["blur_kernel_size"], p["blur_sigma"]) if "b" in steps else hr
    img = bicubic_downscale(img, scale)
    if "n" in steps:
        img = add_gaussian_noise(img, p["noise_sigma"], noise_rng(hr, name, seed))
    if "j" in steps:
        img = jpeg_compress(img, p["jpeg_quality"])
    return img


def _degrade_unseen(hr: np.ndarray, name: str, scale: int, seed: int, protocol: str) -> np.ndarray:
    """One of UNSEEN_DEGRADATIONS on a modcropped HR; the bicubic and the JPEG encoder are the protocol's."""
    if name == "nearest":
        return nearest_downscale(hr, scale)
    official = protocol == "official"

    def bicubic(img):
        return pil_bicubic_resize(img, (hr.shape[1] // scale, hr.shape[0] // scale)) if official \
            else bicubic_downscale(img, scale)

    p = UNSEEN_PARAMS
    if name == "motion":
        return bicubic(motion_blur(hr, p["motion_length"]))
    lr = bicubic(hr)
    if name == "jpeg15":
        return pil_jpeg(lr, p["jpeg_quality"]) if official else jpeg_compress(lr, p["jpeg_quality"])
    return impulse_noise(lr, p["impulse_density"], noise_rng(hr, name, seed))


def read_test_hr(path: str | os.PathLike, protocol: str = "literature") -> np.ndarray:
    """The HR image as the protocol reads it: RGB (H, W, 3) for `literature`; for `official` an 8-bit gray file
    stays (H, W), as PIL's `Image.open` gives it to the official script (other files become RGB)."""
    if check_protocol(protocol) == "official":
        img = decode_image(path)
        if img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)):
            return np.ascontiguousarray(img.reshape(img.shape[:2]))
        return to_rgb_uint8(img, str(path))
    return read_image(path)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """Gray (H, W) replicated to (H, W, 3), as OpenCV's IMREAD_COLOR in the official test loader does."""
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2)) if img.ndim == 2 else img


def cache_key(name: str, scale: int, seed: int, protocol: str = "literature") -> str:
    """Folder name for cached LR images: everything that changes their content is in the hash."""
    spec = {"name": name, "steps": steps_of(name), "params": TEST_PARAMS, "scale": scale, "seed": seed,
            "version": CODE_VERSION, "opencv": cv2.__version__.split(".")[0], "protocol": check_protocol(protocol)}
    if name in UNSEEN_DEGRADATIONS:
        spec["unseen"] = UNSEEN_PARAMS
    if protocol == "official":
        spec["pillow"] = Image.__version__.split(".")[0]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    prefix = "" if protocol == "literature" else f"{protocol}_"
    return f"{prefix}{name}_x{scale}_s{seed}_{digest}"


def load_test_pairs(paths: Iterable[str | os.PathLike], name: str, scale: int = 4, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None, protocol: str = "literature",
                    hr_images: Mapping[Path, np.ndarray] | None = None) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """[(path, modcropped HR uint8, LR uint8)] for test degradation `name`, both (H, W, 3) RGB.

    Under `official` a gray image is degraded as gray and both HR and LR are then replicated to 3 channels, as the
    official test loader reads them. With cache_dir, each LR image is computed once and kept as
    <cache_dir>/<cache_key>/<stem>-<content hash>.png; an unreadable or wrongly sized cached file is recomputed.
    `hr_images` ({Path: read_test_hr(path, protocol)}) spares decoding the HR files again for each degradation.
    """
    steps_of(name)
    folder = Path(cache_dir) / cache_key(name, scale, seed, protocol) if cache_dir is not None else None
    hr_images = hr_images or {}
    pairs = []
    for path in map(Path, paths):
        hr = modcrop(hr_images[path] if path in hr_images else read_test_hr(path, protocol), scale)
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
            lr = degrade_test_image(hr, name, scale, seed, protocol)
            if folder is not None:
                try:
                    write_image(cached, lr)
                except OSError as e:  # a read-only or full cache only costs speed
                    warnings.warn(f"test image cache {folder} is not writable ({e.strerror or e}); computing the LR "
                                  f"images without it (set paths.cache to a writable folder)", RuntimeWarning,
                                  stacklevel=2)
                    folder = None
        pairs.append((path, as_rgb(hr), as_rgb(lr)))
    return pairs


def write_degraded_set(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, scale: int = 4,
                       seed: int = 0, degradations: Sequence[str] = TEST_DEGRADATIONS,
                       protocol: str = "literature", force: bool = False) -> dict[str, int]:
    """Write <out_dir>/HR/<stem>.png and <out_dir>/<degradation>/<stem>.png; return images written per folder.
    `force` writes into folders that hold other images (see `check_output_folder`).

    The files are those the evaluation scores (under `official`, gray images stay gray as the official script
    saves them)."""
    check_protocol(protocol)
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    check_output_folder(paths, out_dir, ["HR", *degradations], force)
    for path in paths:
        write_image(out_dir / "HR" / f"{path.stem}.png", modcrop(read_test_hr(path, protocol), scale))
    counts = {"HR": len(paths)}
    for name in degradations:
        steps_of(name)
        for path in paths:
            hr = modcrop(read_test_hr(path, protocol), scale)
            write_image(out_dir / name / f"{path.stem}.png", degrade_test_image(hr, name, scale, seed, protocol))
        counts[name] = len(paths)
    return counts


def check_output_folder(paths: Sequence[Path], out_dir: Path, folders: Sequence[str], force: bool = False) -> None:
    """Refuse (ValueError naming both) an output folder equal to or inside the folder of a source image or its
    dataset folder (writing there would replace the HR images by their cropped copies), and, unless `force`, output
    folders already holding images other than the ones about to be written (two sets would mix silently)."""
    out = out_dir.resolve()
    sources = {p.resolve().parent for p in paths}
    sources |= {s.parent for s in sources if s.name == "HR"}
    for source in sorted(sources):
        if out == source or source in out.parents:
            raise ValueError(f"out={out_dir} is inside the source images' folder {source}: writing there would "
                             f"replace or mix with them; choose an output folder outside it")
    stems = {p.stem for p in paths}
    for name in folders:
        sub = out_dir / name
        other = sorted(q.name for q in sub.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                       and q.stem not in stems) if sub.is_dir() else []
        if other and not force:
            raise ValueError(f"{sub} already holds {len(other)} other image(s) ({', '.join(other[:3])}"
                             f"{', ...' if len(other) > 3 else ''}): another set? choose an empty output folder, or "
                             f"pass force=true to write beside them")


def _lr_key(stem: str, scale: int) -> str:
    """The HR stem an LR file name refers to: `baby`, `babyx4`, `0801x4m` (NTIRE's x4 + track letter) -> HR stem."""
    m = re.fullmatch(rf"(.+?)x{scale}[a-z]?", stem)
    return m.group(1) if m else stem


def match_given_lr(hr_paths: Sequence[str | os.PathLike], lr_dir: str | os.PathLike,
                   scale: int = 4) -> list[tuple[Path, Path]]:
    """[(HR path, LR path)] pairing every HR file with the LR file of the same name in `lr_dir`.

    An LR name may carry the scale (`babyx4.png`, NTIRE's `0801x4m.png`). HR files without an LR file, LR files
    without an HR file, or several LR files for one HR file are a ValueError naming them.
    """
    lr_dir = Path(lr_dir)
    if not lr_dir.is_dir():
        raise FileNotFoundError(f"LR folder {lr_dir} does not exist")
    lr_files = sorted(p for p in lr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_key: dict[str, list[Path]] = {}
    for p in lr_files:
        by_key.setdefault(_lr_key(p.stem, scale), []).append(p)
    hr_paths = [Path(p) for p in hr_paths]
    hr_stems = {p.stem for p in hr_paths}
    problems = []
    missing = [p.name for p in hr_paths if p.stem not in by_key]
    if missing:
        problems.append(f"HR files without an LR file in {lr_dir}: {', '.join(missing)}")
    extra = [p.name for k, ps in by_key.items() if k not in hr_stems for p in ps]
    if extra:
        problems.append(f"LR files in {lr_dir} without an HR file of the same name: {', '.join(extra)}")
    several = [f"{k}: {', '.join(p.name for p in ps)}" for k, ps in by_key.items() if len(ps) > 1 and k in hr_stems]
    if several:
        problems.append(f"several LR files for one HR file: {'; '.join(several)}")
    if problems:
        raise ValueError("given LR images do not match the HR images by name (LR may be named <stem>, "
                         f"<stem>x{scale} or <stem>x{scale}<letter>):\n  " + "\n  ".join(problems))
    return [(p, by_key[p.stem][0]) for p in hr_paths]


def read_given_pair(hr_path: str | os.PathLike, lr_path: str | os.PathLike,
                    scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(HR uint8 (H, W, 3), LR uint8 (h, w, 3)) of one given pair.

    The HR image is cropped at the bottom/right to scale x the LR size (as BasicSR's paired loader does) when
    it is at most scale - 1 pixels larger; any other size mismatch is a ValueError naming both files.
    """
    hr, lr = read_image(hr_path), read_image(lr_path)
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    if not (h <= hr.shape[0] < h + scale and w <= hr.shape[1] < w + scale):
        raise ValueError(f"{lr_path} is {lr.shape[1]}x{lr.shape[0]} px but {hr_path} is {hr.shape[1]}x"
                         f"{hr.shape[0]}; at x{scale} the HR image must be {w}x{h} (up to {scale - 1} px more)")
    return np.ascontiguousarray(hr[:h, :w]), lr


def load_given_pairs(hr_paths: Iterable[str | os.PathLike], lr_dir: str | os.PathLike,
                     scale: int = 4) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """[(HR path, HR uint8 (H, W, 3), LR uint8 (h, w, 3))] of HR images and a folder of their given LR images."""
    return [(hr, *read_given_pair(hr, lr, scale)) for hr, lr in match_given_lr(list(hr_paths), lr_dir, scale)]


OPTIONS = {
    "protocol": (str, "literature", "literature: MATLAB bicubic, OpenCV JPEG; official: the paper's own script (PIL "
                                    "bicubic and JPEG, gray stays gray)"),
    "root": (str, None, "data root for set names (default: SR_DATA_ROOT, else ../shared/datasets beside the "
                        "checkout, else ./data)"),
    "scale": (int, 4, "SR factor"),
    "seed": (int, 0, "noise seed; keep 0 to match the evaluation"),
    "degradations": (list, list(TEST_DEGRADATIONS), f"a subset of {','.join(ALL_TEST_DEGRADATIONS)}, e.g. "
                                                    "[clean,noise] (default: the 8 of the protocol)"),
    "force": (bool, False, "write into output folders that already hold other images (default: refuse)"),
}
USAGE = ("usage: python -m src.data.testsets SET OUT [key=value ...]\n"
         "SET: a set name under root= (Set5, Set14, ...: <root>/<set>/HR), a dataset folder holding HR/, or a folder "
         "of HR images; OUT: where the HR/ and <degradation>/ folders of PNGs go.\n"
         "Writes OUT/HR/<stem>.png (modcropped) and OUT/<degradation>/<stem>.png: the LR images the evaluation "
         "scores under that protocol.\noptions:\n"
         + "\n".join(f"  {k}={d if not isinstance(d, list) else '[' + ','.join(d) + ']'}".ljust(24) + h
                     for k, (_, d, h) in OPTIONS.items())
         + "\nexample: python -m src.data.testsets Set5 lr/Set5 protocol=official")


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    from src.options import key_values
    from src.data.datasets import default_data_root, list_images, resolve_set

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    tool = "src.data.testsets"
    names, args = key_values(argv, OPTIONS, tool)
    if len(names) != 2:
        raise SystemExit(f"error: {tool}: needs SET and OUT, got {names or 'neither'} (python -m {tool} --help)")
    set_name, out_dir = names
    if args["protocol"] not in PROTOCOLS:
        raise SystemExit(f"error: {tool}: protocol={args['protocol']!r}; allowed: {', '.join(PROTOCOLS)}")
    bad = [n for n in args["degradations"] if n not in ALL_TEST_DEGRADATIONS]
    if bad or not args["degradations"]:
        raise SystemExit(f"error: {tool}: degradations: unknown {bad or 'empty'}; allowed: "
                         f"{','.join(ALL_TEST_DEGRADATIONS)}")
    folder = Path(set_name)
    if folder.is_dir():
        paths = list_images(folder / "HR" if (folder / "HR").is_dir() else folder)
    else:
        paths = resolve_set(set_name, args["root"] or default_data_root())
    try:
        counts = write_degraded_set(paths, out_dir, args["scale"], args["seed"], args["degradations"],
                                    args["protocol"], args["force"])
    except ValueError as e:
        print(f"error: {tool}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a read-only folder, a file where a folder should be, a full disk
        print(f"error: {tool}: cannot write {e.filename or out_dir}: {e.strerror or e}; choose a writable output "
              "folder", file=sys.stderr)
        raise SystemExit(1) from None
    for name, n in counts.items():
        print(f"{Path(out_dir) / name}: {n} images")


if __name__ == "__main__":
    main()
