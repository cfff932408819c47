"""Training degradation pipelines: callables `(hr, generator) -> (lr, gt)` built from conf/degradation/*.yaml.

`hr` is a (B, 3, H, W) batch in [0, 1] on any device and `generator` a torch.Generator on that device; every
random choice comes from it, so seeding it from (seed, global step, rank) makes reruns and resumed runs see
identical LR batches. H and W are cropped to a multiple of `scale` first; lr is (H/scale, W/scale). Both
outputs are clamped to [0, 1] and rounded to 8-bit levels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from src.data import degradations as D


def _check_device(hr: torch.Tensor, generator: torch.Generator) -> None:
    if hr.dim() != 4:
        raise ValueError(f"hr must be a (B, C, H, W) batch, got shape {tuple(hr.shape)}")
    if torch.device(generator.device).type != hr.device.type:
        raise ValueError(f"generator is on {generator.device} but the batch is on {hr.device}; "
                         "create the generator on the batch's device")


def _modcrop(hr: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = hr.shape[-2] // scale * scale, hr.shape[-1] // scale * scale
    if h == 0 or w == 0:
        raise ValueError(f"hr of size {tuple(hr.shape[-2:])} is smaller than scale {scale}")
    return hr[..., :h, :w]


def paired_random_crop(lr: torch.Tensor, gt: torch.Tensor, lr_size: int, scale: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `lr_size` LR patch of each pair and the HR patch over the same area (BasicSR's
    paired_random_crop, as the official recipe cuts its 128 px GT from the degraded 400 px crop).

    The position is drawn per sample (BasicSR draws one for the batch), from `generator`: LR top and left uniform
    in [0, h - lr_size], the HR patch at `scale` times them. No host sync: the positions stay on the device.

    Shape:
        lr: (B, C, h, w), gt: (B, C, h*scale, w*scale) -> (B, C, lr_size, lr_size), (B, C, lr_size*scale, ...).
    """
    b, _, h, w = lr.shape
    if gt.shape[-2:] != (h * scale, w * scale):
        raise ValueError(f"gt {tuple(gt.shape[-2:])} is not {scale} x lr {(h, w)}")
    if min(h, w) < lr_size:
        raise ValueError(f"the degraded LR ({h}x{w}) is smaller than the LR patch {lr_size} "
                         f"(data.degrade_size must be at least data.lr_patch_size x scale)")
    top = torch.randint(0, h - lr_size + 1, (b,), generator=generator, device=generator.device).to(lr.device)
    left = torch.randint(0, w - lr_size + 1, (b,), generator=generator, device=generator.device).to(lr.device)

    def cut(x: torch.Tensor, t: torch.Tensor, l: torch.Tensor, size: int) -> torch.Tensor:
        steps = torch.arange(size, device=x.device)
        rows, cols = (t[:, None] + steps)[:, :, None], (l[:, None] + steps)[:, None, :]
        # Index arrays around the channel slice: the result is (B, size, size, C).
        return x[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)

    return cut(lr, top, left, lr_size), cut(gt, top * scale, left * scale, lr_size * scale)


class BicubicPipeline:
    """The single-degradation setting: LR = MATLAB-style bicubic x`scale` downscale of HR."""

    def __init__(self, scale: int = 4):
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = int(scale)

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None):
        if generator is not None:
            _check_device(hr, generator)
        gt = D.quantize_8bit(_modcrop(hr, self.scale))
        return D.quantize_8bit(D.bicubic_downscale(gt, self.scale)), gt


def _check_range(name: str, r, low: float = -math.inf, high: float = math.inf) -> tuple[float, float]:
    if len(r) != 2 or not (low <= r[0] <= r[1] <= high):
        raise ValueError(f"{name} must be [low, high] with {low} <= low <= high <= {high}, got {list(r)}")
    return float(r[0]), float(r[1])


def _check_probs(name: str, p, n: int) -> tuple[float, ...]:
    if len(p) != n or any(v < 0 for v in p) or abs(sum(p) - 1) > 1e-6:
        raise ValueError(f"{name} must be {n} non-negative probabilities summing to 1, got {list(p)}")
    return tuple(float(v) for v in p)


def _check_prob(name: str, p) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


class _Stage:
    """The parameters of one degradation order (blur, resize, noise, JPEG)."""

    def __init__(self, suffix, kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range,
                 resize_prob, resize_range, gaussian_noise_prob, noise_range, poisson_scale_range, gray_noise_prob,
                 jpeg_range):
        for t in kernel_list:
            if t not in D.KERNEL_TYPES:
                raise ValueError(f"kernel_list{suffix}: unknown kernel {t!r}; allowed: {', '.join(D.KERNEL_TYPES)}")
        self.kernel_list = tuple(kernel_list)
        self.kernel_prob = _check_probs(f"kernel_prob{suffix}", kernel_prob, len(kernel_list))
        self.sinc_prob = _check_prob(f"sinc_prob{suffix}", sinc_prob)
        self.blur_sigma = _check_range(f"blur_sigma{suffix}", blur_sigma, 1e-3)
        self.betag_range = _check_range(f"betag_range{suffix}", betag_range, 1e-3)
        self.betap_range = _check_range(f"betap_range{suffix}", betap_range, 1e-3)
        if not (self.betag_range[0] <= 1 <= self.betag_range[1] and self.betap_range[0] <= 1 <= self.betap_range[1]):
            raise ValueError(f"betag_range{suffix} and betap_range{suffix} must contain 1 (beta is drawn below or "
                             f"above 1 with probability 1/2), got {list(betag_range)}, {list(betap_range)}")
        self.resize_prob = _check_probs(f"resize_prob{suffix}", resize_prob, 3)
        self.resize_range = _check_range(f"resize_range{suffix}", resize_range, 1e-3)
        if not self.resize_range[0] <= 1 <= self.resize_range[1]:
            raise ValueError(f"resize_range{suffix} must contain 1 (down: U(low, 1), up: U(1, high)), "
                             f"got {list(resize_range)}")
        self.gaussian_noise_prob = _check_prob(f"gaussian_noise_prob{suffix}", gaussian_noise_prob)
        self.noise_range = _check_range(f"noise_range{suffix}", noise_range, 0)
        self.poisson_scale_range = _check_range(f"poisson_scale_range{suffix}", poisson_scale_range, 0)
        self.gray_noise_prob = _check_prob(f"gray_noise_prob{suffix}", gray_noise_prob)
        self.jpeg_range = _check_range(f"jpeg_range{suffix}", jpeg_range, 1, 100)

    def kernels(self, n: int, g: torch.Generator, kernel_range) -> torch.Tensor:
        return D.random_kernels(n, g, self.kernel_list, self.kernel_prob, self.blur_sigma, self.betag_range,
                                self.betap_range, self.sinc_prob, kernel_range)

    def resize_factor(self, g: torch.Generator) -> float:
        # One factor for the whole batch (as Real-ESRGAN), since the batch must keep one size.
        u = torch.rand(2, generator=g, device=g.device, dtype=torch.float64).tolist()
        up, down = self.resize_prob[0], self.resize_prob[0] + self.resize_prob[1]
        if u[0] < up:
            return 1 + (self.resize_range[1] - 1) * u[1]
        if u[0] < down:
            return self.resize_range[0] + (1 - self.resize_range[0]) * u[1]
        return 1.0

    def noise(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        gaussian = D.bernoulli(g, n, self.gaussian_noise_prob)
        gray = D.bernoulli(g, n, self.gray_noise_prob)
        sigma = D.uniform(g, n, *self.noise_range)
        pscale = D.uniform(g, n, *self.poisson_scale_range)
        out = x.clone()
        gi, pi = gaussian.nonzero().flatten(), (~gaussian).nonzero().flatten()
        if gi.numel():
            out[gi] = D.add_gaussian_noise(x[gi], sigma[gi], gray[gi], g)
        if pi.numel():
            out[pi] = D.add_poisson_noise(x[pi], pscale[pi], gray[pi], g)
        return out

    def jpeg(self, x: torch.Tensor, g: torch.Generator, codec: str) -> torch.Tensor:
        return D.jpeg(x, D.uniform(g, x.shape[0], *self.jpeg_range), codec)


class RealESRGANPipeline:
    """Real-ESRGAN's second-order degradation (RealESRNetModel.feed_data + RealESRGANDataset kernels).

    Argument names and defaults are those of Real-ESRGAN's options/train_realesrnet_x4plus.yml. Differences,
    all to draw per sample what Real-ESRGAN draws per batch where the batch's shape allows it:
      - the resize factors (up/down/keep and amount) of both orders are shared by the batch, as in Real-ESRGAN;
        the interpolation mode, the noise type (Gaussian/Poisson), whether the second blur is applied, and the
        order of [final resize + sinc] and JPEG are drawn per sample;
      - kernels are drawn on the batch's device rather than per image in the data loader workers;
      - the input is the training crop itself (Real-ESRGAN degrades a 400 px crop, then crops gt_size), so border
        effects of the filters reach the crop's edge.
    Real-ESRGAN's training pair pool (its `queue_size`) is not here but after the pipeline, in the datamodule:
    `data.pool_size` (src/data/pool.py), whose content is saved in checkpoints so that a resume is exact.
    `queue_size` stays an argument only so that configs and run identities that hold `queue_size: 0` still load.
    """

    def __init__(
        self,
        scale: int = 4,
        gt_usm: bool = True,
        usm_weight: float = 0.5,
        usm_radius: int = 50,
        usm_threshold: float = 10,
        kernel_range: Sequence[int] = (7, 21),
        resize_modes: Sequence[str] = D.RESIZE_MODES,
        # first degradation order
        kernel_list: Sequence[str] = D.KERNEL_TYPES,
        kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob: float = 0.1,
        blur_sigma: Sequence[float] = (0.2, 3.0),
        betag_range: Sequence[float] = (0.5, 4.0),
        betap_range: Sequence[float] = (1.0, 2.0),
        resize_prob: Sequence[float] = (0.2, 0.7, 0.1),
        resize_range: Sequence[float] = (0.15, 1.5),
        gaussian_noise_prob: float = 0.5,
        noise_range: Sequence[float] = (1.0, 30.0),
        poisson_scale_range: Sequence[float] = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_range: Sequence[float] = (30.0, 95.0),
        # second degradation order
        second_blur_prob: float = 0.8,
        kernel_list2: Sequence[str] = D.KERNEL_TYPES,
        kernel_prob2: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob2: float = 0.1,
        blur_sigma2: Sequence[float] = (0.2, 1.5),
        betag_range2: Sequence[float] = (0.5, 4.0),
        betap_range2: Sequence[float] = (1.0, 2.0),
        resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
        resize_range2: Sequence[float] = (0.3, 1.2),
        gaussian_noise_prob2: float = 0.5,
        noise_range2: Sequence[float] = (1.0, 25.0),
        poisson_scale_range2: Sequence[float] = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_range2: Sequence[float] = (30.0, 95.0),
        final_sinc_prob: float = 0.8,
        final_order_prob: float = 0.5,
        queue_size: int = 0,
        jpeg: str = "real",
    ):
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = int(scale)
        self.gt_usm = bool(gt_usm)
        self.usm = (float(usm_weight), int(usm_radius), float(usm_threshold))
        lo, hi = int(kernel_range[0]), int(kernel_range[1])
        if len(kernel_range) != 2 or lo % 2 != 1 or hi % 2 != 1 or not 1 <= lo <= hi:
            raise ValueError(f"kernel_range must be two odd sizes [low, high], low <= high, got {list(kernel_range)}")
        self.kernel_range = (lo, hi)
        for m in resize_modes:
            if m not in D.RESIZE_MODES:
                raise ValueError(f"resize_modes: {m!r} not allowed; allowed: {', '.join(D.RESIZE_MODES)}")
        if not resize_modes:
            raise ValueError("resize_modes must name at least one mode")
        self.resize_modes = tuple(resize_modes)
        self.stage1 = _Stage("", kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range,
                             resize_prob, resize_range, gaussian_noise_prob, noise_range, poisson_scale_range,
                             gray_noise_prob, jpeg_range)
        self.stage2 = _Stage("2", kernel_list2, kernel_prob2, sinc_prob2, blur_sigma2, betag_range2, betap_range2,
                             resize_prob2, resize_range2, gaussian_noise_prob2, noise_range2, poisson_scale_range2,
                             gray_noise_prob2, jpeg_range2)
        self.second_blur_prob = _check_prob("second_blur_prob", second_blur_prob)
        self.final_sinc_prob = _check_prob("final_sinc_prob", final_sinc_prob)
        self.final_order_prob = _check_prob("final_order_prob", final_order_prob)
        if queue_size:
            raise ValueError(f"degradation.queue_size={queue_size}: the training pair pool is data.pool_size (saved "
                             f"in checkpoints); set data.pool_size={queue_size} and leave degradation.queue_size=0")
        if jpeg not in D.JPEG_CODECS:
            raise ValueError(f"degradation.jpeg={jpeg!r}; allowed: {', '.join(D.JPEG_CODECS)} (real: libjpeg's "
                             "hard rounding; differentiable: kornia's soft rounding, milder)")
        self.jpeg = jpeg

    def _modes(self, n: int, g: torch.Generator) -> torch.Tensor:
        idx = D.categorical(g, n, [1.0] * len(self.resize_modes))
        lookup = torch.tensor([D.RESIZE_MODES.index(m) for m in self.resize_modes], device=g.device)
        return lookup[idx]

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, generator: torch.Generator):
        _check_device(hr, generator)
        g, s = generator, self.scale
        gt = _modcrop(hr, s).float()
        b, _, h, w = gt.shape
        if self.gt_usm:
            gt = D.usm_sharpen(gt, *self.usm)
        # Kernels first, in a fixed order, so the random stream does not depend on image content.
        k1 = self.stage1.kernels(b, g, self.kernel_range)
        k2 = self.stage2.kernels(b, g, self.kernel_range)
        k2 = torch.where(D.bernoulli(g, b, self.second_blur_prob)[:, None, None], k2,
                         D.pulse_kernel(b, k2.shape[-1], gt.device))
        sinc = D.random_final_sinc_kernels(b, g, self.final_sinc_prob, self.kernel_range)

        # first order: blur, resize, noise, JPEG
        out = D.filter2d(gt, k1)
        out = D.resize_per_sample(out, self._modes(b, g), scale_factor=self.stage1.resize_factor(g))
        out = self.stage1.noise(out, g)
        out = self.stage1.jpeg(out, g, self.jpeg)
        # second order: blur (per-sample probability), resize relative to the LR size, noise
        out = D.filter2d(out, k2)
        f = self.stage2.resize_factor(g)
        out = D.resize_per_sample(out, self._modes(b, g), size=(max(1, int(h / s * f)), max(1, int(w / s * f))))
        out = self.stage2.noise(out, g)
        # [resize to LR + sinc] then JPEG, or JPEG then [resize to LR + sinc], chosen per sample
        resize_first = D.bernoulli(g, b, self.final_order_prob)
        modes = self._modes(b, g)
        quality = D.uniform(g, b, *self.stage2.jpeg_range)
        lr = out.new_empty((b, out.shape[1], h // s, w // s))
        for first in (True, False):
            idx = (resize_first == first).nonzero().flatten()
            if idx.numel() == 0:
                continue
            y = out.index_select(0, idx)
            if not first:
                y = D.jpeg(y, quality[idx], self.jpeg)
            y = D.filter2d(D.resize_per_sample(y, modes[idx], size=(h // s, w // s)), sinc[idx])
            if first:
                y = D.jpeg(y, quality[idx], self.jpeg)
            lr[idx] = y
        lr, gt = D.quantize_8bit(lr), D.quantize_8bit(gt)
        return lr.to(hr.dtype), gt.to(hr.dtype)
