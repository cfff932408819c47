"""src.models.loading: any weights file -> a ready model, built only from the suite's own classes."""
from __future__ import annotations

import json
import re

import pytest
import torch

from src.models.loading import LAYOUTS, backbone_config, build_backbone, load
from src.models.rrdb import RRDBNet
from src.models.srresnet import MSRResNet
from src.models.swinir import SwinIR

SMALL = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 8, "num_block": 3}


def _net(cls=MSRResNet, seed=0, **kw):
    torch.manual_seed(seed)
    net = cls(**kw)
    for p in net.parameters():  # make every weight matter, so a wrong mapping changes the output
        p.data.normal_(0, 0.05)
    return net.eval()


def _suite_ckpt(path, backbone, state, scale=4):
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                "hyper_parameters": {"backbone": backbone, "scale": scale, "dropout": {"position": "last",
                                                                                     "dim": "channel", "p": 0.7}}},
               path)
    return path


def _same_weights(model, state):
    sd = model.state_dict()
    return sd.keys() == state.keys() and all(torch.equal(sd[k], v) for k, v in state.items())


# ------------------------------------------------------------------------------------------------ one path


@pytest.mark.parametrize("cls,kw,scale,window", [
    (MSRResNet, {"num_feat": 8, "num_block": 2}, 3, 1),
    (RRDBNet, {"num_feat": 8, "num_block": 2, "num_grow_ch": 4}, 2, 2),  # x2 unshuffles: even sides
    (SwinIR, {"img_size": 8, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4}, 2, 4),
])
def test_every_format_gives_the_model_its_scale_and_padding_multiple(tmp_path, cls, kw, scale, window):
    from safetensors.torch import save_file

    net = _net(cls, scale=scale, **kw)
    state = net.state_dict()
    cfg = {"_target_": f"{cls.__module__}.{cls.__name__}", **kw}
    files = {
        "suite": _suite_ckpt(tmp_path / "last.ckpt", cfg, state, scale),
        "basicsr": tmp_path / "net.pth",
        "safetensors": tmp_path / "net.safetensors",
    }
    torch.save({"params": {k: v * 0 for k, v in state.items()}, "params_ema": state}, files["basicsr"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]),
              metadata={"backbone": json.dumps(cfg), "scale": str(scale)})
    x = torch.rand(1, 3, 2 * window + 1, 2 * window + 3)
    with torch.no_grad():
        ref = net(x)
    for name, path in files.items():
        loaded = load(path)
        assert (loaded.scale, loaded.pad_multiple) == (scale, window), name
        assert _same_weights(loaded.model, state), name  # params_ema, not the zeroed params
        assert not loaded.model.training
        contiguous = load(path, channels_last=False).model
        with torch.no_grad():
            assert torch.equal(contiguous(x), ref), name
            # the CPU default is channels_last: another summation order, the same function
            assert torch.allclose(loaded.model(x), ref, atol=1e-5), name
        assert loaded.model.conv_first.weight.is_contiguous(memory_format=torch.channels_last), name
        assert "dropout" not in json.dumps(loaded.config) and "scale" not in loaded.config


def test_the_file_is_read_once(tmp_path, monkeypatch):
    from src import export as export_mod

    path = _suite_ckpt(tmp_path / "last.ckpt", SMALL, _net(num_feat=8, num_block=3).state_dict())
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    export_mod.export(path, "safetensors", tmp_path / "w.safetensors")
    assert calls == [path]


def test_legacy_configs_with_upscale_and_dropout_still_load(tmp_path):
    """Checkpoints written before the SR factor was passed in carry `upscale` and dropout_* in the backbone."""
    net = _net(num_feat=8, num_block=3, scale=2)
    legacy = {**SMALL, "upscale": 2, "dropout_position": "last", "dropout_dim": "channel", "dropout_p": 0.7}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"backbone": legacy}}, path)
    loaded = load(path)
    assert loaded.scale == 2 and loaded.model.dropout_last is None and _same_weights(loaded.model, net.state_dict())


def test_backbone_yamls_stand_alone_and_take_scale_and_dropout():
    for name in ("tiny", "srresnet", "rrdb", "swinir", "swinir_small"):
        cfg = backbone_config(name)
        assert "scale" not in cfg and not any(k.startswith("dropout") for k in cfg), name
    with torch.device("meta"):
        net = build_backbone(backbone_config("rrdb"), scale=2, dropout={"position": "b4", "dim": "element", "p": 0.2})
    assert net.scale == 2 and net.dropout_after.p == 0.2 and net.dropout_after.dim == "element"


def test_truncated_checkpoint_names_the_file_and_gives_advice(tmp_path):
    path = _suite_ckpt(tmp_path / "last.ckpt", SMALL, _net(num_feat=8, num_block=3).state_dict())
    data = path.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load(cut)
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg and "download or copy it again" in msg
    st = tmp_path / "cut.safetensors"
    from safetensors.torch import save_file

    save_file(_net(num_feat=8, num_block=3).state_dict(), str(tmp_path / "w.safetensors"))
    st.write_bytes((tmp_path / "w.safetensors").read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{st}: not a readable checkpoint.*truncated"):
        load(st, backbone=SMALL)


# ------------------------------------------------------------------------------------------------ weights are data


CRAFTED = [
    {"_target_": "builtins.print", "_args_": ["PWNED"]},
    {"_target_": "builtins.print", "sep": "PWNED"},
    {"_target_": "os.system", "command": "touch {marker}"},
    {"_target_": "os.system", "_args_": ["touch {marker}"]},
    # an allowed class with a nested object to instantiate inside an argument
    {"_target_": "src.models.srresnet.MSRResNet", "num_feat": {"_target_": "os.system", "command": "touch {marker}"}},
    # an allowed class name under a module path it does not live in
    {"_target_": "os.MSRResNet"},
    # an allowed class with an argument it does not take, or of the wrong type
    {"_target_": "src.models.srresnet.MSRResNet", "_partial_": True},
    {"_target_": "src.models.srresnet.MSRResNet", "num_block": "3; touch {marker}"},
]


def _crafted(cfg, marker):
    return json.loads(json.dumps(cfg).replace("{marker}", str(marker)))


@pytest.mark.parametrize("cfg", CRAFTED, ids=lambda c: f"{c['_target_']}-{sorted(c)[0]}")
@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_crafted_files_are_refused_and_run_nothing(tmp_path, capsys, cfg, fmt):
    from safetensors.torch import save_file

    marker = tmp_path / "pwned"
    cfg = _crafted(cfg, marker)
    state = _net(num_feat=8, num_block=3).state_dict()
    if fmt == "ckpt":
        path = _suite_ckpt(tmp_path / "evil.ckpt", cfg, state)
    else:
        path = tmp_path / "evil.safetensors"
        save_file(state, str(path), metadata={"backbone": json.dumps(cfg)})
    with pytest.raises(ValueError) as err:
        load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert not marker.exists()
    out = capsys.readouterr()
    assert "PWNED" not in out.out and "PWNED" not in out.err
    bad = next(f"{k}={v!r}" for k, v in cfg.items() if k != "_target_" and k != "_args_") \
        if cfg["_target_"].endswith("MSRResNet") and len(cfg) > 1 else repr(cfg["_target_"])
    assert bad.split("=")[0] in msg, msg  # names the offending value (or key)


def test_refused_target_lists_the_allowed_classes(tmp_path):
    path = _suite_ckpt(tmp_path / "evil.ckpt", {"_target_": "builtins.print"}, {})
    with pytest.raises(ValueError, match=r"_target_='builtins.print' is not one of this suite's backbones.*"
                                         r"src\.models\.srresnet\.MSRResNet"):
        load(path)


def test_the_entry_points_refuse_too(tmp_path, capsys):
    """infer goes through the same loader: a crafted file never reaches instantiate."""
    from src.infer import main
    from omegaconf import OmegaConf

    marker = tmp_path / "pwned"
    path = _suite_ckpt(tmp_path / "evil.ckpt", {"_target_": "os.system", "command": f"touch {marker}"},
                       _net(num_feat=8, num_block=3).state_dict())
    cfg = OmegaConf.create({"ckpt": str(path), "input": str(tmp_path), "output": str(tmp_path / "o"),
                            "device": "cpu", "tile": None, "overlap": 8, "pad_multiple": None, "progress": False})
    with pytest.raises(ValueError, match="os.system"):
        main(cfg)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ key layouts


def _details(state):
    """The paper's released `MSRResNet_details` layout, written out independently of the loader."""
    out = {}
    for k, v in state.items():
        if k.startswith("body."):
            _, i, rest = k.split(".", 2)
            k = f"body{int(i) + 1}.0.{rest}"
        out[k] = v
    return out


def _split(state, n):
    """MSRResNet_dropoutquater_*: body1 holds the first 3n/4 blocks, body2 the rest."""
    out = {}
    for k, v in state.items():
        if k.startswith("body."):
            _, i, rest = k.split(".", 2)
            i = int(i)
            k = f"body1.{i}.{rest}" if i < 3 * n // 4 else f"body2.{i - 3 * n // 4}.{rest}"
        out[k] = v
    return out


def _mmsr(state):
    return {k.replace("body.", "recon_trunk.").replace("conv_hr.", "HRconv."): v for k, v in state.items()}


def _esrgan(state):
    out = {}
    for k, v in state.items():
        for a, b in (("body.", "RRDB_trunk."), (".rdb", ".RDB"), ("conv_body.", "trunk_conv."),
                     ("conv_up1.", "upconv1."), ("conv_up2.", "upconv2."), ("conv_hr.", "HRconv.")):
            k = k.replace(a, b) if not (a == "body." and not k.startswith("body.")) else k
        out[k] = v
    return out


OFFICIAL = [
    ("official-details", MSRResNet, {"num_feat": 8, "num_block": 16}, _details),
    ("official-split (body1: 12 block(s), body2: 4 block(s))", MSRResNet, {"num_feat": 8, "num_block": 16},
     lambda st: _split(st, 16)),
    ("mmsr", MSRResNet, {"num_feat": 8, "num_block": 4}, _mmsr),
    ("basicsr", RRDBNet, {"num_feat": 8, "num_block": 2, "num_grow_ch": 4}, dict),
    ("esrgan", RRDBNet, {"num_feat": 8, "num_block": 2, "num_grow_ch": 4}, _esrgan),
]


@pytest.mark.parametrize("layout,cls,kw,write", OFFICIAL, ids=[o[0].split()[0] + o[1].__name__ for o in OFFICIAL])
def test_official_layouts_load_strictly_and_say_so(tmp_path, layout, cls, kw, write):
    net = _net(cls, **kw)
    theirs = write(net.state_dict())
    assert set(theirs) != set(net.state_dict()) or layout == "basicsr"
    path = tmp_path / "RealSRResNetx4_details.pth"
    torch.save({"params": theirs}, path)  # how BasicSR (and the paper's code) saves a network
    x = torch.rand(1, 3, 9, 7)
    for backbone in (None, {"_target_": f"{cls.__module__}.{cls.__name__}", **kw}):
        loaded = load(path, backbone=backbone)
        assert loaded.layout == layout
        assert _same_weights(loaded.model, net.state_dict())
        with torch.no_grad():
            # exact in the layout the reference runs in; the CPU default (channels_last) sums in another order
            assert torch.equal(load(path, backbone=backbone, channels_last=False).model(x), net(x))
            assert torch.allclose(loaded.model(x), net(x), atol=1e-5)
    # DataParallel's `module.` prefix on top of the layout
    torch.save({"params": {f"module.{k}": v for k, v in theirs.items()}}, path)
    assert load(path).layout == layout
    # round trip: our keys back to that layout give the file's dict exactly
    spec = next(lay for lay in LAYOUTS if lay.backbone == cls.__name__ and layout.startswith(lay.name))
    back = spec.from_ours(loaded.model.state_dict())
    assert back.keys() == theirs.keys() and all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_full_size_details_layout_of_the_released_models(tmp_path):
    """The released Real-SRResNet files: 64 features, body1..body16, x4; found with no backbone argument."""
    net = MSRResNet()
    path = tmp_path / "RealSRResNetx4_details_droplast_channel07.pth"
    torch.save({"params": _details(net.state_dict())}, path)
    loaded = load(path)
    assert loaded.layout == "official-details" and loaded.scale == 4
    assert loaded.config == {"_target_": "src.models.srresnet.MSRResNet", "num_in_ch": 3, "num_out_ch": 3,
                             "num_feat": 64, "num_block": 16}
    assert "body16.0.conv2.weight" in _details(net.state_dict())
    assert load(path, backbone="srresnet").layout == "official-details"


def test_a_key_set_of_no_layout_is_a_short_error_naming_the_closest(tmp_path):
    net = _net(num_feat=8, num_block=16)
    theirs = _details(net.state_dict())
    del theirs["body16.0.conv2.bias"]
    theirs["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save({"params": theirs}, path)
    with pytest.raises(ValueError) as err:
        load(path, backbone={**SMALL, "num_block": 16})
    msg = str(err.value)
    assert len(msg) < 1200, msg
    assert "Closest: official-details" in msg and "body.15.conv2.bias" in msg and "extra.weight" in msg
    assert "missing 1 key(s)" in msg and "unexpected 1" in msg


def test_a_wrong_backbone_gives_a_short_error(tmp_path):
    """A full-size SRResNet file loaded as RRDB: a few keys and what the file looks like, not every key."""
    net = MSRResNet()
    path = tmp_path / "srresnet.pth"
    torch.save({"params": net.state_dict()}, path)
    with pytest.raises(ValueError) as err:
        load(path, backbone="rrdb")
    msg = str(err.value)
    assert len(msg) < 1500, msg
    assert re.search(r"fit no known key layout of RRDBNet .*Closest: \w+ .*missing \d+ key\(s\) \[body\.0\.rdb1", msg)
    assert "The keys look like MSRResNet" in msg and "'num_block': 16" in msg
    narrow = {**backbone_config("tiny"), "num_block": 16}  # the same keys, half the width
    with pytest.raises(ValueError, match=r"shape mismatch.*conv_first\.weight \(64, 3, 3, 3\) vs \(32, 3, 3, 3\)"):
        load(path, backbone=narrow)


# ------------------------------------------------------------------------------------------------ what a tool is given


def _folder(path, *files):
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x")
    return path


def test_weights_file_turns_every_kind_of_path_into_one_file(tmp_path):
    from src import runs
    from src.models.loading import weights_file

    run = _folder(tmp_path / "run", runs.JOB, runs.CKPT)
    job = _folder(tmp_path / "sweep" / "seed-1", runs.JOB, runs.CKPT)  # one job of a sweep is a run folder
    published = _folder(tmp_path / "docs" / "run", runs.JOB, runs.WEIGHTS)
    both = _folder(tmp_path / "both", runs.CKPT, runs.WEIGHTS)
    pth = _folder(tmp_path, "m.pth") / "m.pth"
    assert weights_file(run) == run / runs.CKPT
    assert weights_file(job) == job / runs.CKPT
    assert weights_file(published) == published / runs.WEIGHTS
    assert weights_file(both) == both / runs.CKPT  # the full training state stands for a run
    assert weights_file(run / runs.CKPT) == run / runs.CKPT and weights_file(pth) == pth

    empty = _folder(tmp_path / "failed", runs.JOB)
    with pytest.raises(FileNotFoundError) as err:
        weights_file(empty)
    assert str(err.value) == (f"{empty}: no weights in this folder (looked for {empty / runs.CKPT} and "
                              f"{empty / runs.WEIGHTS}: a run writes the first once it has trained, publishing the "
                              f"second)")
    with pytest.raises(FileNotFoundError, match="pass one of its run folders"):
        weights_file(tmp_path / "sweep")
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or folder; pass a weights file \(\.ckpt"):
        weights_file(tmp_path / "nowhere")


def test_weights_files_pair_each_model_with_its_run_and_name_what_they_skip(tmp_path, capsys):
    from src import runs
    from src.models.loading import weights_files

    sweep = tmp_path / "sweep"
    a = _folder(sweep / "a", runs.JOB, runs.CKPT)
    b = _folder(sweep / "b", runs.JOB)  # failed before its first checkpoint
    p = _folder(tmp_path / "docs" / "a", runs.JOB, runs.WEIGHTS)
    assert weights_files(sweep) == [(a / runs.CKPT, a)]
    assert f"skipped {b}: no checkpoints/last.ckpt or weights.safetensors" in capsys.readouterr().out
    assert weights_files(str(sweep / "*")) == [(a / runs.CKPT, a)]  # a glob skips b the same way
    assert weights_files([p / runs.WEIGHTS, tmp_path / "docs", a]) == [(p / runs.WEIGHTS, p), (a / runs.CKPT, a)]
    with pytest.raises(FileNotFoundError, match=r"names no model: .*; 1 run folder\(s\) below it hold neither$"):
        weights_files(str(sweep / "b*"))
    with pytest.raises(FileNotFoundError, match="no weights in this folder"):
        weights_files(b)  # one run named by itself: its own error


def test_every_tool_loads_a_published_run_folder(tmp_path, capsys):
    """eval, infer, analyze, export and the report all go through `load_for_tool`: a published run folder (final
    weights only, no checkpoint) is a model for each."""
    from omegaconf import OmegaConf

    from src import runs
    from src.export import export
    from src.models.loading import load_for_tool, save_safetensors

    net = _net(MSRResNet, num_feat=8, num_block=3)
    published = _folder(tmp_path / "docs" / "run", runs.JOB)
    save_safetensors(net, SMALL, published / runs.WEIGHTS, scale=4)
    backbone = OmegaConf.create({"n": 3, "backbone": {**SMALL, "num_block": "${n}"}}).backbone
    loaded = load_for_tool(published, backbone)  # a composed DictConfig, interpolations resolved
    assert loaded.path == published / runs.WEIGHTS and _same_weights(loaded.model, net.state_dict())
    out = export(published, "safetensors", tmp_path / "copy.safetensors")
    assert _same_weights(load(out).model, net.state_dict())
