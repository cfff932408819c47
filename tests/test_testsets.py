"""The paper's 8 test degradations (src.data.testsets): exact components, seeding, caching, CLI."""
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.data import testsets as T
from src.data.datasets import default_data_root
from src.data.imageio import read_image, write_image

REPO = Path(__file__).resolve().parents[1]
BABY = default_data_root() / "Set5" / "HR" / "baby.png"


def synthetic(h=67, w=90, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).round().astype(np.uint8)


def test_names_and_shapes():
    assert T.TEST_DEGRADATIONS == ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
    hr = synthetic()
    assert T.modcrop(hr, 4).shape == (64, 88, 3)
    for name in T.TEST_DEGRADATIONS:
        lr = T.degrade_test_image(hr, name, scale=4, seed=0)
        assert lr.dtype == np.uint8 and lr.shape == (16, 22, 3)
    with pytest.raises(ValueError, match="allowed"):
        T.degrade_test_image(hr, "n+b")


def test_components_compose_in_paper_order():
    hr = T.modcrop(synthetic(), 4)
    blurred = T.gaussian_blur(hr, 21, 2.0)
    clean_b = T.bicubic_downscale(blurred, 4)
    assert np.array_equal(T.degrade_test_image(hr, "blur"), clean_b)
    assert np.array_equal(T.degrade_test_image(hr, "clean"), T.bicubic_downscale(hr, 4))
    noisy = T.add_gaussian_noise(clean_b, 20.0, T.noise_rng(hr, "b+n+j", 0))
    assert np.array_equal(T.degrade_test_image(hr, "b+n+j"), T.jpeg_compress(noisy, 50))


def test_blur_kernel_is_gaussian_21_sigma_2():
    img = np.zeros((41, 41, 3), np.uint8)
    img[20, 20] = 255
    out = T.gaussian_blur(img, 21, 2.0).astype(np.float64)
    ax = np.arange(-10, 11)
    ref = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / 8.0)
    ref = 255 * ref / ref.sum()
    assert np.abs(out[10:31, 10:31, 0] - ref).max() <= 0.5


def test_jpeg_equals_opencv_encoder():
    hr = synthetic(128, 96)
    lr = T.bicubic_downscale(hr, 4)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), 50])
    ref = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert ok and np.array_equal(T.degrade_test_image(hr, "jpeg"), ref)


def test_noise_sigma_20_on_flat_image():
    hr = np.full((512, 512, 3), 128, np.uint8)
    lr = T.degrade_test_image(hr, "noise").astype(np.float64)
    assert abs(lr.std() - 20) < 0.5 and abs(lr.mean() - 128) < 0.5


def test_seeding_per_image_degradation_and_seed():
    a, b = synthetic(seed=1), synthetic(seed=2)
    n = T.degrade_test_image(a, "noise", seed=0)
    assert np.array_equal(n, T.degrade_test_image(a.copy(), "noise", seed=0))
    assert not np.array_equal(n, T.degrade_test_image(a, "noise", seed=1))
    # each degradation draws its own noise: on a flat image blur changes nothing, the noise does
    flat = np.full_like(a, 100).astype(np.int16)
    noise_only = T.degrade_test_image(flat.astype(np.uint8), "noise").astype(np.int16) - 100
    blur_noise = T.degrade_test_image(flat.astype(np.uint8), "b+n").astype(np.int16) - 100
    assert not np.array_equal(noise_only, blur_noise)
    assert not np.array_equal(n, T.degrade_test_image(b, "noise", seed=0)[: n.shape[0], : n.shape[1]])


_DIGEST_SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {repo!r})
from tests.test_testsets import synthetic
from src.data import testsets as T
hr = synthetic()
print(hashlib.sha256(b"".join(T.degrade_test_image(hr, n, 4, 3).tobytes() for n in T.TEST_DEGRADATIONS)).hexdigest())
"""


def test_reproducible_across_processes():
    hr = synthetic()
    here = hashlib.sha256(b"".join(T.degrade_test_image(hr, n, 4, 3).tobytes()
                                   for n in T.TEST_DEGRADATIONS)).hexdigest()
    env_cmd = [sys.executable, "-c", _DIGEST_SCRIPT.format(repo=str(REPO))]
    # a fixed hash seed differs from this process's random one: nothing may depend on Python's hash()
    out = subprocess.run(env_cmd, capture_output=True, text=True, cwd=REPO, check=True,
                         env={"PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.stdout.strip() == here


def test_load_test_pairs_caches_on_disk(tmp_path):
    paths = []
    for i, shape in enumerate([(67, 90), (40, 52)]):
        paths.append(write_image(tmp_path / "hr" / f"img{i}.png", synthetic(*shape, seed=i)))
    cache = tmp_path / "cache"
    first = T.load_test_pairs(paths, "b+n+j", scale=4, seed=0, cache_dir=cache)
    files = sorted(cache.rglob("*.png"))
    assert len(files) == 2 and all(T.cache_key("b+n+j", 4, 0) in str(f) for f in files)
    for (p, hr, lr), path in zip(first, paths):
        assert p == path and hr.shape == T.modcrop(read_image(path), 4).shape
        assert np.array_equal(lr, T.degrade_test_image(hr, "b+n+j", 4, 0))
    # a cached file is what the second call returns: overwrite one with a marker image of the right size
    marker = np.zeros_like(first[0][2])
    write_image(files[0] if "img0" in files[0].name else files[1], marker)
    second = T.load_test_pairs(paths, "b+n+j", scale=4, seed=0, cache_dir=cache)
    assert np.array_equal(second[0][2], marker)
    # a truncated cache file is recomputed
    target = files[0] if "img0" in files[0].name else files[1]
    target.write_bytes(b"\x89PNG broken")
    third = T.load_test_pairs(paths, "b+n+j", scale=4, seed=0, cache_dir=cache)
    assert np.array_equal(third[0][2], first[0][2])
    assert T.cache_key("b+n+j", 4, 1) != T.cache_key("b+n+j", 4, 0) != T.cache_key("b+n", 4, 0)
    assert T.load_test_pairs(paths, "clean", 4, 0)[1][2].shape == (10, 13, 3)  # no cache_dir: no files


def test_cli_writes_png_folders(tmp_path):
    for i in range(2):
        write_image(tmp_path / "Set" / "HR" / f"im{i}.png", synthetic(48, 40, seed=i))
    T.main([str(tmp_path / "Set"), str(tmp_path / "out"), "degradations=clean,b+n"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["HR", "b+n", "clean"]
    lr = read_image(tmp_path / "out" / "b+n" / "im1.png")
    hr = read_image(tmp_path / "out" / "HR" / "im1.png")
    assert hr.shape == (48, 40, 3) and np.array_equal(lr, T.degrade_test_image(hr, "b+n"))


@pytest.mark.skipif(not BABY.is_file(), reason=f"{BABY} not found (set SR_DATA_ROOT)")
def test_real_image_all_degradations():
    hr = read_image(BABY)
    psnr = {}
    for name in T.TEST_DEGRADATIONS:
        lr = T.degrade_test_image(hr, name).astype(np.float64)
        clean = T.degrade_test_image(hr, "clean").astype(np.float64)
        psnr[name] = 10 * np.log10(255**2 / max(((lr - clean) ** 2).mean(), 1e-12))
    assert psnr["clean"] > 100
    assert psnr["noise"] < 23 and psnr["b+n+j"] < psnr["b+j"]


# --- the official protocol: the paper's own script, re-implemented here step by step --------------------------
def _official_reference(hr, name, seed=0):
    """dataset/add_degradations.py of the official repository, written out with PIL/cv2/numpy calls."""
    from PIL import Image

    hr = T.modcrop(hr, 4)
    steps = T.steps_of(name)
    img = Image.fromarray(hr)
    if "b" in steps:
        img = Image.fromarray(cv2.GaussianBlur(np.array(img), (21, 21), 2).astype(np.uint8))
    w, h = img.size
    img = img.resize((int(w / 4), int(h / 4)), Image.BICUBIC)
    if "n" in steps:
        ar = np.array(img)
        ar = ar.transpose(2, 0, 1) if ar.ndim == 3 else ar[None, ...]
        x = ar.astype(np.float32) / 255.
        gauss = T.noise_rng(hr, name, seed).normal(loc=0, scale=20 / 255., size=x.shape)
        noisy = np.clip(x + gauss, 0, 1).astype(np.float32)
        ar = np.clip(noisy * 255, 0, 255).astype(np.uint8)
        img = Image.fromarray(ar[0] if ar.shape[0] == 1 else ar.transpose(1, 2, 0))
    if "j" in steps:
        import io

        with io.BytesIO() as f:
            img.save(f, format="JPEG", quality=50)
            f.seek(0)
            img = Image.open(f).convert("RGB")
    return np.array(img)


@pytest.mark.parametrize("gray", [False, True])
def test_official_protocol_equals_the_official_script(gray):
    hr = synthetic(70, 93, seed=4)
    if gray:
        hr = np.ascontiguousarray(hr[..., 1])
    for name in T.TEST_DEGRADATIONS:
        ours = T.degrade_test_image(hr, name, scale=4, seed=0, protocol="official")
        ref = _official_reference(hr, name)
        assert ours.shape == ref.shape and np.array_equal(ours, ref), name
        # gray stays one channel until JPEG, which decodes it as RGB (three equal channels)
        if gray:
            assert ours.ndim == (3 if "j" in T.steps_of(name) else 2)
    # the official LR differs from the literature's (PIL's bicubic, truncated noise, PIL's JPEG)
    rgb = synthetic(70, 93, seed=4)
    assert not np.array_equal(T.degrade_test_image(rgb, "b+n+j", protocol="official"),
                              T.degrade_test_image(rgb, "b+n+j", protocol="literature"))


def test_official_noise_is_sigma_20_on_255_and_truncated():
    flat = np.full((400, 400, 3), 128, np.uint8)
    lr = T.degrade_test_image(flat, "noise", protocol="official").astype(np.float64)
    # truncation of x*255 lowers the mean by half a grey level
    assert abs(lr.std() - 20) < 0.3 and abs(lr.mean() - 127.5) < 0.15


def test_official_gray_images_stay_gray_and_are_read_as_rgb(tmp_path):
    gray = synthetic(48, 40, seed=3)[..., 0]
    path = write_image(tmp_path / "g.png", gray)
    assert T.read_test_hr(path, "official").shape == (48, 40)
    assert T.read_test_hr(path, "literature").shape == (48, 40, 3)
    (_, hr, lr), = T.load_test_pairs([path], "noise", 4, 0, protocol="official")
    assert hr.shape == (48, 40, 3) and lr.shape == (12, 10, 3)
    assert np.array_equal(lr[..., 0], lr[..., 2]) and np.array_equal(hr[..., 0], gray)  # gray noise, replicated
    assert np.array_equal(lr[..., 0], T.degrade_test_image(gray, "noise", 4, 0, "official"))
    # the literature protocol draws colour noise on the replicated image
    (_, _, lit), = T.load_test_pairs([path], "noise", 4, 0, protocol="literature")
    assert not np.array_equal(lit[..., 0], lit[..., 2])
    with pytest.raises(ValueError, match="protocol='matlab' is unknown; allowed: literature, official"):
        T.degrade_test_image(synthetic(), "clean", protocol="matlab")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB array for protocol=literature"):
        T.degrade_test_image(gray, "clean", protocol="literature")
    assert T.cache_key("clean", 4, 0, "official") != T.cache_key("clean", 4, 0, "literature")


# --- the literature protocol: MATLAB imresize, borders included ---------------------------------------------------
def test_matlab_downscale_equals_antialiased_bicubic_on_a_symmetrically_padded_image():
    import torch
    import torch.nn.functional as F

    hr = T.modcrop(synthetic(70, 93, seed=5), 4)
    ours = T.bicubic_downscale(hr, 4)
    # MATLAB mirrors the image at its edges (symmetric padding); with 16 mirrored px the antialiased cubic
    # (a = -0.5, width 16 px at x1/4) never reaches the end of the padded image, so the centre is MATLAB's result.
    pad = np.pad(hr, ((16, 16), (16, 16), (0, 0)), mode="symmetric")
    x = torch.from_numpy(pad).permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(pad.shape[0] // 4, pad.shape[1] // 4), mode="bicubic", align_corners=False,
                      antialias=True)[0].permute(1, 2, 0).numpy()[4:-4, 4:-4]
    ref = np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)
    assert ours.shape == (17, 23, 3)
    assert np.abs(ours.astype(int) - ref).max() <= 1 and (ours != ref).mean() < 1e-3
    # the old truncated kernel differed at the borders by several grey levels
    trunc = F.interpolate(torch.from_numpy(hr).permute(2, 0, 1)[None].double(), size=ours.shape[:2], mode="bicubic",
                          align_corners=False, antialias=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(np.round(trunc) - ref).max() > 1


def test_matlab_upscale_equals_direct_formula():
    img = synthetic(7, 6, seed=6)
    ours = T.bicubic_upscale(img, 4)

    def cubic(t):
        t = abs(t)
        return 1.5 * t**3 - 2.5 * t**2 + 1 if t <= 1 else (-0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t < 2 else 0.0)

    def mirror(i, n):  # 0-based, symmetric: -1 -> 0, n -> n - 1
        return -i - 1 if i < 0 else (2 * n - 1 - i if i >= n else i)

    def taps(n_in, o):  # output o (0-based) of an x4 enlargement: centre u = (o + 1)/4 + 0.5 (1 - 1/4), 1-based
        u = (o + 1) / 4 + 0.375
        js = range(int(np.floor(u - 2)), int(np.floor(u - 2)) + 6)
        w = np.array([cubic(u - j) for j in js])
        return [mirror(j - 1, n_in) for j in js], w / w.sum()

    ref = np.zeros((28, 24, 3))
    for r in range(28):
        ri, rw = taps(7, r)
        for c in range(24):
            ci, cw = taps(6, c)
            ref[r, c] = np.einsum("i,j,ijk->k", rw, cw, img[np.ix_(ri, ci)].astype(np.float64))
    assert ours.shape == (28, 24, 3)
    assert np.array_equal(ours, np.clip(np.floor(ref + 0.5), 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        T.matlab_imresize(img.astype(np.float32), 0.5)


# --- test sets with their own LR images ------------------------------------------------------------------------
def test_given_lr_matched_by_name_with_clear_errors(tmp_path):
    hr_dir, lr_dir = tmp_path / "Set" / "HR", tmp_path / "Set" / "LR"
    hrs = [write_image(hr_dir / f"{n}.png", synthetic(48, 41, seed=i)) for i, n in enumerate(["0801", "baby", "c"])]
    # NTIRE naming (x4 + track letter), the scale alone, and the plain stem
    for name, hr in zip(["0801x4m.png", "babyx4.png", "c.png"], hrs):
        write_image(lr_dir / name, T.bicubic_downscale(read_image(hr), 4))
    pairs = T.load_given_pairs(hrs, lr_dir, 4)
    assert [p.name for p, _, _ in pairs] == ["0801.png", "baby.png", "c.png"]
    for path, hr, lr in pairs:
        # the HR is cropped at the bottom/right to 4x the LR size (41 -> 40)
        assert hr.shape == (48, 40, 3) and lr.shape == (12, 10, 3)
        assert np.array_equal(hr, read_image(path)[:48, :40])
    # an LR file without an HR file, and an HR file without an LR file: both named in one error
    write_image(lr_dir / "stray.png", np.zeros((12, 10, 3), np.uint8))
    (lr_dir / "c.png").unlink()
    with pytest.raises(ValueError) as e:
        T.load_given_pairs(hrs, lr_dir, 4)
    assert "HR files without an LR file" in str(e.value) and "c.png" in str(e.value) and "stray.png" in str(e.value)
    (lr_dir / "stray.png").unlink()
    write_image(lr_dir / "c.png", np.zeros((11, 10, 3), np.uint8))  # 44 px tall at x4, the HR is 48
    with pytest.raises(ValueError, match=r"c\.png is 10x11 px but .*c\.png is 41x48; at x4 the HR image must be 40x44"):
        T.load_given_pairs(hrs, lr_dir, 4)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        T.match_given_lr(hrs, tmp_path / "nowhere")


def test_cli_protocol_and_set_names(tmp_path, capsys):
    gray = synthetic(48, 40, seed=1)[..., 0]
    write_image(tmp_path / "root" / "Gray" / "HR" / "g.png", gray)
    T.main(["Gray", str(tmp_path / "out"), "protocol=official", f"root={tmp_path / 'root'}",
            "degradations=[clean,noise,jpeg]"])
    assert "images" in capsys.readouterr().out
    from src.data.imageio import decode_image

    # the files are what the official script saves (gray stays gray until JPEG) and what the evaluation scores
    noise = decode_image(tmp_path / "out" / "noise" / "g.png")
    assert noise.ndim == 2 and np.array_equal(noise, T.degrade_test_image(gray, "noise", 4, 0, "official"))
    assert decode_image(tmp_path / "out" / "jpeg" / "g.png").ndim == 3
    (_, _, lr), = T.load_test_pairs([tmp_path / "root" / "Gray" / "HR" / "g.png"], "noise", protocol="official")
    assert np.array_equal(lr[..., 0], noise)
    with pytest.raises(SystemExit, match=r"protocol='matlab'; allowed: literature, official"):
        T.main(["Gray", str(tmp_path / "x"), "protocol=matlab"])
    with pytest.raises(SystemExit, match=r"'--protocol': settings are key=value, not --flags; write protocol=official"):
        T.main(["Gray", str(tmp_path / "x"), "--protocol", "official"])
    helptext = subprocess.run([sys.executable, "-m", "src.data.testsets", "--help"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
    assert "protocol=literature" in helptext and "<root>/<set>/HR" in helptext
