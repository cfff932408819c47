"""Kernels, filters, noise, JPEG and the training pipelines of src.data.degradations / src.data.pipelines."""
import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage, special

from src.data import degradations as D
from src.data.datasets import default_data_root
from src.data.imageio import read_image
from src.data.pipelines import BicubicPipeline, RealESRGANPipeline
from src.data.testsets import bicubic_downscale as bicubic_uint8, jpeg_compress

BABY = default_data_root() / "Set5" / "HR" / "baby.png"
needs_baby = pytest.mark.skipif(not BABY.is_file(), reason=f"{BABY} not found (set SR_DATA_ROOT)")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def smooth_images(b=2, h=64, w=64, seed=0):
    g = gen(seed)
    x = torch.rand(b, 3, h // 8 + 1, w // 8 + 1, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------------------------------ kernels
KERNELS = {
    "iso": lambda: D.gaussian_kernel(21, [1.5, 3.0]),
    "aniso": lambda: D.gaussian_kernel(21, [3.0, 0.5], [1.0, 2.0], [0.3, -1.2]),
    "generalized": lambda: D.generalized_gaussian_kernel(21, [2.0, 1.0], [1.0, 2.5], [0.5, 2.0], [0.5, 4.0]),
    "plateau": lambda: D.plateau_kernel(21, [2.0, 1.0], [1.0, 2.5], [0.5, 2.0], [1.0, 2.0]),
    "sinc": lambda: D.sinc_kernel(21, [math.pi / 5, math.pi], [21, 7]),
    "random": lambda: D.random_kernels(64, gen()),
    "final_sinc": lambda: D.random_final_sinc_kernels(64, gen()),
}


@pytest.mark.parametrize("kind", KERNELS)
def test_kernels_sum_to_one_with_shape(kind):
    k = KERNELS[kind]()
    assert k.shape[1:] == (21, 21)
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(k.shape[0]), atol=1e-5, rtol=0)
    # every kernel family here is point-symmetric, so correlation and convolution agree
    torch.testing.assert_close(k, torch.flip(k, (1, 2)), atol=1e-6, rtol=0)


def test_anisotropic_orientation():
    theta = 0.6
    k = D.gaussian_kernel(21, 4.0, 1.0, theta)[0].double()
    ax = torch.arange(21, dtype=torch.float64) - 10
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    cov = torch.stack([torch.stack([(k * xx * xx).sum(), (k * xx * yy).sum()]),
                       torch.stack([(k * xx * yy).sum(), (k * yy * yy).sum()])])
    evals, evecs = torch.linalg.eigh(cov)
    principal = evecs[:, 1]  # (column, row) direction of the long axis
    assert abs(abs(float(principal @ torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64))) - 1) < 1e-3
    assert evals[1] / evals[0] > 10
    # the discrete moments approach sigma^2 when the kernel is well inside the 21 x 21 window
    assert abs(float(evals[1]) - 16) < 0.5 and abs(float(evals[0]) - 1) < 0.05


def test_generalized_gaussian_is_gaussian_at_beta_one():
    # BasicSR raises the quadratic form q = p^T Sigma^-1 p to beta, so beta = 1 (not 2) is the Gaussian.
    g = D.gaussian_kernel(21, [2.5], [1.0], [0.7])
    torch.testing.assert_close(D.generalized_gaussian_kernel(21, [2.5], [1.0], [0.7], [1.0]), g)
    assert (D.generalized_gaussian_kernel(21, [2.5], [1.0], [0.7], [2.0]) - g).abs().max() > 1e-3


def test_plateau_closed_form_and_limits():
    ax = np.arange(21) - 10.0
    xx, yy = np.meshgrid(ax, ax)
    q = (xx**2 + yy**2) / 2.0**2
    ref = 1 / (1 + q)  # beta = 1: the bivariate Cauchy profile
    np.testing.assert_allclose(D.plateau_kernel(21, [2.0], None, None, [1.0])[0].numpy(), ref / ref.sum(), atol=1e-7)
    # as beta grows, plateau and generalized Gaussian both tend to the flat disc q < 1
    # (sigma 4.3: no grid point lies on the boundary q = 1)
    p = D.plateau_kernel(21, [4.3], None, None, [200.0])[0]
    gg = D.generalized_gaussian_kernel(21, [4.3], None, None, [200.0])[0]
    disc = torch.from_numpy(((xx**2 + yy**2) / 4.3**2 < 1).astype(np.float32))
    torch.testing.assert_close(p, disc / disc.sum(), atol=1e-4, rtol=0)
    torch.testing.assert_close(gg, disc / disc.sum(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cutoff,support", [(math.pi / 3, 21), (2.0, 9), (math.pi, 7)])
def test_sinc_matches_closed_form(cutoff, support):
    c = (support - 1) / 2
    i, j = np.mgrid[0:support, 0:support]
    r = np.hypot(i - c, j - c)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    ref[int(c), int(c)] = cutoff**2 / (4 * np.pi)
    ref = np.pad(ref / ref.sum(), (21 - support) // 2)
    np.testing.assert_allclose(D.sinc_kernel(21, [cutoff], [support])[0].numpy(), ref, atol=2e-6)


def test_random_kernels_follow_real_esrgan_sampling():
    # plateau kernels never underflow to 0 inside their support, so the support is visible
    k = D.random_kernels(4000, gen(1), kernel_prob=(0, 0, 0, 0, 0.5, 0.5), sinc_prob=0.0)
    nz = (k.abs() > 0).any(1)  # which columns are inside the support
    widths = nz.sum(1)
    assert set(widths.unique().tolist()) <= set(range(7, 22, 2))
    # support sizes uniform over the 8 odd sizes 7..21
    counts = torch.bincount((widths - 7) // 2, minlength=8).float() / len(widths)
    assert (counts - 1 / 8).abs().max() < 0.03
    only_sinc = D.random_kernels(50, gen(2), sinc_prob=1.0)
    assert (only_sinc < -1e-6).any()  # sinc kernels have negative lobes, Gaussian-family kernels never do
    only_iso = D.random_kernels(50, gen(2), kernel_prob=(1, 0, 0, 0, 0, 0), sinc_prob=0.0)
    assert (only_iso >= 0).all()
    torch.testing.assert_close(only_iso, only_iso.transpose(1, 2))  # isotropic
    final = D.random_final_sinc_kernels(4000, gen(3), prob=0.8)
    frac_pulse = (final[:, 10, 10] == 1).float().mean()
    assert abs(float(frac_pulse) - 0.2) < 0.03


# ---------------------------------------------------------------------------------------------- filtering
def test_filter2d_matches_scipy_reflect101_per_sample():
    x = torch.rand(3, 3, 23, 30, generator=gen())
    k = D.random_kernels(3, gen(4))
    y = D.filter2d(x, k)
    for b in range(3):
        for c in range(3):
            ref = ndimage.correlate(x[b, c].double().numpy(), k[b].double().numpy(), mode="mirror")
            np.testing.assert_allclose(y[b, c].numpy(), ref, atol=1e-5)


def test_filter2d_grouping_by_support_changes_nothing():
    # mixed supports, underflowed Gaussian tails and identity pulses, against one full 21 x 21 correlation
    k = torch.cat([D.random_kernels(6, gen(1), blur_sigma=(0.2, 0.5)), D.random_final_sinc_kernels(5, gen(2)),
                   D.pulse_kernel(1)])
    x = torch.rand(12, 3, 30, 26, generator=gen())
    full = torch.nn.functional.conv2d(D.reflect_pad(x, 10).view(1, 36, 50, 46),
                                      k.repeat_interleave(3, 0)[:, None], groups=36).view(12, 3, 30, 26)
    torch.testing.assert_close(D.filter2d(x, k), full, atol=1e-6, rtol=0)


def test_reflect_pad_handles_pads_larger_than_the_image():
    x = torch.rand(1, 1, 5, 3, generator=gen())
    y = D.reflect_pad(x, 10)
    np.testing.assert_array_equal(y[0, 0].numpy(), np.pad(x[0, 0].numpy(), 10, mode="reflect"))
    assert D.filter2d(torch.rand(1, 3, 1, 4), D.pulse_kernel(1)).shape == (1, 3, 1, 4)


def test_usm_matches_opencv_reference():
    img = smooth_images(1, 64, 80)[0].permute(1, 2, 0).numpy().astype(np.float64)
    img = np.clip(img + 0.1 * (np.indices(img.shape[:2]).sum(0) % 7 == 0)[..., None], 0, 1)
    blur = cv2.GaussianBlur(img, (51, 51), 0)
    residual = img - blur
    soft = cv2.GaussianBlur((np.abs(residual) * 255 > 10).astype(np.float64), (51, 51), 0)
    ref = soft * np.clip(img + 0.5 * residual, 0, 1) + (1 - soft) * img
    out = D.usm_sharpen(torch.from_numpy(img).permute(2, 0, 1)[None].float())
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-4)


# ------------------------------------------------------------------------------------------------ bicubic
def _cubic(x):
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                    np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


def _matlab_resize_axis(img, axis, scale):
    """MATLAB imresize (bicubic, antialiasing on) along one axis by a factor scale < 1, independent of torch."""
    n_in = img.shape[axis]
    n_out = int(np.ceil(n_in * scale))
    width = 4.0 / scale
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None]
    wts = scale * _cubic(scale * (u[:, None] - idx))
    wts /= wts.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    idx = mirror[np.mod(idx.astype(int) - 1, 2 * n_in)]
    moved = np.moveaxis(img, axis, 0)
    out = np.einsum("ok,ok...->o...", wts, moved[idx])
    return np.moveaxis(out, 0, axis)


@needs_baby
def test_bicubic_matches_matlab_imresize_reference():
    hr = read_image(BABY)
    ref = _matlab_resize_axis(_matlab_resize_axis(hr.astype(np.float64), 0, 0.25), 1, 0.25)
    ref_u8 = np.clip(np.round(ref), 0, 255)
    assert np.abs(bicubic_uint8(hr, 4).astype(np.float64) - ref_u8).mean() < 0.5
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    lr = D.bicubic_downscale(x, 4)[0].permute(1, 2, 0).double().numpy() * 255
    assert lr.shape == ref.shape
    assert np.abs(lr - ref).mean() < 0.5


# -------------------------------------------------------------------------------------------- noise, JPEG
def test_gaussian_noise_sigma_and_gray():
    x = torch.full((2, 3, 128, 128), 0.5)
    y = D.add_gaussian_noise(x, [20.0, 20.0], [False, True], gen())
    assert abs(float((y[0] - 0.5).std()) * 255 - 20) < 0.5
    assert torch.equal(y[1, 0], y[1, 1]) and not torch.equal(y[0, 0], y[0, 1])


def test_poisson_noise_variance_follows_basicsr():
    # 256 distinct levels -> 256 "photons" per unit intensity: variance of the noise at 0.5 is 0.5 / 256
    x = torch.full((1, 3, 200, 200), 128 / 255)
    x[0, :, 0, :256 - 200] = torch.arange(56) / 255
    x[0, :, 1, :200] = torch.arange(56, 256) / 255
    y = D.add_poisson_noise(x, [1.0], [False], gen())
    noise = (y - x)[0, :, 10:, :]
    assert abs(float(noise.var()) / (128 / 255 / 256) - 1) < 0.05
    assert abs(float(noise.mean())) < 1e-3
    y2 = D.add_poisson_noise(x, [2.0], [True], gen())
    assert torch.equal(y2[0, 0], y2[0, 2])


@needs_baby
def test_kornia_jpeg_is_close_to_opencv():
    hr = read_image(BABY)[:128, :160]
    x = torch.from_numpy(hr).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) / 255
    out = D.jpeg(x, [50.0, 10.0]) * 255
    ref = jpeg_compress(hr, 50).astype(np.float64)
    sim = out[0].permute(1, 2, 0).double().numpy()
    assert 10 * np.log10(255**2 / ((sim - ref) ** 2).mean()) > 38
    assert ((out[1] - x[1] * 255) ** 2).mean() > ((out[0] - x[0] * 255) ** 2).mean()  # per-sample quality


# ---------------------------------------------------------------------------------------------- pipelines
def _is_8bit(t):
    return torch.equal(t, (t * 255).round() / 255) and t.min() >= 0 and t.max() <= 1


def test_bicubic_pipeline_sizes():
    lr, gt = BicubicPipeline(4)(smooth_images(2, 64, 48), gen())
    assert lr.shape == (2, 3, 16, 12) and gt.shape == (2, 3, 64, 48) and _is_8bit(lr)


@pytest.mark.parametrize("shape", [(4, 3, 64, 64), (1, 3, 37, 45)])
def test_realesrgan_pipeline_reproducible_and_in_range(shape):
    p = RealESRGANPipeline(scale=4)
    hr = smooth_images(shape[0], *shape[2:])
    lr1, gt1 = p(hr, gen(5))
    lr2, gt2 = p(hr, gen(5))
    lr3, _ = p(hr, gen(6))
    h, w = shape[2] // 4, shape[3] // 4
    assert lr1.shape == (shape[0], 3, h, w) and gt1.shape == (shape[0], 3, h * 4, w * 4)
    assert torch.equal(lr1, lr2) and torch.equal(gt1, gt2)
    assert not torch.equal(lr1, lr3)
    assert _is_8bit(lr1) and _is_8bit(gt1)


def test_realesrgan_pipeline_draws_per_sample_and_sharpens_gt():
    hr = smooth_images(1, 64, 64).repeat(6, 1, 1, 1)
    lr, gt = RealESRGANPipeline(4)(hr, gen(7))
    diffs = [(lr[0] - lr[i]).abs().mean() for i in range(1, 6)]
    assert min(diffs) > 0  # same image, different degradations
    assert not torch.equal(gt[0], D.quantize_8bit(hr[0]))  # gt_usm on by default
    _, gt_plain = RealESRGANPipeline(4, gt_usm=False)(hr, gen(7))
    assert torch.equal(gt_plain, D.quantize_8bit(hr))


def test_the_pair_pool_is_the_datamodules_alone():
    # one pool (data.pool_size, saved in checkpoints): asking the pipeline for its own is refused, naming both keys
    with pytest.raises(ValueError, match=r"^degradation.queue_size=4: the training pair pool is data.pool_size .* "
                                         r"set data.pool_size=4 and leave degradation.queue_size=0$"):
        RealESRGANPipeline(4, queue_size=4)
    hr = smooth_images(2, 32, 32)
    a, b = RealESRGANPipeline(4, queue_size=0)(hr, gen(8)), RealESRGANPipeline(4)(hr, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pipeline_rejects_bad_parameters():
    with pytest.raises(ValueError, match="resize_prob2"):
        RealESRGANPipeline(resize_prob2=(0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="kernel_list"):
        RealESRGANPipeline(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5))
    with pytest.raises(ValueError, match="jpeg_range"):
        RealESRGANPipeline(jpeg_range=(95, 30))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_realesrgan_pipeline_on_gpu():
    hr = smooth_images(4, 64, 64).cuda()
    p = RealESRGANPipeline(4)
    lr1, _ = p(hr, torch.Generator("cuda").manual_seed(0))
    lr2, _ = p(hr, torch.Generator("cuda").manual_seed(0))
    assert lr1.is_cuda and lr1.shape == (4, 3, 16, 16) and torch.equal(lr1, lr2)
    with pytest.raises(ValueError, match="generator"):
        p(hr, gen())


def test_every_public_degradation_function_has_a_running_example():
    import doctest
    import inspect

    public = [f for name, f in inspect.getmembers(D, inspect.isfunction)
              if not name.startswith("_") and f.__module__ == D.__name__]
    assert len(public) == 20
    for f in public:  # kornia's layout: what goes in, what comes out, and an example that runs
        assert all(h in f.__doc__ for h in ("Args:", "Returns:", "Example:")), f.__name__
    result = doctest.testmod(D, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 20
