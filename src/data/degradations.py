"""Degradations as pure functions on (B, C, H, W) tensors in [0, 1], after Real-ESRGAN / BasicSR.

Deterministic operations take their parameters as per-sample tensors of shape (B,); the `random_*` samplers draw
those parameters from an explicit `torch.Generator` on the batch's device, never from global state. Formulas and
ranges follow BasicSR's `basicsr/data/degradations.py` (kernels, noise), `basicsr/utils/img_process_util.py`
(filter2D, USM) and Real-ESRGAN's `realesrgan_dataset.py` (kernel sizes, sinc cut-offs).

Kernel convention (as BasicSR): grid coordinates (x, y) = (column, row) offsets from the centre, covariance
Sigma = R diag(sigma_x^2, sigma_y^2) R^T with R the rotation by theta, quadratic form q = p^T Sigma^-1 p, so the
long axis of an anisotropic kernel with sigma_x > sigma_y points along (cos theta, sin theta) in (column, row).
  gaussian:     exp(-q / 2)
  generalized:  exp(-q^beta / 2)          (beta = 1 is the Gaussian: BasicSR raises q, not |p|, to beta)
  plateau:      1 / (1 + q^beta)          (beta = 1 is the bivariate Cauchy profile; beta -> inf: flat ellipse)
  sinc:         omega_c J1(omega_c r) / (2 pi r), centre omega_c^2 / (4 pi)   (circular low-pass)
Every kernel is normalised to sum 1 over its support; a support smaller than the array is zero-padded centred.
"""
from __future__ import annotations

import math
from typing import Sequence

import kornia
import torch
import torch.nn.functional as F

from src.data.jpeg import jpeg_real

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# torchvision's rgb_to_grayscale weights, which BasicSR's gray Poisson noise uses.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------- sampling
def uniform(generator: torch.Generator, n: int, low: float, high: float, dtype=torch.float32) -> torch.Tensor:
    """n samples of U(low, high) on the generator's device.

    Args:
        generator: the random stream (its device is the samples' device).
        n: number of samples.
        low, high: the interval.
        dtype: of the samples. Default: float32.

    Returns:
        The samples, shape (n,).

    Example:
        >>> u = uniform(torch.Generator().manual_seed(0), 4, 2.0, 3.0)
        >>> u.shape, bool(((u >= 2) & (u < 3)).all())
        (torch.Size([4]), True)
    """
    u = torch.rand(n, generator=generator, device=generator.device, dtype=dtype)
    return low + (high - low) * u


def categorical(generator: torch.Generator, n: int, probs: Sequence[float]) -> torch.Tensor:
    """n indices drawn with the given probabilities (inverse CDF), as int64 on the generator's device.

    Args:
        generator: the random stream.
        n: number of draws.
        probs: one weight per category; normalised by their sum.

    Returns:
        Indices into `probs`, shape (n,), int64.

    Example:
        >>> categorical(torch.Generator().manual_seed(0), 5, [0.0, 1.0, 0.0]).tolist()
        [1, 1, 1, 1, 1]
    """
    cdf = torch.tensor(probs, dtype=torch.float64, device=generator.device).cumsum(0)
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=len(probs) - 1)


def bernoulli(generator: torch.Generator, n: int, p: float) -> torch.Tensor:
    """n coin flips that come up True with probability p.

    Args:
        generator: the random stream.
        n: number of flips.
        p: probability of True.

    Returns:
        Booleans, shape (n,).

    Example:
        >>> bernoulli(torch.Generator().manual_seed(0), 3, 1.0).tolist()
        [True, True, True]
    """
    return torch.rand(n, generator=generator, device=generator.device) < p


# ------------------------------------------------------------------------------------------------ kernels
def _grid(size: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if size % 2 != 1 or size < 1:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _as_batch(v, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32, device=None if like is None else like.device)
    return t.reshape(-1)


def _quadratic_form(size: int, sigma_x, sigma_y=None, theta=None) -> torch.Tensor:
    sigma_x = _as_batch(sigma_x)
    sigma_y = sigma_x if sigma_y is None else _as_batch(sigma_y, sigma_x)
    theta = torch.zeros_like(sigma_x) if theta is None else _as_batch(theta, sigma_x)
    xx, yy = _grid(size, sigma_x.device, sigma_x.dtype)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = c * xx + s * yy  # coordinates in the kernel's principal frame (R^T p)
    v = -s * xx + c * yy
    return (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2


def _normalise(kernel: torch.Tensor, support=None) -> torch.Tensor:
    """Zero the kernel outside a centred odd (B,) support and make each kernel sum to 1."""
    if support is not None:
        size = kernel.shape[-1]
        xx, yy = _grid(size, kernel.device, kernel.dtype)
        half = ((torch.as_tensor(support, device=kernel.device).reshape(-1) - 1) // 2).to(kernel.dtype)
        inside = (xx.abs() <= half[:, None, None]) & (yy.abs() <= half[:, None, None])
        kernel = kernel * inside
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernel(size: int, sigma_x, sigma_y=None, theta=None) -> torch.Tensor:
    """(B, size, size) Gaussian kernels; isotropic when sigma_y and theta are None.

    Args:
        size: odd side of the kernel.
        sigma_x: (B,) or a number: standard deviation along the kernel's long axis, in pixels.
        sigma_y: (B,) standard deviation across it. Default: sigma_x.
        theta: (B,) rotation of the long axis, radians. Default: 0.

    Returns:
        Kernels that each sum to 1.

    Shape:
        Output (B, size, size), B the length of sigma_x.

    Example:
        >>> k = gaussian_kernel(5, [1.0, 2.0])
        >>> k.shape, torch.allclose(k.sum((1, 2)), torch.ones(2)), bool(k[0, 2, 2] > k[1, 2, 2])
        (torch.Size([2, 5, 5]), True, True)
    """
    return _normalise(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size: int, sigma_x, sigma_y, theta, beta) -> torch.Tensor:
    """(B, size, size) generalized Gaussian kernels exp(-q^beta / 2) (beta = 1: the Gaussian).

    Args:
        size: odd side of the kernel.
        sigma_x, sigma_y, theta: (B,) the covariance, as gaussian_kernel.
        beta: (B,) shape exponent; < 1 heavier tails, > 1 flatter top.

    Returns:
        Kernels that each sum to 1.

    Shape:
        Output (B, size, size).

    Example:
        >>> a = generalized_gaussian_kernel(7, [1.5], [1.5], [0.0], [1.0])
        >>> torch.allclose(a, gaussian_kernel(7, [1.5]))
        True
    """
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalise(torch.exp(-0.5 * q.pow(_as_batch(beta, q)[:, None, None])))


def plateau_kernel(size: int, sigma_x, sigma_y, theta, beta) -> torch.Tensor:
    """(B, size, size) plateau kernels 1 / (1 + q^beta) (beta = 1: the bivariate Cauchy profile).

    Args:
        size: odd side of the kernel.
        sigma_x, sigma_y, theta: (B,) the covariance, as gaussian_kernel.
        beta: (B,) how flat the top is (larger: flatter, sharper edge).

    Returns:
        Kernels that each sum to 1; their tails fall as q^-beta, slower than any Gaussian's.

    Shape:
        Output (B, size, size).

    Example:
        >>> k = plateau_kernel(9, [2.0], [1.0], [0.0], [2.0])
        >>> k.shape, bool(k[0, 4, 6] > k[0, 6, 4])  # wider along x (columns)
        (torch.Size([1, 9, 9]), True)
    """
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (1.0 + q.pow(_as_batch(beta, q)[:, None, None])))


def _sinc_values(size: int, cutoff: torch.Tensor) -> torch.Tensor:
    xx, yy = _grid(size, cutoff.device, cutoff.dtype)
    r = torch.sqrt(xx**2 + yy**2)
    w = cutoff[:, None, None]
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r)
    return torch.where(r > 0, k, w**2 / (4 * math.pi))  # the limit r -> 0 of the expression above


def sinc_kernel(size: int, cutoff, support=None) -> torch.Tensor:
    """(B, size, size) circular low-pass kernels with cut-off omega_c (radians, pi = Nyquist).

    Args:
        size: odd side of the output.
        cutoff: (B,) cut-off frequencies omega_c.
        support: (B,) odd sizes <= size: the kernel is computed on that support and zero-padded to `size`, as
            BasicSR's `circular_lowpass_kernel(cutoff, support, pad_to=size)`. Default: the whole size.

    Returns:
        Kernels that each sum to 1.

    Shape:
        Output (B, size, size).

    Example:
        >>> k = sinc_kernel(21, [math.pi / 3], support=[7])
        >>> k.shape, float(k[0, :7].abs().sum()), round(float(k.sum()), 4)  # zero outside the 7 x 7 centre
        (torch.Size([1, 21, 21]), 0.0, 1.0)
    """
    return _normalise(_sinc_values(size, _as_batch(cutoff)), support)


def pulse_kernel(batch: int, size: int = 21, device=None) -> torch.Tensor:
    """Identity kernels: filtering with them leaves the image unchanged.

    Args:
        batch: number of kernels B.
        size: odd side. Default: 21.
        device: where to make them. Default: the default device.

    Returns:
        Kernels with a single 1 at the centre.

    Shape:
        Output (B, size, size).

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> torch.equal(filter2d(x, pulse_kernel(2, 5)), x)
        True
    """
    k = torch.zeros(batch, size, size, device=device)
    k[:, size // 2, size // 2] = 1.0
    return k


def random_kernels(
    batch: int,
    generator: torch.Generator,
    kernel_list: Sequence[str] = KERNEL_TYPES,
    kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    blur_sigma: Sequence[float] = (0.2, 3.0),
    betag_range: Sequence[float] = (0.5, 4.0),
    betap_range: Sequence[float] = (1.0, 2.0),
    sinc_prob: float = 0.1,
    kernel_range: Sequence[int] = (7, 21),
) -> torch.Tensor:
    """(B, K, K) blur kernels as Real-ESRGAN's dataset draws them, K = kernel_range[1], per sample.

    Support size uniform over the odd sizes in kernel_range; with probability sinc_prob a sinc kernel with
    omega_c ~ U(pi/3, pi) for supports < 13 and U(pi/5, pi) otherwise; else a kernel type from kernel_list with
    kernel_prob, sigma_x, sigma_y ~ U(blur_sigma), theta ~ U(-pi, pi) (isotropic: sigma_y = sigma_x, theta = 0),
    beta ~ U(lo, 1) or U(1, hi) with probability 1/2 each (BasicSR's `random_bivariate_*`).

    Args:
        batch: number of kernels B.
        generator: the random stream (its device is the kernels' device).
        kernel_list, kernel_prob: the kernel types (KERNEL_TYPES) and their probabilities.
        blur_sigma: range of sigma_x, sigma_y (pixels).
        betag_range, betap_range: ranges of beta for the generalized and plateau kernels.
        sinc_prob: probability of a sinc kernel instead.
        kernel_range: smallest and largest odd support.

    Returns:
        Kernels that each sum to 1, zero outside their own support.

    Shape:
        Output (B, kernel_range[1], kernel_range[1]).

    Example:
        >>> k = random_kernels(4, torch.Generator().manual_seed(0))
        >>> k.shape, torch.allclose(k.sum((1, 2)), torch.ones(4))
        (torch.Size([4, 21, 21]), True)
    """
    for t in kernel_list:
        if t not in KERNEL_TYPES:
            raise ValueError(f"kernel_list: unknown kernel type {t!r}; allowed: {', '.join(KERNEL_TYPES)}")
    dev, n = generator.device, batch
    lo, hi = int(kernel_range[0]), int(kernel_range[1])
    n_sizes = (hi - lo) // 2 + 1
    support = lo + 2 * torch.floor(torch.rand(n, generator=generator, device=dev) * n_sizes).clamp_(max=n_sizes - 1)
    is_sinc = bernoulli(generator, n, sinc_prob)
    type_idx = categorical(generator, n, kernel_prob)
    names = torch.tensor([KERNEL_TYPES.index(t) for t in kernel_list], device=dev)[type_idx]
    sig_x = uniform(generator, n, *blur_sigma)
    sig_y = uniform(generator, n, *blur_sigma)
    theta = uniform(generator, n, -math.pi, math.pi)
    iso = (names % 2) == 0  # KERNEL_TYPES alternates iso / aniso
    sig_y = torch.where(iso, sig_x, sig_y)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    low_half = bernoulli(generator, n, 0.5)
    u = torch.rand(n, generator=generator, device=dev)
    beta_g = torch.where(low_half, betag_range[0] + (1 - betag_range[0]) * u, 1 + (betag_range[1] - 1) * u)
    beta_p = torch.where(low_half, betap_range[0] + (1 - betap_range[0]) * u, 1 + (betap_range[1] - 1) * u)
    cut_lo = torch.where(support < 13, math.pi / 3, math.pi / 5)
    cutoff = cut_lo + (math.pi - cut_lo) * torch.rand(n, generator=generator, device=dev)

    q = _quadratic_form(hi, sig_x, sig_y, theta)
    family = (names // 2)[:, None, None]  # 0 gaussian, 1 generalized, 2 plateau
    beta = torch.where(family == 1, beta_g[:, None, None], beta_p[:, None, None])
    qb = q.pow(torch.where(family == 0, torch.ones_like(beta), beta))
    k = torch.where(family == 2, 1.0 / (1.0 + qb), torch.exp(-0.5 * qb))
    k = torch.where(is_sinc[:, None, None], _sinc_values(hi, cutoff), k)
    return _normalise(k, support)


def random_final_sinc_kernels(batch: int, generator: torch.Generator, prob: float = 0.8,
                              kernel_range: Sequence[int] = (7, 21)) -> torch.Tensor:
    """Real-ESRGAN's final sinc filter: with probability `prob` a sinc kernel (support uniform over the odd
    sizes in kernel_range, omega_c ~ U(pi/3, pi)) padded to kernel_range[1], otherwise the identity pulse.

    Args:
        batch: number of kernels B.
        generator: the random stream.
        prob: probability of a sinc kernel. Default: 0.8.
        kernel_range: smallest and largest odd support. Default: (7, 21).

    Returns:
        Sinc or pulse kernels, each summing to 1.

    Shape:
        Output (B, kernel_range[1], kernel_range[1]).

    Example:
        >>> k = random_final_sinc_kernels(3, torch.Generator().manual_seed(0), prob=0.0)
        >>> torch.equal(k, pulse_kernel(3, 21))
        True
    """
    dev, lo, hi = generator.device, int(kernel_range[0]), int(kernel_range[1])
    n_sizes = (hi - lo) // 2 + 1
    apply = bernoulli(generator, batch, prob)
    support = lo + 2 * torch.floor(torch.rand(batch, generator=generator, device=dev) * n_sizes).clamp_(max=n_sizes - 1)
    cutoff = uniform(generator, batch, math.pi / 3, math.pi)
    k = sinc_kernel(hi, cutoff, support)
    return torch.where(apply[:, None, None], k, pulse_kernel(batch, hi, dev))


# ---------------------------------------------------------------------------------------------- filtering
def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-101 padding (cv2's default, torch's 'reflect') that also works when pad >= the image size,
    where F.pad refuses: indices are folded with period 2 (n - 1).

    Args:
        x: images.
        pad: pixels added on every side.

    Returns:
        The padded images.

    Shape:
        Input (..., H, W); output (..., H + 2 pad, W + 2 pad).

    Example:
        >>> reflect_pad(torch.arange(3.0).view(1, 1, 1, 3), 4)[0, 0, 0].tolist()
        [0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0]
    """
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    if pad < h and pad < w:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")

    def fold(n: int) -> torch.Tensor:
        i = torch.arange(-pad, n + pad, device=x.device)
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        i = i.remainder(period)
        return torch.where(i >= n, period - i, i)

    return x.index_select(-2, fold(h)).index_select(-1, fold(w))


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate each sample with its own odd (B, k, k) kernel (or one (1, k, k) / (k, k) kernel), reflect-101
    padded to keep the size, as BasicSR's `filter2D`.

    Kernels drawn with a random support are zero-padded to a common size; samples are grouped by the radius of
    their non-zero part and each group is filtered with the cropped kernels. The result is the same (zero
    weights add nothing), but the average cost halves and identity kernels cost nothing.

    Args:
        x: images.
        kernel: one kernel per sample, or one for all.

    Returns:
        The filtered images.

    Shape:
        Input (B, C, H, W), kernel (B, k, k), (1, k, k) or (k, k) with k odd; output (B, C, H, W).

    Example:
        >>> x = torch.ones(2, 3, 8, 8)
        >>> torch.allclose(filter2d(x, gaussian_kernel(7, [1.0, 2.0])), x)  # kernels sum to 1
        True
    """
    if kernel.dim() == 2:
        kernel = kernel[None]
    k = kernel.shape[-1]
    if k % 2 != 1 or kernel.shape[-2] != k:
        raise ValueError(f"filter2d: kernel must be square with odd size, got {tuple(kernel.shape)}")
    kernel = kernel.to(x.dtype)
    if kernel.shape[0] == 1:
        return kornia.filters.filter2d(reflect_pad(x, k // 2), kernel, padding="valid")
    if kernel.shape[0] != x.shape[0]:
        raise ValueError(f"filter2d: {kernel.shape[0]} kernels for a batch of {x.shape[0]}")
    c = k // 2
    xx, yy = _grid(k, x.device, x.dtype)
    ring = torch.maximum(xx.abs(), yy.abs())
    radius = torch.where(kernel != 0, ring, torch.zeros_like(ring)).flatten(1).amax(1).long()
    out = torch.empty_like(x)
    for r in radius.unique().tolist():
        idx = (radius == r).nonzero().flatten()
        kr = kernel.index_select(0, idx)[:, c - r:c + r + 1, c - r:c + r + 1]
        if r == 0:
            out[idx] = x.index_select(0, idx) * kr.view(-1, 1, 1, 1)
        else:
            out[idx] = kornia.filters.filter2d(reflect_pad(x.index_select(0, idx), r), kr, padding="valid")
    return out


def usm_sharpen(x: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> torch.Tensor:
    """Unsharp masking as BasicSR's USMSharp (Real-ESRNet's gt_usm): Gaussian blur of size radius (made odd)
    with OpenCV's default sigma for that size; sharpen by `weight` where |residual| * 255 > threshold, the
    mask softened by the same blur. Output in [0, 1] for input in [0, 1].

    Args:
        x: images in [0, 1].
        weight: how much of the residual (image minus blur) is added. Default: 0.5.
        radius: blur size. Default: 50.
        threshold: residuals below it (0-255 scale) are left alone. Default: 10.

    Returns:
        The sharpened images.

    Shape:
        Input (B, C, H, W); output alike.

    Example:
        >>> flat = torch.full((1, 3, 16, 16), 0.5)
        >>> torch.equal(usm_sharpen(flat, radius=5), flat)  # nothing to sharpen
        True
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel(size, 0)
    ax = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:
        # The 2-D kernel is the outer product g g^T, so two 1-D passes give the same result; each pass is a
        # matrix product with a banded matrix, which on a CPU is ~5x faster than a depthwise convolution.
        t = reflect_pad(t, size // 2)
        rows, cols = t.shape[-2:]
        return _band_matrix(g, rows, rows - size + 1).T @ (t @ _band_matrix(g, cols, cols - size + 1))

    residual = x - blur(x)
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = blur(mask)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x


def _band_matrix(kernel_1d: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out) matrix M with M[i + d, i] = kernel_1d[d]: `row @ M` is a valid 1-D correlation."""
    d = torch.arange(n_in, device=kernel_1d.device)[:, None] - torch.arange(n_out, device=kernel_1d.device)[None]
    inside = (d >= 0) & (d < kernel_1d.numel())
    return torch.where(inside, kernel_1d[d.clamp(0, kernel_1d.numel() - 1)], kernel_1d.new_zeros(()))


# ----------------------------------------------------------------------------------------------- resizing
def resize(x: torch.Tensor, mode: str, size=None, scale_factor=None) -> torch.Tensor:
    """F.interpolate without antialiasing, as Real-ESRGAN resizes ('area', 'bilinear', 'bicubic').

    Args:
        x: images.
        mode: one of RESIZE_MODES.
        size: output (h, w), or
        scale_factor: output size relative to the input.

    Returns:
        The resized images.

    Shape:
        Input (B, C, H, W); output (B, C, h, w).

    Example:
        >>> resize(torch.rand(1, 3, 8, 8), "area", scale_factor=0.5).shape
        torch.Size([1, 3, 4, 4])
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not allowed; allowed: {', '.join(RESIZE_MODES)}")
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, **kw)


def resize_per_sample(x: torch.Tensor, modes: torch.Tensor, size=None, scale_factor=None,
                      mode_names: Sequence[str] = RESIZE_MODES) -> torch.Tensor:
    """Resize every sample to the same size, sample i with interpolation mode_names[modes[i]].

    Args:
        x: images.
        modes: (B,) index into mode_names per sample.
        size, scale_factor: as resize.
        mode_names: the modes the indices refer to. Default: RESIZE_MODES.

    Returns:
        The resized images.

    Shape:
        Input (B, C, H, W), modes (B,); output (B, C, h, w).

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> y = resize_per_sample(x, torch.tensor([0, 2]), size=(4, 4))
        >>> torch.equal(y[1:], resize(x[1:], "bicubic", size=(4, 4)))
        True
    """
    out = None
    for m, name in enumerate(mode_names):
        idx = (modes == m).nonzero().flatten()
        if idx.numel() == 0:
            continue
        y = resize(x.index_select(0, idx), name, size=size, scale_factor=scale_factor)
        if out is None:
            out = x.new_empty((x.shape[0], *y.shape[1:]))
        out[idx] = y
    return out


def bicubic_downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-style imresize(x, 1/scale, 'bicubic'): antialiased cubic (a = -0.5) with a kernel widened by the
    scale. The image is first cropped to a multiple of scale so the ratio is exact. Not clamped.

    Args:
        x: images.
        scale: integer downscaling factor.

    Returns:
        The downscaled images.

    Shape:
        Input (..., H, W); output (..., H // scale, W // scale).

    Example:
        >>> bicubic_downscale(torch.rand(1, 3, 18, 17), 4).shape
        torch.Size([1, 3, 4, 4])
    """
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    if h < 1 or w < 1:
        raise ValueError(f"bicubic_downscale: image {tuple(x.shape[-2:])} is smaller than the scale {scale}")
    x = x[..., : h * scale, : w * scale]
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------ noise and JPEG
def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image.

    Args:
        x: images (any shape).

    Returns:
        Values k / 255, k an integer in [0, 255]; same shape.

    Example:
        >>> (quantize_8bit(torch.tensor([-0.1, 0.5, 1.2])) * 255).tolist()
        [0.0, 128.0, 255.0]
    """
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def add_gaussian_noise(x: torch.Tensor, sigma, gray, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma/255) noise per sample, one gray (channel-shared) field where gray[i], and clamp to [0, 1].

    Unlike BasicSR, whose gray field is shared by the whole batch, each sample draws its own field.

    Args:
        x: images in [0, 1].
        sigma: (B,) standard deviation on the 0-255 scale.
        gray: (B,) bool: the same noise on every channel.
        generator: the random stream (on x's device).

    Returns:
        The noisy images, clamped to [0, 1].

    Shape:
        Input (B, C, H, W); output alike.

    Example:
        >>> y = add_gaussian_noise(torch.full((2, 3, 4, 4), 0.5), [10.0, 10.0], [True, False],
        ...                        torch.Generator().manual_seed(0))
        >>> torch.equal(y[0, 0], y[0, 1]), torch.equal(y[1, 0], y[1, 1])
        (True, False)
    """
    b, c, h, w = x.shape
    sigma = _as_batch(sigma, x).to(x.dtype).view(b, 1, 1, 1) / 255.0
    gray = torch.as_tensor(gray, device=x.device).reshape(b, 1, 1, 1)
    color_noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    gray_noise = torch.randn((b, 1, h, w), generator=generator, device=x.device, dtype=x.dtype)
    return (x + torch.where(gray, gray_noise, color_noise) * sigma).clamp(0, 1)


def _poisson_noise(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # BasicSR: count the distinct 8-bit levels of each image, round up to a power of 2, and use that many
    # photons per unit intensity. The level count is a histogram here, so there is no per-sample loop.
    img = quantize_8bit(img)
    b = img.shape[0]
    levels = (img * 255).round().long().flatten(1)
    hist = torch.zeros(b, 256, device=img.device, dtype=torch.int32)
    hist.scatter_(1, levels, 1)
    n_vals = hist.sum(1).clamp(min=1).to(img.dtype)
    vals = torch.exp2(torch.ceil(torch.log2(n_vals))).view(b, 1, 1, 1)
    return torch.poisson(img * vals, generator=generator) / vals - img


def add_poisson_noise(x: torch.Tensor, scale, gray, generator: torch.Generator) -> torch.Tensor:
    """Add Poisson (shot) noise times scale (B,) per sample, computed on the luma where gray[i]; clamp.

    Args:
        x: images in [0, 1].
        scale: (B,) multiplier of the noise.
        gray: (B,) bool: noise computed on the luma and shared by the channels.
        generator: the random stream for torch.poisson (on x's device).

    Returns:
        The images plus scaled shot noise, clamped to [0, 1].

    Shape:
        Input (B, C, H, W), C = 3 (luma with torchvision's weights) or any C (channel mean); output alike.

    Example:
        >>> x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        >>> torch.equal(add_poisson_noise(x, [0.0, 0.0], [False, True], torch.Generator()), x)
        True
    """
    b = x.shape[0]
    scale = _as_batch(scale, x).to(x.dtype).view(b, 1, 1, 1)
    gray = torch.as_tensor(gray, device=x.device).reshape(b)
    noise = torch.empty_like(x)
    # Sampling Poisson variates is the costly part, so each sample gets only the kind of noise it uses.
    ci, gi = (~gray).nonzero().flatten(), gray.nonzero().flatten()
    if ci.numel():
        noise[ci] = _poisson_noise(x[ci], generator)
    if gi.numel():
        xg = x[gi]
        if x.shape[1] == 3:
            wts = torch.tensor(_GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            luma = (xg * wts).sum(1, keepdim=True)
        else:
            luma = xg.mean(1, keepdim=True)
        noise[gi] = _poisson_noise(luma, generator).expand_as(xg)
    return (x + noise * scale).clamp(0, 1)


JPEG_CODECS = ("real", "differentiable")


def jpeg(x: torch.Tensor, quality, codec: str = "differentiable") -> torch.Tensor:
    """JPEG-compress each sample with its own quality (B,) in [0, 100], 4:2:0 chroma.

    codec="real": a baseline JPEG encode + decode with libjpeg's integer steps and hard rounding
    (src/data/jpeg.py), what writing the image as a .jpg file does. codec="differentiable": kornia's codec, which
    rounds DCT coefficients with round(z) + (z - round(z))^3 and keeps the planes in float: it distorts 0.3-0.8 dB
    less than libjpeg at q 30-95 (as BasicSR's DiffJPEG does). Test images use OpenCV's encoder.

    Args:
        x: images in [0, 1], sides multiples of 16.
        quality: (B,) JPEG quality per sample.
        codec: one of JPEG_CODECS. Default: differentiable.

    Returns:
        The decoded images in [0, 1].

    Shape:
        Input (B, 3, H, W); output alike.

    Example:
        >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> y = jpeg(x, [30.0, 95.0], codec="real")
        >>> y.shape, bool((y[0] - x[0]).abs().mean() > (y[1] - x[1]).abs().mean())  # lower quality, more loss
        (torch.Size([2, 3, 16, 16]), True)
    """
    if codec not in JPEG_CODECS:
        raise ValueError(f"jpeg codec {codec!r} is not one of {', '.join(JPEG_CODECS)}")
    q = _as_batch(quality, x).to(x.dtype)
    if q.numel() != x.shape[0]:
        raise ValueError(f"jpeg: got {q.numel()} qualities for a batch of {x.shape[0]}")
    if codec == "real":
        return jpeg_real(x, q)
    return kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), q).clamp(0, 1)
