"""PSNR and SSIM computed the way SR papers report them (BasicSR `calculate_psnr` / `calculate_ssim`).

Both work on the 0-255 scale in float64: uint8 images are used as they are, [0, 1] tensors are multiplied by
255 (not rounded; round to 8 bits first if you want what a saved image would score). `crop_border` pixels are
removed on every side, and with `y_channel=True` the luminance of ITU-R BT.601 is used exactly as MATLAB's
`rgb2ycbcr` defines it (offset 16, range 16-235); `round_y=True` rounds Y to integers as MATLAB's rgb2ycbcr
does on uint8 images (what the published bicubic tables use), `False` keeps it in float (as BasicSR).
`gray=True` scores a gray image on its own grey levels instead of on Y (the luma rescaled to 0-255, which is the
grey level itself for a replicated gray image), as the MATLAB benchmark scripts score single-channel images.

SSIM is the Wang et al. definition with an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, averaged over
the *valid* region only (positions whose window lies inside the image), and over channels for RGB.
PSNR is torchmetrics' formula on the sum of squared errors, without its per-call overhead (scoring is a
fifth of an evaluation's time outside the forward passes). SSIM does not use torchmetrics either: it averages
over the whole reflect-padded image (not the literature's valid region) and its dense 11x11 float64 convolution
takes ~15 s per Urban100 image on a CPU core, so a separable OpenCV filter (as BasicSR uses) is applied instead;
tests check both against scikit-image.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

# The scores of each test cell (results.json): Y-channel PSNR/SSIM as the literature reports, and RGB as the paper's
# own test code.
METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb")
# The metric each test protocol quotes when PSNR or SSIM is asked for, its tables leading with the PSNR: the
# literature measures on Y, the paper's own test configs on RGB.
HEADLINE = {"literature": {"psnr": "psnr", "ssim": "ssim"}, "official": {"psnr": "psnr_rgb", "ssim": "ssim_rgb"}}
# MATLAB rgb2ycbcr: Y = 16 + (65.481 R + 128.553 G + 24.966 B) for R, G, B in [0, 1].
Y_WEIGHTS = (65.481, 128.553, 24.966)
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11x11 window


def protocol_metric(protocol: str, metric: str = "psnr") -> str:
    """The metric a table of `protocol` shows when `metric` is asked for (psnr -> the protocol's own PSNR); other
    names, and protocols without a headline, pass through."""
    return HEADLINE.get(protocol, {}).get(metric, metric)


def rgb_to_y(img):
    """Luma Y of RGB images on the 0-255 scale (16-235 for in-range inputs), as MATLAB rgb2ycbcr.

    Accepts uint8 arrays (..., H, W, 3) with values 0-255, or float tensors (..., 3, H, W) in [0, 1];
    returns float64 numpy (..., H, W) or a tensor (..., 1, H, W) respectively.
    """
    if isinstance(img, torch.Tensor):
        if img.ndim < 3 or img.shape[-3] != 3:
            raise ValueError(f"rgb_to_y: expected a tensor (..., 3, H, W), got shape {tuple(img.shape)}")
        w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=img.device).view(3, 1, 1)
        return 16.0 + (img.to(torch.float64) * w).sum(dim=-3, keepdim=True)
    img = np.asarray(img)
    if img.ndim < 3 or img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y: expected an array (..., H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"rgb_to_y: numpy input must be uint8 (0-255), got {img.dtype}; pass [0, 1] data "
                         "as a torch tensor (..., 3, H, W)")
    return _y(img.astype(np.float64))


def _y(rgb255: np.ndarray) -> np.ndarray:
    return 16.0 + rgb255 @ (np.asarray(Y_WEIGHTS) / 255.0)


def _gray(rgb255: np.ndarray) -> np.ndarray:
    return rgb255 @ (np.asarray(Y_WEIGHTS) / sum(Y_WEIGHTS))


def _as_images(img, name: str) -> list[np.ndarray]:
    """float64 (H, W, C) arrays on the 0-255 scale from a uint8 (H, W[, C]) array or a [0, 1] tensor (B, C, H, W)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4:
            raise ValueError(f"{name}: expected a tensor (C, H, W) or (B, C, H, W), got {tuple(img.shape)}")
        return [x.permute(1, 2, 0).numpy() * 255.0 for x in t]
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: numpy images must be uint8 (0-255), got {a.dtype}; pass [0, 1] data as a "
                         "torch tensor")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected an array (H, W) or (H, W, C), got shape {a.shape}")
    return [a.astype(np.float64)]


def _crop(images: list[np.ndarray], crop_border: int) -> list[np.ndarray]:
    """Views of `images` (of `_as_images`) with `crop_border` pixels removed on every side."""
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    h, w = images[0].shape[:2]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {w}x{h} image")
    c = slice(crop_border, -crop_border) if crop_border else slice(None)
    return [x[c, c] for x in images]


def _pairs(sr, hr, crop_border: int) -> list[tuple[np.ndarray, np.ndarray]]:
    a, b = _as_images(sr, "sr"), _as_images(hr, "hr")
    if len(a) != len(b) or a[0].shape != b[0].shape:
        raise ValueError(f"sr and hr differ in shape: {len(a)} x {a[0].shape} vs {len(b)} x {b[0].shape}")
    return list(zip(_crop(a, crop_border), _crop(b, crop_border)))


def _luma(x: np.ndarray, round_y: bool = False, gray: bool = False) -> np.ndarray:
    """(H, W, 1) Y (or grey levels) of an (H, W, 3) image on the 0-255 scale; other images as they are."""
    if x.shape[2] != 3:
        return x
    x = (_gray if gray else _y)(x)[..., None]
    return np.floor(x + 0.5) if round_y else x  # MATLAB rounds half away from zero; Y is positive here


def _prepare(sr, hr, crop_border: int, y_channel: bool, round_y: bool = False,
             gray: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = _pairs(sr, hr, crop_border)
    return [(_luma(x, round_y, gray), _luma(y, round_y, gray)) for x, y in pairs] if y_channel else pairs


# torchmetrics' peak_signal_noise_ratio, which scored every committed result before this formula replaced it, forms
# 2 ln(255) and 10 / ln(10) in float32; the same constants keep the scores equal to its own.
_PSNR_LOG_PEAK = float(2 * torch.log(torch.tensor(255.0)))
_PSNR_DB = float(10 / torch.log(torch.tensor(10.0)))


def _psnr_pair(x: np.ndarray, y: np.ndarray) -> float:
    # float64 squared errors of 8-bit data are integers, so their sum is exact in any order
    d = np.subtract(x, y).ravel()
    sse = float(np.dot(d, d))
    return math.inf if sse == 0 else (_PSNR_LOG_PEAK - math.log(sse / d.size)) * _PSNR_DB


def psnr(sr, hr, crop_border: int = 0, y_channel: bool = True, round_y: bool = False,
             gray: bool = False) -> float:
    """PSNR in dB (data range 255); the mean over the batch for batched tensors; inf for identical images."""
    return float(np.mean([_psnr_pair(x, y) for x, y in _prepare(sr, hr, crop_border, y_channel, round_y, gray)]))


_SSIM_KERNEL = cv2.getGaussianKernel(2 * _SSIM_RADIUS + 1, _SSIM_SIGMA)


def _blur(a: np.ndarray) -> np.ndarray:
    # separable Gaussian; the border mode is irrelevant as only the valid region is kept
    return cv2.sepFilter2D(a, cv2.CV_64F, _SSIM_KERNEL, _SSIM_KERNEL)


class _SsimSide:
    """The reference image's channels, each contiguous with its Gaussian mean: what SSIM needs of that image alone."""
    __slots__ = ("y", "my")

    def __init__(self, y: np.ndarray, crop_border: int = 0):
        if min(y.shape[:2]) <= 2 * _SSIM_RADIUS:
            raise ValueError(f"ssim needs images larger than {2 * _SSIM_RADIUS + 1} px after cropping "
                             f"{crop_border} border px, got {y.shape[1]}x{y.shape[0]}")
        self.y = [np.ascontiguousarray(y[..., i]) for i in range(y.shape[2])]
        self.my = [_blur(c) for c in self.y]


def _ssim_channel(x: np.ndarray, y: np.ndarray, my: np.ndarray) -> float:
    """Mean SSIM over the valid region of a contiguous float64 (H, W) channel against a reference channel `y`
    whose Gaussian mean is `my`.

    Evaluation scores four channels of every HR-sized output, so this is written for speed at float64 precision:
    blur(x^2 + y^2) replaces blur(x^2) and blur(y^2) (only vx + vy enters), and the map is formed in place over
    the whole (contiguous) blurred arrays, the border being left out of the mean only; arithmetic on the cropped
    views ran 3x slower, and on (H, W, 3) arrays 1.7x. Equal to the textbook formula to ~1e-15 (tests check it
    against scikit-image).
    """
    r = _SSIM_RADIUS
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx = _blur(x)
    var_sum, cov = _blur(x * x + y * y), _blur(x * y)
    mxy = mx * my
    m2 = np.multiply(mx, mx, out=mx)
    m2 += my * my  # my is the reference's: not written to
    var_sum -= m2  # vx + vy
    var_sum += c2
    m2 += c1
    cov -= mxy
    cov *= 2
    cov += c2
    mxy *= 2
    mxy += c1
    mxy *= cov  # numerator (2 mx my + c1)(2 cxy + c2)
    m2 *= var_sum  # denominator (mx^2 + my^2 + c1)(vx + vy + c2)
    mxy /= m2
    return float(np.mean(mxy[r:-r, r:-r]))


def _ssim_against(x: np.ndarray, ref: _SsimSide) -> float:
    """Mean SSIM of a float64 (H, W, C) image against a reference: per channel, then over the channels."""
    return float(np.mean([_ssim_channel(np.ascontiguousarray(x[..., i]), y, my)
                          for i, (y, my) in enumerate(zip(ref.y, ref.my))]))


def _ssim_pair(x: np.ndarray, y: np.ndarray, crop_border: int = 0) -> float:
    return _ssim_against(x, _SsimSide(y, crop_border))


def ssim(sr, hr, crop_border: int = 0, y_channel: bool = True, round_y: bool = False,
             gray: bool = False) -> float:
    """SSIM (valid region, channel mean); the mean over the batch for batched tensors."""
    return float(np.mean([_ssim_pair(x, y, crop_border)
                          for x, y in _prepare(sr, hr, crop_border, y_channel, round_y, gray)]))


class Reference:
    """An HR image prepared for `scores`: cropped, in float64, its Y (or grey levels) and, per channel, the Gaussian
    mean SSIM needs of it alone. Evaluation scores the output of every test degradation of one HR image against one
    Reference, so this work is done once per image instead of once per degradation.

    Args:
        hr: uint8 (H, W, 3) RGB image.
        crop_border, round_y, gray: as `scores`.

    Example:
        >>> hr = np.full((32, 32, 3), 100, np.uint8)
        >>> Reference(hr, crop_border=4).scores(hr)["psnr_rgb"]
        inf
    """

    def __init__(self, hr: np.ndarray, crop_border: int = 0, round_y: bool = False, gray: bool = False):
        (y,) = _crop(_as_images(hr, "hr"), crop_border)
        if y.shape[2] != 3:
            raise ValueError(f"scores: expected (H, W, 3) RGB images, got {y.shape}")
        self.shape, self.crop_border, self.round_y, self.gray = np.shape(hr), crop_border, round_y, gray
        self.rgb, self.luma = y, _luma(y, round_y, gray)
        self._rgb_side = _SsimSide(y, crop_border)
        self._luma_side = _SsimSide(self.luma, crop_border)

    def scores(self, sr: np.ndarray) -> dict[str, float]:
        """`psnr`, `ssim` (on Y), `psnr_rgb`, `ssim_rgb` (on RGB) of a uint8 SR image of the reference's shape."""
        if np.shape(sr) != self.shape:
            raise ValueError(f"sr and hr differ in shape: {np.shape(sr)} vs {self.shape}")
        (x,) = _crop(_as_images(sr, "sr"), self.crop_border)
        lx = _luma(x, self.round_y, self.gray)
        return {"psnr": _psnr_pair(lx, self.luma), "ssim": _ssim_against(lx, self._luma_side),
                "psnr_rgb": _psnr_pair(x, self.rgb), "ssim_rgb": _ssim_against(x, self._rgb_side)}


def scores(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, round_y: bool = False,
           gray: bool = False) -> dict[str, float]:
    """`psnr`, `ssim` (on Y, as `psnr(..., y_channel=True)`), `psnr_rgb`, `ssim_rgb` (on RGB) of one image pair,
    equal to the four separate calls but converting and cropping the images once."""
    return Reference(hr, crop_border, round_y, gray).scores(sr)
