"""Backbones and dropout placement: shapes, parameter counts, BasicSR key layout, dropout semantics, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from src.models.dropout import DIMS, POSITIONS, FeatureDropout, allowed_positions, placement, validate_dropout
from src.models.rrdb import RRDBNet
from src.models.srresnet import MSRResNet
from src.models.swinir import SwinIR

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"

# Small variants; srresnet/rrdb/swinir_deep have 16 trunk blocks so every bN position fits.
VARIANTS = {
    "srresnet": lambda scale, **kw: MSRResNet(num_feat=8, num_block=16, scale=scale, **kw),
    "tiny": lambda scale, **kw: MSRResNet(num_feat=32, num_block=4, scale=scale, **kw),
    "rrdb": lambda scale, **kw: RRDBNet(scale=scale, num_feat=8, num_block=16, num_grow_ch=4, **kw),
    "swinir": lambda scale, **kw: SwinIR(img_size=8, embed_dim=12, depths=[2] * 4, num_heads=[2] * 4,
                                         window_size=4, scale=scale, **kw),
    "swinir_deep": lambda scale, **kw: SwinIR(img_size=8, embed_dim=8, depths=[1] * 16, num_heads=[2] * 16,
                                              window_size=4, scale=scale, **kw),
}
TRUNK = {"srresnet": 16, "tiny": 4, "rrdb": 16, "swinir": 4, "swinir_deep": 16}
SCALES = {"srresnet": (2, 3, 4), "tiny": (2, 3, 4), "rrdb": (1, 2, 4), "swinir": (2, 3, 4), "swinir_deep": (4,)}
CASES = [(v, pos) for v in VARIANTS for pos in allowed_positions(TRUNK[v])]


def build(variant, scale=4, position="none", dim="channel", p=0.0):
    torch.manual_seed(0)
    return VARIANTS[variant](scale, dropout_position=position, dropout_dim=dim, dropout_p=p)


def lr(batch=2, size=8):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def key_templates(model):
    return sorted({re.sub(r"\.\d+(?=\.)", ".#", k) for k in model.state_dict()})


@pytest.mark.parametrize("variant,scale", [(v, s) for v in VARIANTS for s in SCALES[v]])
def test_output_shape(variant, scale):
    model = build(variant, scale).eval()
    with torch.no_grad():
        out = model(lr(size=8))
    assert out.shape == (2, 3, 8 * scale, 8 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls,kwargs,expected", [
    (MSRResNet, {"scale": 4}, 1_517_571),
    (MSRResNet, {"scale": 3}, 1_554_499),
    (MSRResNet, {"scale": 2}, 1_369_859),
    (RRDBNet, {"scale": 4}, 16_697_987),
    (RRDBNet, {"scale": 2}, 16_703_171),
    (SwinIR, {"scale": 4}, 11_900_199),  # SwinIR-M classical x4 ("11.9M" in the SwinIR paper)
], ids=["srresnet-x4", "srresnet-x3", "srresnet-x2", "rrdb-x4", "rrdb-x2", "swinir-x4"])
def test_full_size_parameter_counts(cls, kwargs, expected):
    with torch.device("meta"):  # counting needs shapes only
        model = cls(**kwargs, dropout_position="all", dropout_p=0.5)
    assert n_params(model) == expected


def test_state_dict_keys_match_basicsr_and_official_layout():
    """Key templates (indices collapsed) as printed from BasicSR 1.4.2 / official SwinIR."""
    conv = lambda name: [f"{name}.bias", f"{name}.weight"]  # noqa: E731
    srresnet = sorted(conv("body.#.conv1") + conv("body.#.conv2") + conv("conv_first") + conv("conv_hr")
                      + conv("conv_last") + conv("upconv1") + conv("upconv2"))
    rrdb = sorted([k for r in (1, 2, 3) for c in range(1, 6) for k in conv(f"body.#.rdb{r}.conv{c}")]
                  + conv("conv_body") + conv("conv_first") + conv("conv_hr") + conv("conv_last")
                  + conv("conv_up1") + conv("conv_up2"))
    blk = "layers.#.residual_group.blocks.#."
    swinir = sorted(conv("conv_after_body") + conv("conv_before_upsample.#") + conv("conv_first")
                    + conv("conv_last") + conv("layers.#.conv") + conv(blk + "attn.proj") + conv(blk + "attn.qkv")
                    + [blk + "attn.relative_position_bias_table", blk + "attn.relative_position_index",
                       blk + "attn_mask"] + conv(blk + "mlp.fc1") + conv(blk + "mlp.fc2") + conv(blk + "norm1")
                    + conv(blk + "norm2") + conv("norm") + conv("patch_embed.norm") + conv("upsample.#"))
    for variant, expected in (("srresnet", srresnet), ("rrdb", rrdb), ("swinir", swinir)):
        for position in ("none", "last", "b4", "quarter", "all"):
            model = build(variant, 4, position, "channel", 0.5)
            assert key_templates(model) == expected, (variant, position)
    sd = build("swinir", 4).state_dict()
    assert sd["layers.0.residual_group.blocks.1.attn_mask"].shape == (4, 16, 16)  # 8x8 patch, 4x4 windows
    assert "layers.0.residual_group.blocks.0.attn_mask" not in sd  # unshifted blocks store no mask
    assert {k for k in sd if k.startswith("upsample.")} == {"upsample.0.weight", "upsample.0.bias",
                                                            "upsample.2.weight", "upsample.2.bias"}


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("variant,position", [c for c in CASES if c[1] != "none"])
def test_dropout_train_random_eval_deterministic(variant, position, dim):
    model = build(variant, 4, position, dim, 0.5)
    reference = build(variant, 4)  # same seed, so same weights
    x = lr()
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        model.eval()
        a, b = model(x), model(x)
        reference.eval()
        assert torch.equal(a, b)
        torch.testing.assert_close(a, reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("variant,position", CASES)
def test_p_zero_equals_no_dropout(variant, position):
    model = build(variant, 4, position, "element", 0.0).train()
    reference = build(variant, 4).train()
    x = lr()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def _record_dropout(model):
    records = []
    handles = [m.register_forward_hook(lambda m, i, o: records.append((m, i[0].detach(), o.detach())))
               for m in model.modules() if isinstance(m, FeatureDropout)]
    return records, handles


@pytest.mark.parametrize("variant,position", [c for c in CASES if c[1] in ("last", "b4", "quarter", "all")])
def test_channel_dropout_zeroes_whole_channels(variant, position):
    p = 0.5
    model = build(variant, 4, position, "channel", p).train()
    records, handles = _record_dropout(model)
    with torch.no_grad():
        model(lr(batch=4))
    expected_sites = {"last": 1, "b4": 1, "quarter": math.ceil(TRUNK[variant] / 4), "all": TRUNK[variant]}
    assert len(records) == expected_sites[position]
    dropped = total = 0
    for module, inp, out in records:
        axis = module.channel_axis % inp.ndim
        reduce = tuple(d for d in range(inp.ndim) if d not in (0, axis))
        zero = (out == 0).all(dim=reduce)
        kept = ~zero
        scaled = inp / (1 - p)
        # Every (sample, channel) is either zero everywhere or the input scaled by 1/(1-p) everywhere.
        close = torch.isclose(out, scaled, rtol=1e-5, atol=1e-6).all(dim=reduce)
        assert (close | zero).all()
        assert kept.any() and zero.any()
        dropped, total = dropped + int(zero.sum()), total + zero.numel()
    assert abs(dropped / total - p) < 5 * math.sqrt(p * (1 - p) / total) + 1e-9
    for h in handles:
        h.remove()


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
@pytest.mark.parametrize("layout", ["image", "tokens"])
def test_dropped_fraction_within_statistical_bound(dim, p, layout):
    torch.manual_seed(0)
    drop = FeatureDropout(p, dim, channel_axis=1 if layout == "image" else -1).train()
    x = torch.ones(64, 64, 4, 4) if layout == "image" else torch.ones(64, 16, 64)
    out = drop(x)
    zero = out == 0
    torch.testing.assert_close(out[~zero], torch.full_like(out[~zero], 1 / (1 - p)))
    if dim == "channel":
        axis = 1 if layout == "image" else 2
        others = tuple(d for d in range(x.ndim) if d not in (0, axis))
        units = zero.all(dim=others)
        assert torch.equal(zero.any(dim=others), units)  # a channel is zero everywhere or nowhere
    else:
        units = zero
    n = units.numel()
    assert abs(units.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("key", ["params", "params_ema"])
@pytest.mark.parametrize("variant,position", [c for c in CASES if c[0] != "swinir_deep"])
def test_basicsr_checkpoint_round_trip(tmp_path, variant, position, key):
    source = build(variant, 4)
    path = tmp_path / "net_g.pth"
    torch.save({key: source.state_dict()}, path)
    target = VARIANTS[variant](4, dropout_position=position, dropout_dim="channel", dropout_p=0.5)
    target.load_state_dict(torch.load(path, weights_only=True)[key], strict=True)
    assert list(target.state_dict()) == list(source.state_dict())
    x = lr()
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval()(x))


def test_swinir_loads_checkpoint_trained_at_another_patch_size():
    torch.manual_seed(0)
    source = SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4)
    target = SwinIR(img_size=8, embed_dim=12, depths=[2], num_heads=[2], window_size=4)
    target.load_state_dict(source.state_dict(), strict=True)
    assert target.layers[0].residual_group.blocks[1].attn_mask.shape == (4, 16, 16)
    x = lr(size=12)  # neither patch size, and not a multiple of the window: padded, then cropped
    with torch.no_grad():
        out = target.eval()(x)
        assert out.shape == (2, 3, 48, 48)
        assert torch.equal(out, source.eval()(x))


def test_placement_mapping():
    assert placement("b8", 16).after_block == 7
    assert placement("b16", 23).after_block == 15
    assert placement("last", 4).last and not placement("last", 4).in_blocks
    assert sorted(placement("quarter", 16).in_blocks) == [12, 13, 14, 15]
    assert sorted(placement("half", 16).in_blocks) == list(range(8, 16))
    assert sorted(placement("all", 16).in_blocks) == list(range(16))
    assert sorted(placement("quarter", 23).in_blocks) == list(range(17, 23))
    assert sorted(placement("half", 23).in_blocks) == list(range(11, 23))
    assert sorted(placement("quarter", 6).in_blocks) == [4, 5]
    assert sorted(placement("quarter", 4).in_blocks) == [3]
    assert placement("none", 4) == placement("none", 16)
    assert allowed_positions(6) == ("none", "last", "b4", "quarter", "half", "all")
    assert allowed_positions(23) == POSITIONS


@pytest.mark.parametrize("kwargs,pattern", [
    ({"dropout_position": "b5"}, r"dropout\.position='b5'.*allowed: none, last, b4"),
    ({"dropout_position": "Last"}, r"dropout\.position='Last'"),
    ({"dropout_dim": "spatial"}, r"dropout\.dim='spatial'.*allowed: channel, element"),
    ({"dropout_p": 1.0}, r"dropout\.p=1\.0.*\[0, 1\)"),
    ({"dropout_p": -0.1}, r"dropout\.p=-0\.1"),
    ({"dropout_p": float("nan")}, r"dropout\.p=nan"),
    ({"dropout_p": "0.5"}, r"dropout\.p='0\.5'"),
    ({"dropout_p": True}, r"dropout\.p=True"),
])
@pytest.mark.parametrize("variant", ["tiny", "rrdb", "swinir"])
def test_invalid_dropout_config_raises(variant, kwargs, pattern):
    args = {"dropout_position": "last", "dropout_dim": "channel", "dropout_p": 0.5, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        VARIANTS[variant](4, **args)


@pytest.mark.parametrize("variant,position", [
    ("tiny", "b8"), ("tiny", "b16"), ("swinir", "b8"), ("swinir", "b16"), ("rrdb4", "b12"),
])
def test_position_beyond_trunk_raises(variant, position):
    make = (lambda **kw: RRDBNet(num_feat=8, num_block=4, num_grow_ch=4, **kw)) if variant == "rrdb4" \
        else (lambda **kw: VARIANTS[variant](4, **kw))
    with pytest.raises(ValueError, match=rf"dropout\.position='{position}' needs at least \d+ trunk blocks.*has 4;"
                                         r" allowed here: none, last, b4, quarter, half, all"):
        make(dropout_position=position, dropout_dim="channel", dropout_p=0.5)


def test_full_size_swinir_rejects_b8():
    with pytest.raises(ValueError, match=r"SwinIR \(6 RSTB groups\).*allowed here: none, last, b4, quarter"):
        with torch.device("meta"):
            SwinIR(dropout_position="b8")


@pytest.mark.parametrize("make,pattern", [
    (lambda: MSRResNet(scale=8), r"scale=8 .*MSRResNet; allowed: 2, 3, 4"),
    (lambda: RRDBNet(scale=3), r"scale=3 .*RRDBNet; allowed: 1, 2, 4"),
    (lambda: SwinIR(scale=5), r"scale=5 .*SwinIR; allowed: 2, 3, 4, 8"),
])
def test_unsupported_scale_raises(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_validate_dropout_accepts_the_whole_grid():
    for position in POSITIONS:
        for dim in DIMS:
            for p in (0, 0.0, 0.1, 0.5, 0.9, 0.999):
                validate_dropout(position, dim, p)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_backbone_configs_instantiate(name):
    from src.models.loading import backbone_config, build_backbone

    cfg = backbone_config(name)  # the YAML alone: architecture arguments, no root interpolation
    assert "scale" not in cfg and not any(k.startswith("dropout") for k in cfg)
    with torch.device("meta"):
        model = build_backbone(cfg, scale=4, dropout={"position": "last", "dim": "element", "p": 0.3})
    assert model.dropout_last.p == 0.3 and model.dropout_last.dim == "element"
    expected = {"srresnet": 1_517_571, "rrdb": 16_697_987, "swinir": 11_900_199}
    if name in expected:
        assert n_params(model) == expected[name]


@pytest.mark.parametrize("name", ["tiny", "swinir_small"])
def test_small_configs_forward(name):
    from src.models.loading import backbone_config, build_backbone

    model = build_backbone(backbone_config(name), scale=2, dropout={"position": "b4", "dim": "channel", "p": 0.5})
    out = model.train()(lr(size=16))
    out.mean().backward()
    assert out.shape == (2, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [RRDBNet, SwinIR], ids=["rrdb", "swinir"])
def test_full_size_forward(cls):
    model = cls(dropout_position="last", dropout_p=0.5).eval()
    with torch.no_grad():
        out = model(lr(batch=1, size=24))
    assert out.shape == (1, 3, 96, 96)


@pytest.mark.parametrize("variant", ["srresnet", "rrdb", "swinir"])
def test_every_backbone_places_its_dropout_through_the_one_helper(monkeypatch, variant):
    import importlib

    import src.models.dropout as dropout

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[:4])
        return dropout.dropout_sites(*args, **kwargs)

    monkeypatch.setattr(importlib.import_module(f"src.models.{variant}"), "dropout_sites", counted)
    net = build(variant, position="half", dim="element", p=0.25)
    assert calls == [("half", "element", 0.25, TRUNK[variant])]  # validated and placed once per backbone
    dropped = [m for m in net.modules() if isinstance(m, FeatureDropout)]
    assert len(dropped) == TRUNK[variant] // 2 and all(m.p == 0.25 and m.dim == "element" for m in dropped)


def test_the_no_dropout_baseline_is_one_rule():
    from src.loggers import wandb_tags
    from src.models.dropout import is_baseline
    from src.reports.collect import Run

    assert [is_baseline(pos, p) for pos, p in [("none", 0.5), ("last", 0.0), ("last", 0.1), ("none", 0)]] \
        == [True, True, False, True]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"dropout": {"position": "last", "dim": "channel", "p": 0.0},
                            "backbone": {"_target_": "a.B"}, "degradation": {"_target_": "a.D"}})
    assert "position=none" in wandb_tags(cfg) and "p=0" in wandb_tags(cfg)
    assert Run("d", "B", "g", "last", "channel", 0.0).baseline and not Run("d", "B", "g", "b4", "channel", 0.1).baseline
