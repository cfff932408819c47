"""Test degradations absent from Real-ESRGAN's training (src.data.testsets.UNSEEN_DEGRADATIONS): each against a
formula written here, under both protocols, seeded, cached and selectable by src.eval."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data import testsets as T
from src.eval import resolve_degradations


def synthetic(h=67, w=90, seed=0, gray=False):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    img = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(img[..., 0]) if gray else img


def test_names_and_parameters_are_the_documented_ones():
    assert T.UNSEEN_DEGRADATIONS == ("nearest", "motion", "jpeg15", "impulse")
    assert T.ALL_TEST_DEGRADATIONS[:8] == T.TEST_DEGRADATIONS and len(T.ALL_TEST_DEGRADATIONS) == 12
    assert T.UNSEEN_PARAMS == {"motion_length": 21, "jpeg_quality": 15, "impulse_density": 0.05}
    # outside what conf/degradation/realesrgan.yaml draws: JPEG q 30..95 in both orders
    assert T.UNSEEN_PARAMS["jpeg_quality"] < 30


@pytest.mark.parametrize("protocol", T.PROTOCOLS)
def test_nearest_picks_the_centre_pixel_of_each_cell(protocol):
    hr = T.modcrop(synthetic(), 4)
    lr = T.degrade_test_image(hr, "nearest", 4, 0, protocol)
    rows, cols = np.arange(hr.shape[0] // 4) * 4 + 2, np.arange(hr.shape[1] // 4) * 4 + 2
    assert np.array_equal(lr, hr[rows][:, cols])
    # PIL's nearest picks the same pixels (MATLAB's imresize 'nearest' too: round(4i - 1.5) in 1-based terms)
    pil = np.asarray(Image.fromarray(hr).resize((hr.shape[1] // 4, hr.shape[0] // 4), Image.NEAREST))
    assert np.array_equal(lr, pil)


def test_motion_kernel_is_a_horizontal_line_of_21_pixels():
    img = np.zeros((31, 41, 3), np.uint8)
    img[15, 20] = 210  # 210 / 21 = 10 exactly: the spread impulse is integral
    out = T.motion_blur(img, 21)
    expected = np.zeros((31, 41), np.uint8)
    expected[15, 10:31] = 10
    assert np.array_equal(out[..., 0], expected)
    with pytest.raises(ValueError, match="odd"):
        T.motion_blur(img, 20)


@pytest.mark.parametrize("protocol", T.PROTOCOLS)
def test_motion_then_the_protocols_bicubic(protocol):
    hr = T.modcrop(synthetic(), 4)
    x = hr.astype(np.float64)
    padded = np.pad(x, ((0, 0), (10, 10), (0, 0)), mode="reflect")  # numpy's reflect = OpenCV's reflect-101
    blurred = np.clip(np.round(sum(padded[:, k:k + hr.shape[1]] for k in range(21)) / 21), 0, 255).astype(np.uint8)
    if protocol == "official":
        expected = np.asarray(Image.fromarray(blurred).resize((hr.shape[1] // 4, hr.shape[0] // 4), Image.BICUBIC))
    else:
        expected = T.bicubic_downscale(blurred, 4)
    lr = T.degrade_test_image(hr, "motion", 4, 0, protocol)
    # the sum of 21 doubles may round the other way at exact .5 ties: at most one grey level, at most a few pixels
    assert np.abs(lr.astype(int) - expected.astype(int)).max() <= 1
    assert (lr != expected).mean() < 0.01


def test_jpeg15_is_quality_15_of_each_protocols_encoder():
    hr = T.modcrop(synthetic(128, 96), 4)
    lr = T.bicubic_downscale(hr, 4)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 15])
    assert np.array_equal(T.degrade_test_image(hr, "jpeg15"), cv2.cvtColor(cv2.imdecode(buf, 1), cv2.COLOR_BGR2RGB))
    small = np.asarray(Image.fromarray(hr).resize((24, 32), Image.BICUBIC))
    f = io.BytesIO()
    Image.fromarray(small).save(f, format="JPEG", quality=15)
    assert np.array_equal(T.degrade_test_image(hr, "jpeg15", protocol="official"),
                          np.asarray(Image.open(io.BytesIO(f.getvalue())).convert("RGB")))
    # and it is harsher than the protocol's q50
    ref = T.degrade_test_image(hr, "clean").astype(float)
    assert np.abs(T.degrade_test_image(hr, "jpeg15") - ref).mean() > np.abs(T.degrade_test_image(hr, "jpeg") - ref).mean()


@pytest.mark.parametrize("protocol", T.PROTOCOLS)
def test_impulse_is_salt_and_pepper_at_density_005(protocol):
    hr = T.modcrop(synthetic(400, 480, seed=3), 4)
    clean = T.degrade_test_image(hr, "clean", 4, 7, protocol)
    lr = T.degrade_test_image(hr, "impulse", 4, 7, protocol)
    u = T.noise_rng(hr, "impulse", 7).random(clean.shape[:2])
    expected = clean.copy()
    expected[u < 0.025] = 0
    expected[u >= 0.975] = 255
    assert np.array_equal(lr, expected)
    hit = (u < 0.025) | (u >= 0.975)
    assert abs(hit.mean() - 0.05) < 0.01  # 12,000 pixels: the density is what it says
    assert np.array_equal(T.degrade_test_image(hr, "impulse", 4, 7, protocol), lr)  # deterministic
    assert not np.array_equal(T.degrade_test_image(hr, "impulse", 4, 8, protocol), lr)  # seeded


def test_gray_stays_gray_under_official():
    hr = T.modcrop(synthetic(gray=True), 4)
    for name in T.UNSEEN_DEGRADATIONS:
        lr = T.degrade_test_image(hr, name, 4, 0, "official")
        assert lr.ndim == (3 if name == "jpeg15" else 2), name


def test_cached_like_the_others(tmp_path):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), synthetic(64, 80)[..., ::-1])
    first = T.load_test_pairs([path], "impulse", 4, 0, tmp_path / "cache")
    cached = list((tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 1 and cached[0].parent.name.startswith("impulse_x4_s0_")
    again = T.load_test_pairs([path], "impulse", 4, 0, tmp_path / "cache")
    assert np.array_equal(first[0][2], again[0][2])
    # the 8 keep their cache folders: adding the unseen set changed none of their keys
    assert T.cache_key("clean", 4, 0) != T.cache_key("nearest", 4, 0)
    assert "unseen" not in T.cache_key("clean", 4, 0)


def test_eval_selects_them():
    assert resolve_degradations("unseen") == ["nearest", "motion", "jpeg15", "impulse"]
    assert resolve_degradations(["clean", "nearest"]) == ["clean", "nearest"]
    with pytest.raises(ValueError, match="allowed: all, unseen"):
        resolve_degradations(["nearst"])


def test_evaluation_scores_them_beside_the_eight(tmp_path):
    from src.evaluation import BicubicUpsampler, evaluate

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), synthetic(48, 64, seed=i)[..., ::-1])
    res = evaluate(BicubicUpsampler(4, "official"), {"toy": paths}, ["clean", "nearest", "impulse"],
                   protocol="official", cache_dir=tmp_path / "cache")
    assert list(res["toy"]) == ["clean", "nearest", "impulse"]
    assert res["toy"]["nearest"]["n_images"] == 2 and set(res["toy"]["nearest"]["per_image"]) == {"im0", "im1"}
    # salt-and-pepper costs PSNR against the clean LR's enlargement
    assert res["toy"]["impulse"]["psnr_rgb"] < res["toy"]["clean"]["psnr_rgb"]
