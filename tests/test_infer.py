"""Tiled inference and the inference CLI."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.tiling import tiled_forward


class TinySR(nn.Module):
    """MSRResNet-like stand-in: conv trunk + PixelShuffle + bilinear skip (receptive radius ~7 LR px)."""

    def __init__(self, scale: int = 4, feat: int = 8, blocks: int = 2, seed: int = 0):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(3, feat, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(feat, feat, 3, padding=1), nn.LeakyReLU(0.1),
                                                  nn.Conv2d(feat, feat, 3, padding=1)) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(feat, feat * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.conv_last = nn.Conv2d(feat, 3, 3, padding=1)
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2

    def forward(self, x):
        f = self.conv_first(x)
        for b in self.body:
            f = f + b(f)
        out = self.conv_last(F.leaky_relu(self.up(f), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class WindowedSR(TinySR):
    """Fails like a window-attention model unless H and W are multiples of 8."""

    def forward(self, x):
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise RuntimeError(f"input {tuple(x.shape)} not a multiple of the window 8")
        return super().forward(x)


def _psnr(a, b):
    return 10 * math.log10(1.0 / F.mse_loss(a, b).item())


def _lr(b=1, h=37, w=50, seed=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tile,overlap", [(16, 16), (16, 8), (7, 9), (50, 8)])
def test_tiled_equals_untiled(tile, overlap):
    model = TinySR().eval()
    lr = _lr()
    full = tiled_forward(model, lr, 4)
    tiled = tiled_forward(model, lr, 4, tile=tile, overlap=overlap)
    assert tiled.shape == full.shape == (1, 3, 148, 200)
    assert (tiled - full).abs().max().item() < 1e-5
    ref = torch.rand(full.shape, generator=torch.Generator().manual_seed(3))
    assert abs(_psnr(tiled, ref) - _psnr(full, ref)) < 1e-4


def test_too_small_overlap_shows_seams():
    # guards the test above: without enough context the tiles do differ
    model = TinySR().eval()
    lr = _lr()
    diff = (tiled_forward(model, lr, 4, tile=16, overlap=0) - tiled_forward(model, lr, 4)).abs().max()
    assert diff.item() > 1e-3


def test_batch_and_3d_input():
    model = TinySR().eval()
    lr = _lr(b=2, h=21, w=30)
    tiled = tiled_forward(model, lr, 4, tile=8, overlap=10)
    for i in range(2):
        assert torch.allclose(tiled[i], tiled_forward(model, lr[i], 4), atol=1e-5)
    assert tiled_forward(model, lr[0], 4, tile=8, overlap=10).shape == (3, 84, 120)


def test_pad_multiple_for_windowed_models():
    model = WindowedSR().eval()
    lr = _lr(h=37, w=50)
    with pytest.raises(RuntimeError):
        tiled_forward(model, lr, 4)
    full = tiled_forward(model, lr, 4, pad_multiple=8)
    tiled = tiled_forward(model, lr, 4, tile=16, overlap=16, pad_multiple=8)
    assert full.shape == tiled.shape == (1, 3, 148, 200)
    assert (tiled - full).abs().max().item() < 1e-5


def test_windows_cover_every_pixel_on_the_grid():
    from src.tiling import _windows

    for size, tile, overlap, m in [(37, 16, 16, 1), (40, 16, 8, 8), (64, 5, 3, 4), (8, 33, 0, 8), (101, 7, 16, 1)]:
        ws = _windows(size, tile, overlap, m)
        assert len({w1 - w0 for *_, w0, w1 in ws}) == 1  # one input size for every tile
        covered = []
        for c0, c1, w0, w1 in ws:
            assert w0 % m == 0 and 0 <= w0 <= max(c0 - overlap, 0) and min(c1 + overlap, size) <= w1 <= size
            covered += range(c0, c1)
        assert covered == list(range(size))


def test_no_grad_and_bad_arguments():
    model = TinySR()
    lr = _lr(h=9, w=9)
    assert not tiled_forward(model, lr, 4, tile=4, overlap=2).requires_grad
    for kwargs, word in [({"tile": 0}, "tile"), ({"overlap": -1}, "overlap")]:
        with pytest.raises(ValueError, match=word):
            tiled_forward(model, lr, 4, **kwargs)
    with pytest.raises(ValueError, match="scale"):
        tiled_forward(model, lr, 2)
    with pytest.raises(ValueError, match="shape"):
        tiled_forward(model, lr[0, 0], 4)


# ---- the inference CLI -------------------------------------------------------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from src.infer import output_paths, read_input, run_inference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKBONE = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 16, "num_block": 2, "scale": 4}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from src.models.loading import build_backbone

    torch.manual_seed(0)
    net = build_backbone(BACKBONE)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"backbone": BACKBONE}}, path)
    return path


@pytest.fixture()
def mixed_folder(tmp_path):
    """8-bit RGB PNG, JPEG, gray, RGBA, 16-bit RGB and 16-bit gray PNGs, plus a corrupt and a truncated file."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    cv2.imwrite(str(d / "rgb.png"), rgb)
    cv2.imwrite(str(d / "photo.jpg"), rgb)
    cv2.imwrite(str(d / "gray.png"), rgb[:, :, 0])
    cv2.imwrite(str(d / "rgba.png"), np.dstack([rgb, np.full((13, 17), 128, np.uint8)]))
    cv2.imwrite(str(d / "deep.png"), rng.integers(0, 65536, (13, 17, 3), dtype=np.uint16))
    cv2.imwrite(str(d / "deepgray.png"), rng.integers(0, 65536, (13, 17), dtype=np.uint16))
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "truncated.jpg").write_bytes((d / "photo.jpg").read_bytes()[:60])
    (d / "notes.txt").write_text("not an image, ignored")
    return d


def test_read_input_depths_and_channels(mixed_folder):
    for name, depth in [("rgb.png", 8), ("photo.jpg", 8), ("gray.png", 8), ("rgba.png", 8), ("deep.png", 16),
                        ("deepgray.png", 16)]:
        img, d = read_input(mixed_folder / name)
        assert (img.shape, img.dtype, d) == ((13, 17, 3), np.float32, depth), name
        assert 0 <= img.min() and img.max() <= 1
    rgb, _ = read_input(mixed_folder / "rgb.png")
    assert np.array_equal(read_input(mixed_folder / "rgba.png")[0], rgb)  # alpha dropped, channel order kept
    deep = cv2.imread(str(mixed_folder / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert np.allclose(read_input(mixed_folder / "deep.png")[0], deep[:, :, ::-1] / 65535.0)  # full precision


def test_run_inference_mixed_folder_reports_failures(ckpt, mixed_folder, tmp_path, capsys):
    from src.infer import gather_inputs
    from src.models.loading import load_model

    inputs = gather_inputs(mixed_folder)
    assert [p.name for p in inputs] == sorted(["corrupt.png", "deep.png", "deepgray.png", "gray.png", "photo.jpg",
                                               "rgb.png", "rgba.png", "truncated.jpg"])
    summary = run_inference(load_model(ckpt), inputs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in summary.failed) == ["corrupt.png", "truncated.jpg"]
    assert all(str(p) in msg for p, msg in summary.failed.items())  # each error names its file
    assert len(summary.written) == 6
    for name, dtype in [("rgb", np.uint8), ("photo", np.uint8), ("gray", np.uint8), ("rgba", np.uint8),
                        ("deep", np.uint16), ("deepgray", np.uint16)]:
        out = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert out.shape == (52, 68, 3) and out.dtype == dtype, name
    assert "2 failed" in summary.line(tmp_path / "out") and "corrupt.png" in capsys.readouterr().err


def test_tiled_inference_matches_untiled_on_real_image(ckpt, data_root):
    from src.data.datasets import list_images
    from src.infer import upscale
    from src.models.loading import load_model

    model = load_model(ckpt)
    hr, _ = read_input(list_images(data_root / "Set5" / "HR")[0])
    lr = cv2.resize(hr, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)[:50, :37]
    hr = hr[:200, :148]
    full = torch.from_numpy(upscale(model, lr, 4))
    tiled = torch.from_numpy(upscale(model, lr, 4, tile=16, overlap=16))
    target = torch.from_numpy(hr)
    assert abs(_psnr(full, target) - _psnr(tiled, target)) < 1e-4
    assert (full - tiled).abs().max() < 1e-5


def test_output_names_never_clobber(tmp_path):
    a, b = tmp_path / "x.png", tmp_path / "x.jpg"
    assert {p.name for p in output_paths([a, b], tmp_path / "o").values()} == {"x_png.png", "x_jpg.png"}
    with pytest.raises(ValueError, match="overwrite input"):
        output_paths([tmp_path / "y.png"], tmp_path)


def test_cli_exit_code_and_summary(ckpt, mixed_folder, tmp_path):
    cmd = [sys.executable, "-m", "src.infer", f"ckpt={ckpt}", f"input={mixed_folder}", f"output={tmp_path / 'o'}",
           "tile=8", "device=auto", "progress=false"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1, res.stderr
    assert "upscaled 6/8 images" in res.stdout and "truncated.jpg" in res.stderr
    res = subprocess.run(cmd[:4] + [f"input={mixed_folder / 'rgb.png'}"] + cmd[5:], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "upscaled 1/1 images" in res.stdout
    assert not (REPO / "outputs").exists() or not any((REPO / "outputs").rglob("infer.log"))


def test_basicsr_pth_with_backbone_group(ckpt, mixed_folder, tmp_path):
    from hydra import compose, initialize_config_dir

    from src.infer import main
    from src.models.loading import load_model

    pth = tmp_path / "net_g.pth"
    torch.save({"params_ema": load_model(ckpt).state_dict()}, pth)
    base = [f"ckpt={pth}", f"input={mixed_folder / 'rgb.png'}", f"output={tmp_path / 'o'}", "progress=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        good = compose("infer", overrides=base + ["backbone=srresnet", "backbone.num_feat=16", "backbone.num_block=2"])
        inferred = compose("infer", overrides=base[:-2] + [f"output={tmp_path / 'i'}", "progress=false"])
        missing = compose("infer", overrides=[f"ckpt={tmp_path / 'other.pth'}", *base[1:]])
    assert main(good) == 0 and (tmp_path / "o" / "rgb.png").is_file()
    # Without backbone=, the architecture is read off the weights: the same output.
    assert main(inferred) == 0
    assert np.array_equal(cv2.imread(str(tmp_path / "i" / "rgb.png")), cv2.imread(str(tmp_path / "o" / "rgb.png")))
    torch.save({"params": {f"enc.{k}": v for k, v in load_model(ckpt).state_dict().items()}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="backbone"):
        main(missing)


# --- bounded inference: integer output tile by tile, automatic tiling, failures collected -----------------------

MEMORY_PROBE = """
import resource, sys
import numpy as np, torch
from src.models.srresnet import MSRResNet
from src.tiling import upscale_image
torch.set_num_threads(1)
torch.manual_seed(0)
model = MSRResNet(num_feat=4, num_block=1).eval()
h, w, tile = map(int, sys.argv[1:4])
img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
upscale_image(model, img[:96, :96], 4, tile=tile, overlap=8)  # warm-up: allocator arenas, kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = upscale_image(model, img, 4, tile=tile, overlap=8)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, out.nbytes, out.dtype, out.shape)
"""


def test_tiled_inference_peak_memory_is_the_output_plus_a_tile():
    """Peak RSS growth stays under the uint8 output + a few tile-sized float tensors + 24 MiB; a float copy of
    the output alone (4x the uint8 one) would break the bound."""
    h, w, tile, overlap, feat = 800, 600, 64, 8, 4
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(h), str(w), str(tile)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    grown, out_bytes, dtype, shape = res.stdout.split(maxsplit=3)
    assert dtype == "uint8" and shape.strip() == f"({h * 4}, {w * 4}, 3)"
    grown, out_bytes = int(grown), int(out_bytes)
    assert out_bytes == h * 4 * w * 4 * 3
    # widest activation of a x4 MSRResNet: num_feat*4 channels at 2x = num_feat*16 floats per LR px of a window
    window = tile + 2 * overlap
    tile_bytes = 4 * max(feat * 16, 3 * 16) * window * window
    bound = out_bytes + 6 * tile_bytes + 24 * 2**20
    assert grown < bound, f"peak RSS grew {grown / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    assert 4 * out_bytes > bound  # so the float output the old path kept could not pass


def test_upscale_image_equals_the_float_path(ckpt):
    from src.models.loading import load_model
    from src.tiling import upscale_image

    model = load_model(ckpt)
    rng = np.random.default_rng(1)
    for dtype, maxval in ((np.uint8, 255), (np.uint16, 65535)):
        img = rng.integers(0, maxval + 1, (37, 29, 3), dtype=dtype)
        x = torch.from_numpy(img.astype(np.float32) / maxval).permute(2, 0, 1)[None]
        ref = tiled_forward(model, x, 4, tile=16, overlap=8)[0].clamp(0, 1).permute(1, 2, 0).numpy()
        ref = np.round(ref * np.float32(maxval)).astype(dtype)
        for tile in (None, 16):
            out = upscale_image(model, img, 4, tile=tile, overlap=8)
            assert out.dtype == dtype and out.shape == (148, 116, 3)
            assert np.abs(out.astype(np.int64) - ref).max() <= 1, (dtype, tile)  # float rounding at most
        rgb = upscale_image(model, img, 4, tile=16, overlap=8)
        assert np.array_equal(upscale_image(model, img, 4, tile=16, overlap=8, bgr=True), rgb[:, :, ::-1])


def test_an_image_too_large_for_memory_is_tiled_automatically(ckpt, tmp_path, monkeypatch, capsys):
    import src.tiling as tiling
    from src.models.loading import load_model

    model = load_model(ckpt)
    img = np.random.default_rng(2).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), img)
    run_inference(model, [tmp_path / "big.png"], tmp_path / "a", progress=False)
    per_px = tiling.bytes_per_pixel(model)
    # free memory for a 32 px tile but not for the 60x70 image: the plan picks a tile below the image size
    monkeypatch.setattr(tiling, "available_bytes", lambda device="cpu": int(2 * per_px * 50 * 50))
    tile, note = tiling.plan_tile(model, 60, 70, None, 8)
    assert tile is not None and tile < 70 and "upscaling in tiles of" in note
    assert tiling.plan_tile(model, 60, 70, 50, 8) == (50, None)  # an explicit tile is kept
    summary = run_inference(model, [tmp_path / "big.png"], tmp_path / "b", overlap=8, progress=False)
    assert not summary.failed and "upscaling in tiles of" in capsys.readouterr().err
    a, b = (cv2.imread(str(tmp_path / d / "big.png")) for d in ("a", "b"))
    assert a.shape == (240, 280, 3) and np.abs(a.astype(int) - b).max() <= 1
    # not even the smallest tile fits: refused with the numbers, recorded as that image's failure
    monkeypatch.setattr(tiling, "available_bytes", lambda device="cpu": 1024)
    with pytest.raises(ValueError, match=r"per 32 px tile, more than half of the 0 MiB free on cpu"):
        tiling.plan_tile(model, 600, 700, None, 8)
    summary = run_inference(model, [tmp_path / "big.png"], tmp_path / "c", progress=False)
    assert list(summary.failed) == [tmp_path / "big.png"] and "MiB free on cpu" in summary.failed[tmp_path / "big.png"]


def test_one_failing_image_never_stops_the_folder(ckpt, mixed_folder, tmp_path, monkeypatch):
    import src.infer as infer
    from src.models.loading import load_model

    real = infer.upscale_image

    def flaky(model, img, *a, **k):
        if img.shape[:2] == (13, 17) and img.dtype == np.uint16:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(model, img, *a, **k)

    monkeypatch.setattr(infer, "upscale_image", flaky)
    inputs = infer.gather_inputs(mixed_folder)
    summary = run_inference(load_model(ckpt), inputs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in summary.failed) == ["corrupt.png", "deep.png", "deepgray.png", "truncated.jpg"]
    assert summary.failed[mixed_folder / "deep.png"].startswith(f"{mixed_folder / 'deep.png'}: out of memory: this "
                                                                 "17x13 px image needs ~")
    assert summary.failed[mixed_folder / "deep.png"].endswith("; pass tile=256 (or smaller) to upscale it in tiles")
    assert len(summary.written) == 4


def test_upscaling_a_read_only_image_warns_about_nothing():
    import warnings

    import numpy as np

    from src.tiling import upscale_image

    img = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img.setflags(write=False)  # as a memory-mapped cache file reads
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = upscale_image(nn.Upsample(scale_factor=2, mode="nearest"), img, 2)
    assert np.array_equal(out, img.repeat(2, 0).repeat(2, 1))
