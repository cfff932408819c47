"""The real JPEG codec of the training pipeline (src/data/jpeg.py) against OpenCV's libjpeg encoder."""
import numpy as np
import pytest
import torch

from src.data import degradations as D
from src.data.datasets import resolve_set
from src.data.imageio import read_image
from src.data.jpeg import jpeg_real, quant_tables
from src.data.pipelines import RealESRGANPipeline
from src.data.testsets import jpeg_compress

QUALITIES = (30, 50, 70, 95)


def psnr(a, b):
    return 10 * np.log10(255.0**2 / ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


def to_batch(img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def to_uint8(t):
    return (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def psnr_gaps(images, codec):
    """Mean |PSNR(ours) - PSNR(OpenCV)| (each against the input) per quality, and the mean signed gap."""
    out = {}
    for q in QUALITIES:
        gaps = []
        for img in images:
            ours = to_uint8(D.jpeg(to_batch(img), [float(q)], codec))
            gaps.append(psnr(ours, img) - psnr(jpeg_compress(img, q), img))
        out[q] = (float(np.mean(np.abs(gaps))), float(np.mean(gaps)))
    return out


def colour_images(paths, limit):
    images = [read_image(p) for p in paths]
    return [i for i in images if i.ndim == 3 and i.shape[2] == 3][:limit]


def test_quant_tables_are_libjpegs():
    # jpeg_set_quality: q=50 is the Annex K table itself, q=100 all ones, q=10 scales by 5000/10 %, clamped to 255.
    luma, chroma = quant_tables(torch.tensor([50, 100, 10, 75]))
    assert luma[0, 0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61] and chroma[0, 7, 7] == 99
    assert torch.equal(luma[1], torch.ones(8, 8, dtype=luma.dtype))
    assert luma[2, 0, 0] == 80 and luma[2, 7, 7] == 255 and chroma[2, 0, 0] == 85
    assert luma[3, 0, 0] == 8 and luma[3, 0, 1] == 6  # (16*50+50)//100, (11*50+50)//100


def test_real_jpeg_matches_opencv_on_the_bundled_photos():
    images = colour_images(resolve_set("skimage_holdout", None), 3)
    assert images
    for q, (gap, _) in psnr_gaps(images, "real").items():
        assert gap <= 0.1, f"q={q}: mean |PSNR difference| to OpenCV {gap:.3f} dB"


def test_real_jpeg_matches_opencv_on_real_images(data_root):
    images = colour_images(sorted((data_root / "Set5" / "HR").glob("*.png"))
                           + sorted((data_root / "Set14" / "HR").glob("*.png")), 8)
    real, soft = psnr_gaps(images, "real"), psnr_gaps(images, "differentiable")
    for q in QUALITIES:
        assert real[q][0] <= 0.1, f"q={q}: mean |PSNR difference| to OpenCV {real[q][0]:.3f} dB"
    # the soft-rounding codec is the milder one, by more than the real codec's own error
    assert all(soft[q][1] > 0.2 for q in (30, 50, 70))


def test_real_jpeg_per_sample_quality_odd_sizes_and_8bit_output():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 6, 7, generator=g), size=(37, 45), mode="bilinear")
    out = jpeg_real(x, torch.tensor([30.0, 95.0, 30.0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, (out * 255).round() / 255) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0], jpeg_real(x[:1], [30])[0])  # each sample coded on its own
    err = ((out - x) ** 2).flatten(1).mean(1)
    assert err[1] < err[0]  # higher quality, smaller error
    # odd sizes as libjpeg codes them (a partial MCU padded by repeating the edge, only the image's own chroma
    # samples upsampled): close to OpenCV's output (reflect padding instead reads ~36 dB here)
    crops = [np.ascontiguousarray(i[100:137, 80:125]) for i in colour_images(resolve_set("skimage_holdout", None), 3)]
    assert np.mean([psnr(to_uint8(jpeg_real(to_batch(c), [30])), jpeg_compress(c, 30)) for c in crops]) > 42
    with pytest.raises(ValueError, match="2 qualities for a batch of 3"):
        jpeg_real(x, [30.0, 40.0])


def test_pipeline_codec_option():
    hr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kw = dict(gt_usm=False)
    real = RealESRGANPipeline(**kw)(hr, torch.Generator().manual_seed(3))[0]
    soft = RealESRGANPipeline(jpeg="differentiable", **kw)(hr, torch.Generator().manual_seed(3))[0]
    again = RealESRGANPipeline(jpeg="real", **kw)(hr, torch.Generator().manual_seed(3))[0]
    assert torch.equal(real, again) and not torch.equal(real, soft)
    assert RealESRGANPipeline().jpeg == "real"
    with pytest.raises(ValueError, match=r"degradation.jpeg='libjpeg'; allowed: real, differentiable"):
        RealESRGANPipeline(jpeg="libjpeg")


def test_repro_small_trains_with_the_real_codec_and_the_first_campaigns_codec_is_one_key_away(tmp_path):
    from conftest import compose_train

    assert compose_train([], tmp_path).degradation.jpeg == "real"
    assert compose_train(["experiment=repro_small"], tmp_path).degradation.jpeg == "real"
    first = compose_train(["experiment=repro_small", "degradation.jpeg=differentiable"], tmp_path)
    assert first.degradation.jpeg == "differentiable"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_jpeg_on_cuda_equals_cpu():
    x = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    q = torch.tensor([30.0, 50.0, 70.0, 95.0])
    cpu, gpu = jpeg_real(x, q), jpeg_real(x.cuda(), q.cuda()).cpu()
    assert (cpu - gpu).abs().max() <= 1 / 255 + 1e-6 and (cpu != gpu).float().mean() < 1e-3
