"""Export to safetensors and ONNX; the ONNX graph must match PyTorch on a real image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.datasets import list_images
from src.data.imageio import read_image
from src.export import export, export_onnx
from src.models.loading import load_model

BACKBONE = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 16, "num_block": 2, "scale": 4,
            "dropout_position": "last", "dropout_dim": "channel", "dropout_p": 0.5}


def fake_suite_ckpt(path, seed=0):
    """A checkpoint in this suite's Lightning format holding a tiny random MSRResNet (with dropout configured)."""
    from src.models.loading import build_backbone

    torch.manual_seed(seed)
    net = build_backbone(BACKBONE)
    for p in net.parameters():  # BasicSR's 0.1-scaled init makes the trunk nearly silent; make it matter
        p.data.normal_(0, 0.1)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"backbone": BACKBONE}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return fake_suite_ckpt(tmp_path_factory.mktemp("ckpt") / "last.ckpt")


def test_safetensors_round_trip_is_exact(ckpt, tmp_path):
    from safetensors import safe_open

    out = export(ckpt, "safetensors", tmp_path / "w.safetensors")
    ref, back = load_model(ckpt), load_model(out)  # no backbone argument: the metadata carries it
    ref_sd, back_sd = ref.state_dict(), back.state_dict()
    assert ref_sd.keys() == back_sd.keys()
    assert all(torch.equal(ref_sd[k], back_sd[k]) for k in ref_sd)
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(ref_sd) and all(not k.startswith("net.") for k in f.keys())
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(ref(x), back(x))


def test_default_out_and_bad_format(ckpt):
    with pytest.raises(ValueError, match="format='pickle'.*safetensors, onnx"):
        export(ckpt, "pickle")
    path = export(ckpt, "safetensors")
    assert path == ckpt.with_suffix(".safetensors") and path.is_file()


def test_basicsr_pth_architecture_from_backbone_or_keys(ckpt, tmp_path):
    sd = load_model(ckpt).state_dict()
    pth = tmp_path / "net_g.pth"
    torch.save({"params": {k: v * 0 for k, v in sd.items()}, "params_ema": sd}, pth)
    unknown = tmp_path / "other.pth"  # keys of no backbone of the suite: the architecture must be given
    torch.save({"params": {f"enc.{k}": v for k, v in sd.items()}}, unknown)
    with pytest.raises(ValueError, match="backbone"):
        export(unknown, "safetensors", tmp_path / "u.safetensors")
    out = export(pth, "safetensors", tmp_path / "a.safetensors", backbone=BACKBONE)
    assert all(torch.equal(load_model(out).state_dict()[k], v) for k, v in sd.items())  # params_ema chosen
    # Without backbone=, the architecture is read off the keys and shapes: the same model.
    inferred = export(pth, "safetensors", tmp_path / "b.safetensors")
    from src.models.loading import load

    loaded = load(inferred)
    assert loaded.config == {"_target_": BACKBONE["_target_"], "num_in_ch": 3, "num_out_ch": 3, "num_feat": 16,
                             "num_block": 2} and loaded.scale == 4
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in sd.items())


def _ort_session(path):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch_on_real_image(ckpt, tmp_path, data_root):
    out = export(ckpt, "onnx", tmp_path / "m.onnx")
    model = load_model(ckpt)
    img = read_image(list_images(data_root / "Set5" / "HR")[0])
    h, w = img.shape[:2]
    crop = img[h // 2 - 24:h // 2 + 24, w // 2 - 31:w // 2 + 30]  # 48x61: odd width, not the export size
    x = torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None]
    sess = _ort_session(out)
    assert [i.name for i in sess.get_inputs()] == ["lr"] and [o.name for o in sess.get_outputs()] == ["sr"]
    y_ort = sess.run(None, {"lr": x.numpy()})[0]
    with torch.no_grad():
        y_pt = model(x).numpy()
    assert y_ort.shape == (1, 3, 192, 244)
    assert np.abs(y_ort - y_pt).max() < 1e-4


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_onnx_dynamic_batch_and_size_without_dropout(ckpt, tmp_path, exporter):
    from src.models.loading import build_backbone

    model = build_backbone(BACKBONE)  # dropout p=0.5 before conv_last, left in training mode
    model.load_state_dict(load_model(ckpt).state_dict())
    model.train()
    out = export_onnx(model, tmp_path / "m.onnx", exporter=exporter)
    assert not model.training
    sess = _ort_session(out)
    for shape in [(1, 3, 17, 23), (3, 3, 9, 30)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = model(x).numpy()
        y = sess.run(None, {"lr": x.numpy()})[0]
        assert np.abs(y - ref).max() < 1e-4  # identical runs => no dropout left in the graph
    import onnx

    assert not any(n.op_type == "Dropout" for n in onnx.load(str(out)).graph.node)


def test_cli_main(ckpt, tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from src.export import main

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={ckpt}", "format=safetensors", f"out={tmp_path / 'x.safetensors'}"])
    assert main(cfg) == tmp_path / "x.safetensors"
    assert load_model(tmp_path / "x.safetensors").conv_last.weight.shape == (3, 16, 3, 3)


def test_onnx_swinir_any_size(tmp_path):
    from src.models.loading import build_backbone

    cfg = {"_target_": "src.models.swinir.SwinIR", "img_size": 16, "embed_dim": 12, "depths": [2], "num_heads": [2],
           "window_size": 4, "mlp_ratio": 2.0, "scale": 4, "img_range": 1.0}
    model = build_backbone(cfg).eval()
    sess = _ort_session(export_onnx(model, tmp_path / "swin.onnx"))
    for shape in [(1, 3, 21, 30), (2, 3, 8, 5)]:  # not multiples of the window: padding must stay in the graph
        x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = model(x).numpy()
        assert np.abs(sess.run(None, {"lr": x.numpy()})[0] - ref).max() < 1e-4
