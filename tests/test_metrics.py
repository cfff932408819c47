"""Metric parity with independent implementations and with a published bicubic figure."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from src.data.datasets import default_data_root
from src.data.imageio import read_image
from src.metrics import psnr, rgb_to_y, ssim


def _pair(h=70, w=90, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # smooth the reference a little so SSIM is not dominated by pure noise
    hr = ((hr.astype(np.int32) + np.roll(hr, 1, 0) + np.roll(hr, 1, 1)) // 3).astype(np.uint8)
    sr = np.clip(hr.astype(np.int32) + rng.integers(-25, 26, hr.shape), 0, 255).astype(np.uint8)
    return sr, hr


def _psnr_formula(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def _ssim_skimage(a, b, channel_axis=None):
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=channel_axis)


def test_rgb_to_y_matches_matlab_definition():
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)
    img = _pair()[1]
    np.testing.assert_allclose(rgb_to_y(img), rgb2ycbcr(img)[..., 0], atol=1e-9)
    t = torch.from_numpy(img).permute(2, 0, 1).double() / 255
    np.testing.assert_allclose(rgb_to_y(t)[0].numpy(), rgb_to_y(img), atol=1e-9)


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_ssim_parity_with_formula_and_skimage(crop):
    sr, hr = _pair()
    c = slice(crop, -crop) if crop else slice(None)
    ys, yh = rgb_to_y(sr)[c, c], rgb_to_y(hr)[c, c]
    assert psnr(sr, hr, crop) == pytest.approx(_psnr_formula(ys, yh), abs=1e-3)
    assert psnr(sr, hr, crop, y_channel=False) == pytest.approx(_psnr_formula(sr[c, c], hr[c, c]), abs=1e-3)
    assert ssim(sr, hr, crop) == pytest.approx(_ssim_skimage(ys, yh), abs=1e-6)
    assert ssim(sr, hr, crop, y_channel=False) == pytest.approx(_ssim_skimage(sr[c, c], hr[c, c], 2), abs=1e-6)


def test_tensor_inputs_match_uint8_and_batch_is_mean():
    pairs = [_pair(seed=s) for s in (1, 2)]
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255  # noqa: E731
    for sr, hr in pairs:
        assert psnr(to_t(sr), to_t(hr), 4) == pytest.approx(psnr(sr, hr, 4), abs=1e-4)
        assert ssim(to_t(sr), to_t(hr), 4) == pytest.approx(ssim(sr, hr, 4), abs=1e-6)
    srb = torch.stack([to_t(p[0]) for p in pairs])
    hrb = torch.stack([to_t(p[1]) for p in pairs])
    assert psnr(srb, hrb, 4) == pytest.approx(np.mean([psnr(s, h, 4) for s, h in pairs]), abs=1e-4)


def test_gray_identical_and_bad_shapes():
    sr, hr = _pair()
    g1, g2 = sr[..., 0], hr[..., 0]
    assert psnr(g1, g2, 2) == pytest.approx(_psnr_formula(g1[2:-2, 2:-2], g2[2:-2, 2:-2]), abs=1e-3)
    assert psnr(hr, hr) == math.inf
    assert ssim(hr, hr) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(sr[:-1], hr)
    with pytest.raises(ValueError, match="uint8"):
        psnr(sr.astype(np.float32), hr)


# --- MATLAB imresize (bicubic, antialiased when shrinking), written from its documented definition ---------
def _cubic(x):
    ax = np.abs(x)
    return ((1.5 * ax ** 3 - 2.5 * ax ** 2 + 1) * (ax <= 1)
            + (-0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(n_in, n_out, s):
    width = 4.0 / s if s < 1 else 4.0
    u = np.arange(1, n_out + 1) / s + 0.5 * (1 - 1 / s)
    idx = np.floor(u - width / 2)[:, None] + np.arange(int(np.ceil(width)) + 2)[None]
    w = s * _cubic(s * (u[:, None] - idx)) if s < 1 else _cubic(u[:, None] - idx)
    w /= w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    m = np.zeros((n_out, n_in))
    for i, (cols, ws) in enumerate(zip(mirror[np.mod(idx.astype(int) - 1, 2 * n_in)], w)):
        np.add.at(m[i], cols, ws)
    return m


def _imresize(img, s):
    h, w = img.shape[:2]
    out = np.einsum("oh,hwc->owc", _resize_matrix(h, int(np.ceil(h * s)), s), img.astype(np.float64))
    out = np.einsum("ow,hwc->hoc", _resize_matrix(w, int(np.ceil(w * s)), s), out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_bicubic_x4_set5_baby_published_psnr():
    path = default_data_root() / "Set5" / "HR" / "baby.png"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    hr = read_image(path)
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    sr = _imresize(_imresize(hr, 0.25), 4)
    # 31.78-31.79 dB is the bicubic x4 figure for baby in SRCNN/VDSR/EDSR tables (Y channel, 4 px cropped)
    assert psnr(sr, hr, crop_border=4) == pytest.approx(31.79, abs=0.01)


def test_the_metric_each_protocol_quotes_has_one_home():
    import ast
    from pathlib import Path

    from src.metrics import protocol_metric
    from src.reports import collect

    assert [protocol_metric(p, m) for p in ("literature", "official") for m in ("psnr", "ssim")] == [
        "psnr", "ssim", "psnr_rgb", "ssim_rgb"]
    assert protocol_metric("official") == "psnr_rgb" and protocol_metric("official", "lpips") == "lpips"
    assert collect.protocol_metric is protocol_metric
    src = Path(__file__).resolve().parents[1] / "src"
    homes = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*.py"))
             for node in ast.parse(p.read_text()).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and t.id == "HEADLINE"]
    assert homes == ["metrics.py"]


def test_psnr_is_torchmetrics_formula_to_the_last_digits():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from src.metrics import _psnr_pair

    sr, hr = _pair(seed=3)
    y_sr, y_hr = rgb_to_y(sr), rgb_to_y(hr)  # float Y, as the official protocol scores it
    for ours, a, b in ((psnr(sr, hr, 0, y_channel=False), sr, hr), (_psnr_pair(y_sr, y_hr), y_sr, y_hr)):
        theirs = float(peak_signal_noise_ratio(torch.from_numpy(np.asarray(a, np.float64)),
                                               torch.from_numpy(np.asarray(b, np.float64)), data_range=255.0))
        assert ours == pytest.approx(theirs, abs=1e-12) and ours == pytest.approx(_psnr_formula(a, b), abs=1e-5)
    assert psnr(hr, hr) == math.inf


def test_a_reference_scores_many_outputs_as_scores_does_and_is_not_changed_by_them():
    from src.metrics import Reference, scores

    (sr1, hr), (sr2, _) = _pair(seed=4), _pair(seed=5)
    for round_y, gray in ((True, False), (False, False), (True, True)):
        ref = Reference(hr, 4, round_y, gray)
        first = ref.scores(sr1)
        assert first == scores(sr1, hr, 4, round_y, gray)
        assert ref.scores(sr2) == scores(sr2, hr, 4, round_y, gray)
        assert ref.scores(sr1) == first
    assert set(first) == {"psnr", "ssim", "psnr_rgb", "ssim_rgb"}
    with pytest.raises(ValueError, match=r"sr and hr differ in shape: \(70, 89, 3\) vs \(70, 90, 3\)"):
        Reference(hr, 4).scores(sr1[:, :89])
