"""The official code's conventions in the interpretation tools: L1-mass rescaling, RGB scoring, CSM norms and the
19 official hook points, each checked against an independent re-implementation of the official computation."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from src.analysis import ablate_features, capture_features, channel_ablation, channel_saliency
from src.analysis.ablation import describe
from src.analysis.common import to_uint8
from src.analysis.saliency import OFFICIAL_POINTS, channel_saliency_layers, normalise, official_layers
from tests.test_analysis import TwoChannel, _image, _lr_of, _t


def _official_psnr(sr: torch.Tensor, hr: np.ndarray) -> float:
    """CSM/metric.py calculate_psnr on an SR tensor converted as ToPILImage does (x255, cast = truncation)."""
    sr8 = (sr[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(np.float64)
    mse = np.mean((sr8 - hr.astype(np.float64)) ** 2)
    return 80.0 if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def test_l1_and_signed_rescaling_factors_exact():
    f = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    f[0, 0], f[0, 1], f[0, 2] = 1.0, -2.0, 0.5
    drop = torch.tensor([[True, False, False]])
    # L1: sum|F| = 4 + 8 + 2 = 14, kept 10 -> x1.4; signed: sum F = 4 - 8 + 2 = -2, kept -6 -> x1/3.
    assert torch.allclose(ablate_features(f, drop, "l1")[0, 1], torch.full((2, 2), -2.8, dtype=torch.float64))
    assert torch.allclose(ablate_features(f, drop, "sum")[0, 1], torch.full((2, 2), -2 / 3, dtype=torch.float64))
    assert torch.equal(ablate_features(f, drop, True), ablate_features(f, drop, "sum"))
    assert torch.equal(ablate_features(f, drop, "none")[0, 1:], f[0, 1:])
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)
    m = torch.rand(3, 5, generator=g) < 0.5
    m[:, 0] = False
    assert torch.allclose(ablate_features(r, m, "l1").abs().sum(dim=(1, 2, 3)), r.abs().sum(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="rescale='l2'.*l1, sum, none"):
        ablate_features(r, m, "l2")


def test_official_ablation_matches_independent_formula():
    """Each channel: zero it in the input of conv_last, divide by (sum|F| - sum|F_c|) / sum|F| (the official
    `*_lastob` forward), finish the net by hand, truncate to 8 bits and score RGB PSNR without a crop."""
    model = TwoChannel().eval()
    lr = _t(_lr_of(_image(32, 32, 7)))
    with torch.no_grad():  # a "well trained" model: HR is its output plus a little noise
        hr = to_uint8(model(lr) + 0.02 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))[0]
    r = channel_ablation(model, [(lr, hr)], scale=4, rescale="l1", score="rgb", progress=False)
    _, f = capture_features(model, lr)
    base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert r.baseline == pytest.approx(_official_psnr(model.conv_last(f) + base, hr), abs=2e-5)
        for c in range(3):
            kept = f.clone()
            kept[0, c] = 0
            kept = kept / ((f[0].abs().sum() - f[0, c].abs().sum()) / f[0].abs().sum())
            expected = _official_psnr(model.conv_last(kept) + base, hr)
            assert r.single[c] == pytest.approx(expected, abs=2e-5), c
    assert r.score == "rgb" and r.rescale == "l1" and "sum|F|/(sum|F|-sum|F_c|)" in describe(r)
    # The suite's score of the same outputs is there too, and differs (Y, cropped, rounded).
    y_base, y_single, _ = r.by_score["y"]
    assert y_single.shape == (3,) and y_base != pytest.approx(r.baseline, abs=1e-3)
    assert np.array_equal(r.by_score["rgb"][1], r.single)
    with pytest.raises(ValueError, match="score='psnr'.*y, rgb"):
        channel_ablation(model, [(lr, hr)], scale=4, score="psnr", progress=False)


def test_csm_norms():
    g = torch.tensor([[[[0.5, 1.0], [0.25, 0.5]], [[2.0, 0.0], [1.0, 4.0]]]])  # (1, 2, 2, 2)
    assert torch.equal(normalise(g, "max"), g / 4)
    per_channel = normalise(g, "channel")
    assert torch.equal(per_channel[0, 0], g[0, 0]) and torch.equal(per_channel[0, 1], g[0, 1] / 4)
    assert torch.equal(normalise(g + 1, "minmax"), g / 4)
    with pytest.raises(ValueError, match="norm='per'.*minmax, max, channel"):
        normalise(g, "per")
    model = TwoChannel().eval()
    lr = _t(_lr_of(_image(32, 32, 0)))
    s = channel_saliency(model, lr, norm="channel")
    top = s.csm.flatten(2).max(2).values[0]
    assert torch.allclose(top[[0, 2]], torch.ones(2)) and top[1] == 0  # channel 1 has no gradient at all
    m = channel_saliency(model, lr, norm="max")
    assert torch.allclose(m.csm, m.grad / m.grad.max()) and m.norm == "max"


def _official_forward_grads(net, x):
    """The official `MSRResNet_details` forward (CSM/ModelZoo/NN/srresnet_arch.py) returning its 19 points,
    their gradients of D (CSM/SaliencyModel/attributes.py attr_grad) via retain_grad, as in BackProp.py."""
    lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    feats = []
    feat = lrelu(net.conv_first(x))
    feats.append(feat)
    for block in net.body:
        feat = block(feat)
        feats.append(feat)
    out = lrelu(net.pixel_shuffle(net.upconv1(feat)))
    out = lrelu(net.pixel_shuffle(net.upconv2(out)))
    feats.append(out)
    out = lrelu(net.conv_hr(out))
    feats.append(out)
    sr = net.conv_last(out) + F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    for t in feats:
        t.retain_grad()
    h = (sr[:, :, :-1, :] - sr[:, :, 1:, :]) ** 2
    w = (sr[:, :, :, :-1] - sr[:, :, :, 1:]) ** 2
    torch.sqrt(h[:, :, :, :-1] + w[:, :, :-1, :]).sum().backward()
    return [t.grad[0].abs() for t in feats]


def test_official_19_points_match_the_official_forward():
    srresnet = pytest.importorskip("src.models.srresnet")
    torch.manual_seed(0)
    net = srresnet.MSRResNet(num_feat=4, num_block=16).eval()
    with torch.no_grad():  # a stronger head, so the SR output is nowhere flat: where it is, D's sqrt sits at 0
        for name, p in net.named_parameters():  # and the suite's eps there (the official code has none) matters
            if name.startswith(("upconv", "conv_hr", "conv_last")):
                p.mul_(5)
    points = official_layers(net)
    assert tuple(points) == OFFICIAL_POINTS and len(points) == 19
    assert points["first"] == "body.0" and points["b16"] == "body.15:out" and points["last"] == "conv_last"
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    got = channel_saliency_layers(net, x, points, norm="max")
    expected = _official_forward_grads(net, x.clone().requires_grad_(True))
    for (name, s), g in zip(got.items(), expected):
        assert s.grad.shape == (1, *g.shape), name
        assert torch.allclose(s.grad[0], g, rtol=1e-4, atol=1e-6 * float(g.max())), name
        assert torch.allclose(s.csm[0], g / g.max(), rtol=1e-4, atol=1e-6), name  # grad_abs_norm_singlechannel
    # One point at a time (the graph cut at that point) gives the same gradient as all 19 at once.
    for name in ("first", "b7", "b16", "hr"):
        one = channel_saliency(net, x, points[name])
        assert torch.allclose(one.grad, got[name].grad, rtol=1e-4, atol=1e-6 * float(got[name].grad.max())), name
    with pytest.raises(ValueError, match="layers=official needs"):
        official_layers(TwoChannel())


def test_pipeline_records_conventions_and_writes_a_grid_per_point(tmp_path):
    pytest.importorskip("src.data.testsets")
    srresnet = pytest.importorskip("src.models.srresnet")
    from src.analysis.tools import analyze

    torch.manual_seed(0)
    models = {"a": srresnet.MSRResNet(num_feat=4, num_block=2).eval()}
    hr = _image(24, 24, 3)
    pairs = [("im", _lr_of(hr), hr)]
    summary = analyze(models, "all", tmp_path, pairs, [("im", hr), ("im2", _image(24, 24, 4))], scale=4,
                      rescale="l1", score="rgb", csm_norm="channel", csm_layers="official", max_channels=4,
                      input_size=4, perplexity=2, progress=False)
    meta = json.loads((tmp_path / "analysis.json").read_text())
    assert meta["options"]["ablation"] == {"rescale": "l1", "score": "rgb", "order": "index"}
    assert meta["options"]["csm"] == {"norm": "channel", "layers": "official"}
    assert "largest single-channel drop" in meta["definitions"]["ablation.max_drop"]
    with open(tmp_path / "ablation_channels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["rescale"] for r in rows} == {"l1"} and {r["score"] for r in rows} == {"rgb"}
    assert all(r["psnr"] == r["psnr_rgb"] for r in rows) and any(r["psnr"] != r["psnr_y"] for r in rows)
    a = summary["a"]
    assert a["ablation"]["rescale"] == "l1" and set(a["ablation"]["scores"]) == {"y", "rgb"}
    assert a["ablation"]["max_drop"] == pytest.approx(a["ablation"]["scores"]["rgb"]["max_drop"])
    # 2 blocks -> first, b1, b2, hr, last; csm.png is the point reading `layer` (conv_last = last).
    assert list(a["csm"]["points"]) == ["first", "b1", "b2", "hr", "last"] and a["csm"]["layer"] == "conv_last"
    for name in ("first", "b1", "b2", "hr", "last"):
        assert (tmp_path / f"csm_{name}.png").stat().st_size > 1000
    assert (tmp_path / "csm.png").exists()
    with open(tmp_path / "csm_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 4 and {r["norm"] for r in rows} == {"channel"}
    assert {r["layer"] for r in rows if r["point"] == "b2"} == {"body.1:out"}
    with pytest.raises(ValueError, match="b9"):
        analyze(models, "csm", tmp_path, pairs, csm_layers=["b9"], progress=False)
