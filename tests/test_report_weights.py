"""Published runs carry their weights: re-scored from the committed safetensors they reproduce their committed
per-image scores; the shrinkage control (blends toward bicubic) is chosen on validation images and scored like a
model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, compose_train
from src.report import main


@pytest.fixture(scope="module")
def published(tmp_path_factory, data_root):
    """A tiny model trained for 2 steps, scored on Set5 (clean, official protocol), published, its run deleted."""
    from src import runs
    from src.models.loading import export_safetensors
    from src.train import train

    tmp = tmp_path_factory.mktemp("weights")
    run = tmp / "runs" / "tiny_p0"
    cfg = compose_train(TINY + ["debug=fast", "backbone=tiny", f"paths.runs={tmp / 'runs'}",
                                f"paths.cache={tmp / 'cache'}", "data.test_sets=[Set5]", "eval.degradations=[clean]",
                                "eval.protocol=official", "eval.reference=null", "dropout.p=0"], run)
    train(cfg, run)
    (run / "checkpoints" / "step-000001.safetensors").write_bytes(
        export_safetensors(runs.checkpoint(run), tmp / "step.safetensors").read_bytes())
    dest = tmp / "published"
    assert runs.publish(run, dest, export=export_safetensors) == [dest / run.name]
    assert main([str(run), f"publish={tmp / 'published_half'}", "weights=half", f"out={tmp / 'report'}"]) == 0
    shutil.rmtree(run)  # from here on only the committed files exist
    return dest / run.name


def test_committed_weights_reproduce_their_committed_set5_scores(published, capsys):
    names = {p.name for p in published.iterdir()}
    assert {"weights.safetensors", "results_official.json", "config.yaml", "checkpoints"} <= names
    assert (published / "checkpoints" / "step-000001.safetensors").is_file()
    assert not (published / "checkpoints" / "last.ckpt").exists()
    size = (published / "weights.safetensors").stat().st_size
    assert 0 < size <= 2_000_000
    assert main([f"rescore={published}", "sets=[Set5]"]) == 0
    out = capsys.readouterr().out
    assert "re-scored from weights.safetensors" in out and "Set5/clean (official): 5 images" in out
    assert "1 of 1 columns reproduce their committed scores within 0.001 dB\n" in out

    # a committed score that the weights do not give is found, named, and fails the command
    res_path = published / "results_official.json"
    original = res_path.read_text()
    res = json.loads(original)
    res["Set5"]["clean"]["per_image"]["baby"]["psnr_rgb"] += 0.01
    res_path.write_text(json.dumps(res))
    try:
        assert main([f"rescore={published}"]) == 1
        assert "Set5/clean (official): 5 images, largest difference to the committed per-image scores 1.0e-02 " \
               "(MISMATCH)" in capsys.readouterr().out
    finally:
        res_path.write_text(original)
    with pytest.raises(ValueError, match=r"rescore: sets \['Urban100'\] have no committed scores"):
        main([f"rescore={published}", "sets=[Urban100]"])


def test_half_precision_weights_load_as_float32_and_reproduce_their_scores(published, capsys):
    from safetensors import safe_open

    half = published.parent.parent / "published_half" / published.name
    for name in ("weights.safetensors", "checkpoints/step-000001.safetensors"):
        with safe_open(str(published / name), "pt") as f32, safe_open(str(half / name), "pt") as f16:
            assert f16.metadata() == {**f32.metadata(), "dtype": "float16"}  # backbone, scale, step kept
            for k in f32.keys():
                a, b = f32.get_tensor(k), f16.get_tensor(k)
                assert b.dtype == (torch.float16 if a.is_floating_point() else a.dtype)
                assert torch.equal(b, a.to(b.dtype))
        full, small = (published / name).stat().st_size, (half / name).stat().st_size
        assert abs(small - full / 2) < 0.05 * full  # 2 bytes a number instead of 4, the header aside
    assert main([f"rescore={half}", "sets=[Set5]"]) == 0
    out = capsys.readouterr().out
    assert "weights stored as float16; the model computes in float32" in out
    assert "1 of 1 columns reproduce their committed scores within 0.01 dB (float16-rounded weights)" in out


def test_a_retraining_gives_a_published_run_its_lost_weights_only_if_they_reproduce_its_scores(tmp_path, capsys):
    from safetensors import safe_open

    from src import runs
    from src.train import train

    def trained(folder, *extra):
        run = tmp_path / folder / "tiny"
        cfg = compose_train(TINY + ["debug=fast", "backbone=tiny", f"paths.runs={tmp_path / folder}",
                                    f"paths.cache={tmp_path / 'cache'}", "data.test_sets=[Set5]",
                                    "eval.degradations=[clean]", "eval.protocol=official", "eval.reference=null",
                                    "dropout.p=0", *extra], run)
        train(cfg, run)
        return run

    original = trained("first")
    (published,) = runs.publish(original, tmp_path / "docs")  # results alone: the weights are then lost
    shutil.rmtree(original)
    before = {p.name: p.read_bytes() for p in published.iterdir()}
    again, other = trained("again"), trained("other", "seed=1")

    with pytest.raises(SystemExit, match=r"attach: .*other/tiny is not a retraining of .*; what differs "
                                         r"\(published -> run\): .*seed: 0 -> 1"):
        main([f"attach={other}", f"into={published}"])
    with pytest.raises(SystemExit, match="attach=RUN needs into=PUBLISHED"):
        main([f"attach={again}"])
    # a retraining whose weights do not give the committed scores (here: a score altered) is not attached
    res = json.loads(before["results_official.json"])
    res["Set5"]["clean"]["per_image"]["baby"]["psnr_rgb"] += 0.01
    (published / "results_official.json").write_text(json.dumps(res))
    assert main([f"attach={again}", f"into={published}"]) == 1
    out = capsys.readouterr().out
    assert f"re-scored from the weights of {again}" in out and "(MISMATCH)" in out
    assert f"not attached: these weights do not reproduce the committed scores; {published} is left as it was" in out
    assert {p.name for p in published.iterdir()} == set(before)
    (published / "results_official.json").write_bytes(before["results_official.json"])

    assert main([f"attach={again}", f"into={published}", "weights=half"]) == 0
    assert f"attached: {published / 'weights.safetensors'}" in capsys.readouterr().out
    assert {p.name for p in published.iterdir()} == set(before) | {"weights.safetensors"}
    assert all((published / name).read_bytes() == data for name, data in before.items())
    with safe_open(str(published / "weights.safetensors"), "pt") as f:
        assert f.metadata()["dtype"] == "float16"
    assert main([f"rescore={published}"]) == 0
    with pytest.raises(SystemExit, match=r"attach: .*weights.safetensors exists; a published run's weights are "
                                         r"never replaced"):
        main([f"attach={again}", f"into={published}"])
    # a weights file kept elsewhere (no run folder to compare identities with): its scores decide alone
    copy = tmp_path / "docs2" / published.name
    copy.mkdir(parents=True)
    for name, data in before.items():
        (copy / name).write_bytes(data)
    assert main([f"attach={runs.checkpoint(other)}", f"into={copy}"]) == 1  # another seed's weights
    assert {p.name for p in copy.iterdir()} == set(before)
    assert main([f"attach={runs.checkpoint(again)}", f"into={copy}"]) == 0
    assert (copy / "weights.safetensors").is_file()


def test_publish_refuses_weights_over_the_cap(tmp_path, monkeypatch):
    from src import runs

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "results.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "checkpoints" / "step-000250.safetensors").write_bytes(b"0" * 2_000_001)
    with pytest.raises(ValueError, match=r"step-000250.safetensors \(2,000,001 bytes\)"):
        runs.publish(run, tmp_path / "dest", export=lambda src, out: out)
    (run / "checkpoints" / "step-000250.safetensors").unlink()

    def big(src, out):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"0" * 2_000_001)
        return out
    with pytest.raises(ValueError, match=r"last.ckpt: its weights are 2,000,001 bytes, over 2,000,000; publish it "
                                          r"at half precision \(src.report weights=half\) or its results alone "
                                          r"\(weights=false\)$"):
        runs.publish(run, tmp_path / "dest", export=big)
    assert not (tmp_path / "dest" / "run" / "weights.safetensors").exists()
    # converted, the same weights fit; a conversion still over the cap leaves nothing either
    assert runs.publish(run, tmp_path / "dest", export=big, convert=lambda f: b"1" * 1000) == [tmp_path / "dest" / "run"]
    assert (tmp_path / "dest" / "run" / "weights.safetensors").read_bytes() == b"1" * 1000
    with pytest.raises(ValueError, match=r"2,000,001 bytes, over 2,000,000; publish its results alone "
                                          r"\(src.report weights=false\)$"):
        runs.publish(run, tmp_path / "dest2", export=big, convert=lambda f: b"1" * 2_000_001)
    assert not (tmp_path / "dest2" / "run" / "weights.safetensors").exists()


@pytest.mark.parametrize("experiment, fits, half_fits", [("repro_small", True, True),
                                                         ("repro_small_deep", True, True),
                                                         ("repro_small_rrdb", False, True), ("paper", False, False)])
def test_the_weights_cap_admits_the_reduced_scale_models_and_refuses_a_full_one(experiment, fits, half_fits):
    """fp32 weights are 4 bytes a parameter, float16 2 (safetensors adds a small header): the reduced-scale
    SRResNets publish their weights as trained, the reduced RRDB (3.0 MB) at half precision, and a full-size model
    does not end up in git."""
    from src.runs import WEIGHTS_MAX_BYTES
    from src.utils import build

    backbone = compose_train([f"experiment={experiment}"], Path("unused")).backbone
    size = 4 * sum(p.numel() for p in build(backbone).parameters())
    assert (size < 0.95 * WEIGHTS_MAX_BYTES) == fits, (experiment, size)
    assert (size / 2 < 0.95 * WEIGHTS_MAX_BYTES) == half_fits, (experiment, size)


def test_publish_without_weights_passes_no_exporter(tmp_path, monkeypatch):
    import src.report as report

    seen = []
    monkeypatch.setattr(report.runs, "publish", lambda folder, dest, export, convert: seen.append((export, convert))
                        or [])
    monkeypatch.setattr(report, "build_report", lambda folders, **opts: {})
    assert main([str(tmp_path), f"publish={tmp_path / 'a'}", "weights=false"]) == 0
    assert main([str(tmp_path), f"publish={tmp_path / 'b'}"]) == 0
    assert main([str(tmp_path), f"publish={tmp_path / 'c'}", "weights=half"]) == 0
    assert seen[0] == (None, None)
    assert seen[1][0].__name__ == "export_safetensors" and seen[1][1] is None
    assert seen[2][0].__name__ == "export_safetensors" and seen[2][1].__name__ == "half_precision"
    with pytest.raises(SystemExit, match="weights=no is not one of true, half, false"):
        main([str(tmp_path), f"publish={tmp_path / 'c'}", "weights=no"])


def test_blend_is_rounded_and_the_grid_choice_prefers_less_shrinkage():
    from src.reports.blend import _best, blend, grid

    sr, bic = np.array([[10, 200]], np.uint8), np.array([[20, 100]], np.uint8)
    assert blend(sr, bic, 0.3).tolist() == [[round(0.3 * 10 + 0.7 * 20), round(0.3 * 200 + 0.7 * 100)]]
    g = grid()
    assert len(g) == 21 and g[0] == 0 and g[-1] == 1 and np.allclose(np.diff(g), 0.05)
    assert _best(np.array([1.0, 3.0, 3.0, 2.0]), np.array([0.0, 0.1, 0.2, 0.3])) == 0.2   # a tie: the larger a


def test_choose_picks_the_a_of_the_best_mean_validation_psnr(data_root):
    """A model that outputs a flat gray image (128 once 8-bit): the chosen `a` maximises the mean PSNR over the validation images
    (computed here image by image with the protocol's bicubic), and the blind `a` the mean over degradations."""
    from src.data.datasets import resolve_set
    from src.data.testsets import bicubic_upscale, load_test_pairs
    from src.metrics import psnr
    from src.reports.blend import choose, grid

    class Gray(torch.nn.Module):
        scale = 4

        def forward(self, x):
            return torch.full((x.shape[0], 3, x.shape[2] * 4, x.shape[3] * 4), 0.5)

    paths = resolve_set("skimage_holdout", data_root)
    pick = choose(Gray(), paths, ["clean", "noise"], 4, 0, "official")
    a = grid()
    curves = {}
    for d in ("clean", "noise"):
        rows = []
        for _, hr, lr in load_test_pairs(paths, d, 4, 0, None, "official"):
            bic = bicubic_upscale(lr, 4, "official").astype(float)
            rows.append([psnr(np.clip(np.round(x * 128 + (1 - x) * bic), 0, 255).astype(np.uint8), hr, 4,
                              y_channel=False) for x in a])
        curves[d] = np.mean(rows, 0)
        assert pick["psnr"][d] == pytest.approx(curves[d], abs=1e-5)
        assert pick["oracle"][d] == a[int(np.argmax(curves[d]))]
    assert pick["blind"] == a[int(np.argmax((curves["clean"] + curves["noise"]) / 2))]
    assert pick["blind"] < 0.5          # a flat gray output is worth little: the blend leans on bicubic


@pytest.mark.slow
def test_blend_control_of_a_published_run_is_scored_and_reported(published, data_root, tmp_path):
    from src.data.datasets import resolve_set
    from src.data.testsets import bicubic_upscale, load_test_pairs
    from src.evaluation import super_resolve
    from src.metrics import psnr
    from src.models.loading import load

    campaign = tmp_path / "campaign"
    shutil.copytree(published, campaign / published.name)
    with pytest.raises(ValueError, match=r"val=\['Set5'\] must name validation sets that are not test sets"):
        main([f"blend={campaign}", "val=[Set5]"])
    assert main([f"blend={campaign}", "val=[skimage_holdout]"]) == 0
    blind, oracle = campaign / f"{published.name}.blend-blind", campaign / f"{published.name}.blend-oracle"
    chosen = json.loads((blind / "blend.json").read_text())["official"]
    res = json.loads((blind / "results_official.json").read_text())["Set5"]["clean"]
    # one image re-done by hand: the model's 8-bit output blended with the official bicubic at the chosen a
    model = load(published / "weights.safetensors").model
    baby = [p for p in resolve_set("Set5", data_root) if p.stem == "baby"]
    _, hr, lr = load_test_pairs(baby, "clean", 4, 0, None, "official")[0]
    sr = super_resolve(model, lr, 4).astype(float)
    bic = bicubic_upscale(lr, 4, "official").astype(float)
    a = chosen["blind"]
    mine = psnr(np.clip(np.round(a * sr + (1 - a) * bic), 0, 255).astype(np.uint8), hr, 4, y_channel=False)
    assert res["per_image"]["baby"]["psnr_rgb"] == pytest.approx(mine, abs=1e-9)
    assert "control:\n  label: blend toward bicubic (oracle)" in (oracle / "config.yaml").read_text()
