"""Interpretation tools: CSM, channel ablation with energy-preserving rescaling, DDR + CHI, the entry point."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from src.analysis import (ablate_features, capture_features, channel_ablation, channel_saliency, chi,
                          forward_ablated, pooled_features, resolve_layer, tsne)
from src.analysis.ablation import ablation_psnr
from src.analysis.common import feature_hook, to_uint8
from src.analysis.ddr import Sample

REPO = Path(__file__).resolve().parents[1]


class TwoChannel(nn.Module):
    """x4 SR toy: F_m has 3 channels; channel 0 feeds the output, channel 1 has zero weight into conv_last."""

    def __init__(self, dead_channel_1: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_first = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_last = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv_first.weight.copy_(torch.rand(3, 3, 3, 3, generator=g) * 0.2)
            self.conv_first.bias.fill_(0.1)
            if dead_channel_1:  # channel 1 is identically zero
                self.conv_first.weight[1].zero_()
                self.conv_first.bias[1] = 0.0
            self.conv_last.weight.zero_()
            self.conv_last.weight[:, 0] = 0.3
            self.conv_last.weight[:, 2] = 0.05
            self.conv_last.bias.zero_()
        self.scale = 4

    def forward(self, x):
        feat = F.relu(self.conv_first(F.interpolate(x, scale_factor=4, mode="nearest")))
        return self.conv_last(feat) + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random uint8 RGB image (low-frequency noise upsampled), so SR has something to restore."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, h // 8 + 1, w // 8 + 1))).float()
    big = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return (big.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _lr_of(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    t = torch.from_numpy(hr).permute(2, 0, 1)[None].float()
    lr = F.interpolate(t, scale_factor=1 / scale, mode="area")
    return lr[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


def test_csm_channel_feeding_output_is_more_salient():
    model = TwoChannel().eval()
    s = channel_saliency(model, _t(_lr_of(_image(32, 32, 0))))
    assert s.features.shape == s.csm.shape == (1, 3, 32, 32)
    assert s.scores[0] > s.scores[2] > s.scores[1] == 0
    assert float(s.csm.min()) == 0.0 and float(s.csm.max()) == pytest.approx(1.0)


def test_layer_other_than_conv_last_and_bad_layer_name():
    model = TwoChannel().eval()
    _, f = capture_features(model, _t(_lr_of(_image(16, 16, 1))), layer="conv_first")
    assert f.shape == (1, 3, 16, 16)  # the input of conv_first is the nearest-upsampled image
    with pytest.raises(ValueError, match="layer='nope'"):
        resolve_layer(model, "nope")


def test_rescaling_preserves_energy_exactly():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64) + 0.5
    drop = torch.rand(4, 6, generator=g) < 0.5
    drop[0] = False
    drop[1, :] = True
    drop[2, :] = False
    drop[2, 3] = True
    out = ablate_features(f, drop)
    assert torch.allclose(out[[0, 2, 3]].sum(dim=(1, 2, 3)), f[[0, 2, 3]].sum(dim=(1, 2, 3)), rtol=1e-12)
    assert torch.equal(out[0], f[0])  # nothing ablated: untouched
    assert torch.count_nonzero(out[1]) == 0 and torch.isfinite(out).all()  # all ablated: zeros, no NaN
    assert (out * drop[:, :, None, None]).abs().sum() == 0  # ablated channels are zero
    assert torch.equal(ablate_features(f, drop, rescale=False)[2, :3], f[2, :3])


def test_zero_weight_channel_ablation_leaves_psnr_unchanged():
    hr = _image(32, 32, 2)
    lr = _t(_lr_of(hr))
    only_1 = torch.tensor([[False, True, False]])
    nothing = torch.zeros(1, 3, dtype=torch.bool)
    model = TwoChannel().eval()
    base = ablation_psnr(model, lr, hr, nothing, scale=4)[0]
    # Zeroing a channel conv_last ignores changes nothing by itself ...
    assert ablation_psnr(model, lr, hr, only_1, scale=4, rescale=False)[0] == base
    # ... so with rescaling the result is exactly the unablated net with F_m scaled by Sum(F)/Sum(F').
    _, f = capture_features(model, lr)
    ratio = f.double().sum() / (f.double().sum() - f[:, 1].double().sum())
    with torch.no_grad(), feature_hook(model, lambda x: x * ratio.float()):
        scaled = model(lr)
    assert torch.allclose(forward_ablated(model, lr, only_1), scaled, atol=1e-6)
    # A zero-weight channel that is also dead contributes no energy: the factor is 1 and PSNR is unchanged.
    dead = TwoChannel(dead_channel_1=True).eval()
    base_dead = ablation_psnr(dead, lr, hr, nothing, scale=4)[0]
    assert ablation_psnr(dead, lr, hr, only_1, scale=4)[0] == base_dead
    assert ablation_psnr(dead, lr, hr, torch.tensor([[True, False, False]]), scale=4)[0] != base_dead


def test_channel_ablation_curve_shapes_and_orders():
    model = TwoChannel(dead_channel_1=True).eval()
    g = torch.Generator().manual_seed(0)
    pairs = []
    for hr in (_image(32, 32, 3), _image(32, 24, 4)):
        lr = _t(_lr_of(hr))
        with torch.no_grad():  # a "perfectly trained" model: HR is its own output plus a little noise
            target = model(lr) + 0.01 * torch.randn(model(lr).shape, generator=g)
        pairs.append((lr, to_uint8(target)[0]))
    r = channel_ablation(model, pairs, scale=4, progress=False)
    assert r.single.shape == (3,) and r.cumulative.shape == (4,)
    assert r.cumulative[0] == pytest.approx(r.baseline)
    assert r.drop[1] == 0 and r.drop[0] > r.drop[2] > 0
    assert list(r.order) == [0, 1, 2]
    ranked = channel_ablation(model, pairs, scale=4, order="drop_descending", progress=False)
    assert list(ranked.order) == [0, 2, 1] and ranked.cumulative[-1] == pytest.approx(r.cumulative[-1])
    with pytest.raises(ValueError, match="allowed"):
        channel_ablation(model, pairs, scale=4, order="sideways", progress=False)


def test_chi_high_for_separated_clusters_low_for_mixed():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 16)) * 10
    separated = centres[labels] + rng.normal(scale=0.1, size=(200, 16))
    mixed = rng.normal(size=(200, 16))
    assert chi(separated, labels) > 1000 * chi(mixed, labels)
    assert chi(mixed, labels) < 5
    emb = tsne(separated, seed=0)
    assert emb.shape == (200, 2) and np.array_equal(emb, tsne(separated, seed=0))
    assert chi(emb, labels) > 100
    with pytest.raises(ValueError, match="clusters"):
        chi(mixed, np.zeros(200))


def test_pooled_features_are_channel_means():
    model = TwoChannel().eval()
    imgs = [_lr_of(_image(32, 32, s)) for s in range(3)] + [_lr_of(_image(32, 16, 9))]
    samples = [Sample(str(i), "clean", im) for i, im in enumerate(imgs)]
    feats = pooled_features(model, samples, batch_size=2, progress=False)
    _, f = capture_features(model, _t(imgs[3]))
    assert feats.shape == (4, 3)
    assert np.allclose(feats[3], f.mean(dim=(2, 3))[0].numpy(), atol=1e-6)


def _tiny_srresnet(seed: int):
    srresnet = pytest.importorskip("src.models.srresnet")
    torch.manual_seed(seed)  # only to give the two stand-in models different weights
    return srresnet.MSRResNet(num_feat=16, num_block=2).eval()


def test_pipeline_end_to_end_writes_figures_and_csvs(tmp_path):
    pytest.importorskip("src.data.testsets")
    from src.analysis.tools import analyze

    models = {"a": _tiny_srresnet(0), "b": _tiny_srresnet(1)}
    hrs = [(f"im{i}", _image(48, 40, 10 + i)) for i in range(3)]
    pairs = [(n, _lr_of(hr), hr) for n, hr in hrs[:2]]
    summary = analyze(models, "all", tmp_path, pairs, hrs, scale=4, input_size=8, perplexity=5, progress=False)
    for name in ("csm.png", "csm_scores.png", "ablation_channels.png", "ablation_curve.png", "ddr_tsne.png",
                 "ddr_chi.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    with open(tmp_path / "ablation_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 17 and {r["model"] for r in rows} == {"a", "b"}
    with open(tmp_path / "csm_scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 16
    with open(tmp_path / "ddr_chi.csv") as f:
        chis = list(csv.DictReader(f))
    assert [r["n_samples"] for r in chis] == ["15", "15"]
    assert (tmp_path / "ddr_embedding.csv").exists()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved) == {"a", "b"} and set(saved["a"]) == {"ablation", "csm", "ddr"}
    assert summary["a"]["ddr"]["chi"] == pytest.approx(saved["a"]["ddr"]["chi"])


def test_cli_positional_tool_with_basicsr_pth(tmp_path):
    pytest.importorskip("src.data.testsets")
    srresnet = pytest.importorskip("src.models.srresnet")
    model = srresnet.MSRResNet(num_feat=32, num_block=4)  # the shape of conf/backbone/tiny.yaml
    torch.save({"params": model.state_dict()}, tmp_path / "tiny.pth")
    from src.data.imageio import write_image

    write_image(tmp_path / "hr.png", _image(32, 32, 5))
    cmd = [sys.executable, "-m", "src.analyze", "csm", f"ckpt={tmp_path / 'tiny.pth'}",
           "backbone=tiny",
           f"image={tmp_path / 'hr.png'}", f"out={tmp_path / 'out'}", "device=cpu", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "csm.png").exists() and (tmp_path / "out" / "csm_scores.csv").exists()
    assert not (tmp_path / "out" / "ablation_curve.png").exists()
    assert (tmp_path / "out" / ".hydra" / "config.yaml").exists()


def test_argv_tool_positional_and_paths_with_equals_are_quoted():
    from src.analyze import _preprocess_argv

    argv = ["analyze", "ddr", "ckpt=runs/train/dropout.p=0.7/checkpoints/last.ckpt",
            "ckpts=[runs/a=1/last.ckpt,plain.pth]", "labels=[a,b]", "out=x"]
    assert _preprocess_argv(argv) == [
        "analyze", "tool=ddr", 'ckpt="runs/train/dropout.p=0.7/checkpoints/last.ckpt"',
        'ckpts=["runs/a=1/last.ckpt",plain.pth]', "labels=[a,b]", "out=x"]
    assert _preprocess_argv(["analyze", "tool=csm"]) == ["analyze", "tool=csm"]
