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
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from src.infer import output_paths, read_input, run_inference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKBONE = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 16, "num_block": 2, "upscale": 4}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from src.models.io import build_backbone

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
    from src.models.io import load_model

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
    from src.models.io import load_model

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
    from src.models.io import load_model

    pth = tmp_path / "net_g.pth"
    torch.save({"params_ema": load_model(ckpt).state_dict()}, pth)
    base = [f"ckpt={pth}", f"input={mixed_folder / 'rgb.png'}", f"output={tmp_path / 'o'}", "progress=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        good = compose("infer", overrides=base + ["backbone=srresnet", "backbone.num_feat=16", "backbone.num_block=2"])
        missing = compose("infer", overrides=base)
    assert main(good) == 0 and (tmp_path / "o" / "rgb.png").is_file()
    with pytest.raises(ValueError, match="backbone"):
        main(missing)
