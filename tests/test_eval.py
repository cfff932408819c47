"""Evaluation protocol: metrics of 8-bit outputs, bad inputs, reuse of results, files, tiling, the CLI."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.data.testsets import load_test_pairs
from src.evaluation import evaluate, format_table, load_results, write_results
from src.metrics import psnr, ssim

REPO = Path(__file__).resolve().parents[1]


class Bicubic(nn.Module):
    """Stand-in SR model: bicubic upsampling (plus a counter, to see what was recomputed)."""

    def __init__(self, scale=4):
        super().__init__()
        self.scale, self.calls = scale, 0
        self.conv_last = nn.Identity()

    def forward(self, x):
        self.calls += 1
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def _smooth(h, w, seed=0, channels=3, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8 + 2, w // 8 + 2, channels))
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 1) * np.iinfo(dtype).max
    return np.round(img).astype(dtype)


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img[..., ::-1] if img.ndim == 3 and img.shape[2] == 3 else img
    if img.ndim == 3 and img.shape[2] == 4:
        arr = img[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
    return path


@pytest.fixture
def toy_set(tmp_path):
    return [_write(tmp_path / "Toy" / "HR" / f"im{i}.png", _smooth(52 + 4 * i, 60, seed=i)) for i in range(2)]


def test_metrics_are_those_of_the_rounded_8bit_output(toy_set, tmp_path, monkeypatch):
    monkeypatch.setattr("src.evaluation.CHUNK", 1)  # decoding in chunks must not change or lose images
    model = Bicubic()
    res = evaluate(model, {"Toy": toy_set}, ["clean", "noise"], scale=4, seed=0, cache_dir=tmp_path / "cache")
    assert set(res["Toy"]) == {"clean", "noise"}
    e = res["Toy"]["clean"]
    assert e["n_images"] == 2 and e["skipped"] == 0 and e["scale"] == 4
    ps, ss, pr = [], [], []
    for _, hr, lr in load_test_pairs(toy_set, "clean", 4, 0):
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        sr = (F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1) * 255).round()
        sr = sr[0].permute(1, 2, 0).to(torch.uint8).numpy()
        # the literature protocol rounds Y to integers, as MATLAB's rgb2ycbcr does on uint8 images
        ps.append(psnr(sr, hr, 4, round_y=True)), ss.append(ssim(sr, hr, 4, round_y=True))
        pr.append(psnr(sr, hr, 4, y_channel=False))
    assert e["psnr"] == pytest.approx(np.mean(ps), abs=1e-6)
    assert e["ssim"] == pytest.approx(np.mean(ss), abs=1e-9)
    assert e["psnr_rgb"] == pytest.approx(np.mean(pr), abs=1e-6)
    assert res["Toy"]["noise"]["psnr"] < e["psnr"]
    assert not model.training or model.calls  # evaluation ran in eval mode and restored the mode
    table = format_table(res)
    assert "Toy" in table and "clean" in table and "noise" in table and f"{e['psnr']:.2f}" in table


def test_bad_and_odd_images(tmp_path, caplog):
    folder = tmp_path / "Odd" / "HR"
    good = _write(folder / "a_rgb.png", _smooth(48, 48, 1))
    gray = _write(folder / "b_gray.png", _smooth(48, 44, 2, channels=1))  # cv2 drops the channel axis
    rgba = _write(folder / "c_rgba.png", _smooth(44, 48, 3, channels=4))
    deep = _write(folder / "d_16bit.png", _smooth(48, 48, 4, dtype=np.uint16))
    full = _write(folder / "e_trunc.png", _smooth(48, 48, 5))
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    tiny = _write(folder / "f_tiny.png", _smooth(3, 8, 6))
    small = _write(folder / "g_small.png", _smooth(16, 16, 7))  # x4 ok, but nothing left for SSIM
    junk = folder / "h_junk.png"
    junk.write_bytes(b"this is not an image")
    paths = [good, gray, rgba, deep, full, tiny, small, junk]
    with caplog.at_level(logging.WARNING, logger="src.evaluation"):
        res = evaluate(Bicubic(), {"Odd": paths}, ["clean"], scale=4)
    e = res["Odd"]["clean"]
    assert e["n_images"] == 4 and e["skipped"] == 4 and np.isfinite(e["psnr"])
    log = caplog.text
    for p in (full, tiny, small, junk):
        assert str(p) in log
    assert "smaller than the scale x4" in log and "SSIM" in log
    assert "4 image(s) skipped" in format_table(res)
    # 16-bit is scaled to 8 bits, gray replicated: the same pixels as their 8-bit RGB versions would give
    only16 = evaluate(Bicubic(), {"d": [deep]}, ["clean"])["d"]["clean"]["psnr"]
    as8 = _write(tmp_path / "d8.png", np.round(cv2.imread(str(deep), cv2.IMREAD_UNCHANGED)[..., ::-1]
                                               .astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert only16 == pytest.approx(evaluate(Bicubic(), {"d": [as8]}, ["clean"])["d"]["clean"]["psnr"], abs=1e-9)


def test_results_files_and_reuse(toy_set, tmp_path):
    run = tmp_path / "run"
    model = Bicubic()
    res = evaluate(model, {"Toy": toy_set}, ["clean"], scale=4)
    write_results(run, res)
    assert sorted(p.name for p in run.iterdir()) == ["results.csv", "results.json"]  # no temp files left
    loaded = load_results(run)
    assert loaded["Toy"]["clean"]["psnr"] == pytest.approx(res["Toy"]["clean"]["psnr"])
    # one line per image: the file stays small enough to publish and its diffs name the image
    lines = (run / "results.json").read_text().splitlines()
    per_image = [ln for ln in lines if ln.lstrip().startswith(tuple(f'"{p.stem}": {{' for p in toy_set))]
    assert len(per_image) == len(toy_set) and all(ln.rstrip(",").endswith("}") for ln in per_image)
    rows = (run / "results.csv").read_text().splitlines()
    assert rows[0] == "set,degradation,metric,value,n_images,skipped"
    assert len(rows) == 1 + 4 and rows[1].startswith("Toy,clean,psnr,") and rows[1].endswith(",2,0")
    calls = model.calls
    again = evaluate(model, {"Toy": toy_set}, ["clean", "jpeg"], scale=4, done=loaded)
    assert model.calls == calls + 2  # only jpeg was computed
    assert again["Toy"]["clean"] == loaded["Toy"]["clean"]
    # a different seed or scale, or a changed image count, is not reused
    evaluate(model, {"Toy": toy_set}, ["clean"], scale=4, seed=1, done=loaded)
    evaluate(model, {"Toy": toy_set[:1]}, ["clean"], scale=4, done=loaded)
    assert model.calls == calls + 5
    (run / "results.json").write_text("{broken")
    with pytest.warns(RuntimeWarning, match="results.json was unreadable"):  # as every state file (src.runs)
        assert load_results(run) == {}
    assert [p.name.split("-")[0] for p in run.glob("results.json.corrupt-*")] == ["results.json.corrupt"]


def test_tiled_evaluation_equals_untiled_for_srresnet(toy_set):
    from src.models.srresnet import MSRResNet

    torch.manual_seed(0)
    net = MSRResNet(num_feat=16, num_block=2, scale=4)
    whole = evaluate(net, {"Toy": toy_set}, ["clean"], scale=4)["Toy"]["clean"]
    tiled = evaluate(net, {"Toy": toy_set}, ["clean"], scale=4, tile=6, overlap=12)["Toy"]["clean"]
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)
    assert tiled["ssim"] == pytest.approx(whole["ssim"], abs=1e-6)


def test_bicubic_on_real_set5_matches_the_literature(data_root):
    from src.data.datasets import list_images

    res = evaluate(Bicubic(), {"Set5": list_images(data_root / "Set5" / "HR")}, ["clean"], scale=4)
    # Bicubic x4 on Set5 is 28.42 dB PSNR-Y with MATLAB's upsampler; PyTorch's bicubic (no antialiasing needed
    # when enlarging, but a = -0.75) lands within a few tenths.
    assert 28.0 < res["Set5"]["clean"]["psnr"] < 28.7


# --- src.eval ----------------------------------------------------------------------------------------------
BACKBONE = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 8, "num_block": 1, "scale": 4}


def _fake_run(run_dir: Path, seed=0):
    from src.models.loading import build_backbone

    torch.manual_seed(seed)
    net = build_backbone(BACKBONE)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"backbone": dict(BACKBONE)}}, ckpt)
    return ckpt


def _eval_cfg(root, ckpt, **kw):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt={ckpt}", f"data.root={root}", "sets=[Toy]",
                                         "degradations=[clean,noise]", "device=cpu", "cache_dir=null"]
                      + [f"{k}={v}" for k, v in kw.items()])
    return cfg


def test_eval_sweep_folder_and_force(toy_set, tmp_path, capsys):
    from src.eval import run_eval

    root = toy_set[0].parents[1].parent
    sweep = tmp_path / "sweep"
    for i in range(2):
        _fake_run(sweep / f"job{i}", seed=i)
    (sweep / "job_failed").mkdir()  # a job without a checkpoint is not a run
    out = run_eval(_eval_cfg(root, sweep))
    assert sorted(p.name for p in out) == ["job0", "job1"]
    for i in range(2):
        r = json.loads((sweep / f"job{i}" / "results.json").read_text())
        assert set(r["Toy"]) == {"clean", "noise"} and r["Toy"]["clean"]["n_images"] == 2
    printed = capsys.readouterr().out
    assert "PSNR (dB, Y channel)" in printed
    # ... and ends with one table of both models, a row per model and set, the numbers of their results files
    combined = printed.split("[eval] all 2 models, literature protocol:\n")[1].splitlines()
    assert combined[0] == "PSNR (dB, Y channel), literature protocol" and combined[1].split()[:3] == ["set", "clean", "noise"]
    for i, line in enumerate(combined[2:4]):
        r = json.loads((sweep / f"job{i}" / "results.json").read_text())["Toy"]
        assert line.split() == [f"job{i}", "Toy", f"{r['clean']['psnr']:.2f}", f"{r['noise']['psnr']:.2f}", "2"]
    assert len(combined) == 4
    # rerun: everything is reused; force recomputes
    before = (sweep / "job0" / "results.json").stat().st_mtime_ns
    out = run_eval(_eval_cfg(root, sweep / "job0" / "checkpoints" / "last.ckpt"))
    assert list(out) == [sweep / "job0"]
    r = json.loads((sweep / "job0" / "results.json").read_text())
    assert r["Toy"]["clean"]["n_images"] == 2
    run_eval(_eval_cfg(root, sweep / "job0", force="true", degradations="[jpeg]"))
    r = json.loads((sweep / "job0" / "results.json").read_text())
    assert set(r["Toy"]) == {"jpeg"} and (sweep / "job0" / "results.json").stat().st_mtime_ns > before


def test_eval_missing_set_names_path_and_download(tmp_path):
    from src.eval import run_eval

    ckpt = _fake_run(tmp_path / "run")
    cfg = _eval_cfg(tmp_path / "data", ckpt)
    cfg.sets = ["Urban100"]
    with pytest.raises(FileNotFoundError) as e:
        run_eval(cfg)
    msg = str(e.value)
    assert str(tmp_path / "data" / "Urban100" / "HR") in msg and "python -m src.data.download Urban100" in msg
    cfg.ckpt = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_eval(cfg)


def test_eval_cli(toy_set, tmp_path):
    root = toy_set[0].parents[1].parent
    ckpt = _fake_run(tmp_path / "run")
    cmd = [sys.executable, "-m", "src.eval", f"ckpt={ckpt}", f"data.root={root}", "sets=[Toy]",
           "degradations=clean", "device=cpu", f"cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Toy" in proc.stdout and (tmp_path / "run" / "results.csv").is_file()


def test_eval_sweep_goes_on_past_a_broken_checkpoint(toy_set, tmp_path):
    from src.eval import run_eval

    root = toy_set[0].parents[1].parent
    _fake_run(tmp_path / "sweep" / "a")
    bad = tmp_path / "sweep" / "b" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="1 of 2 runs could not be evaluated"):
        run_eval(_eval_cfg(root, tmp_path / "sweep", degradations="[clean]"))
    assert (tmp_path / "sweep" / "a" / "results.json").is_file()
    assert not (tmp_path / "sweep" / "b" / "results.json").exists()


def test_eval_cli_basicsr_pth_needs_and_takes_a_backbone(toy_set, tmp_path):
    from src.models.srresnet import MSRResNet

    root = toy_set[0].parents[1].parent
    pth = tmp_path / "net_g.pth"
    torch.save({"params_ema": MSRResNet(num_feat=32, num_block=4).state_dict()}, pth)
    base = [sys.executable, "-m", "src.eval", f"ckpt={pth}", f"data.root={root}", "sets=[Toy]", "degradations=clean",
            "device=cpu", f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'out'}"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    other = tmp_path / "other.pth"  # keys of no backbone of the suite: the architecture must be named
    torch.save({"params": {f"enc.{k}": v for k, v in MSRResNet(num_feat=32, num_block=4).state_dict().items()}}, other)
    missing = subprocess.run([*base[:3], f"ckpt={other}", *base[4:]], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env=env)
    assert missing.returncode != 0 and "backbone=" in missing.stderr + missing.stdout
    proc = subprocess.run(base + ["backbone=tiny"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    named = json.loads((tmp_path / "out" / "results.json").read_text())["Toy"]["clean"]
    assert named["n_images"] >= 1
    # a BasicSR .pth of a known backbone needs no backbone=: the same architecture is read off its keys
    proc = subprocess.run(base + ["force=true"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["Toy"]["clean"]["psnr"] == named["psnr"]


# --- protocols, per-image scores, older files, cache -------------------------------------------------------------
def test_per_image_scores_and_protocol_are_recorded(toy_set, tmp_path):
    from src.data.testsets import load_test_pairs as pairs
    from src.evaluation import results_files

    run = tmp_path / "run"
    for protocol in ("literature", "official"):
        res = evaluate(Bicubic(), {"Toy": toy_set}, ["clean", "noise"], scale=4, protocol=protocol)
        for d, e in res["Toy"].items():
            assert e["protocol"] == protocol and sorted(e["per_image"]) == ["im0", "im1"]
            for m in ("psnr", "ssim", "psnr_rgb", "ssim_rgb"):
                assert e[m] == pytest.approx(np.mean([v[m] for v in e["per_image"].values()]), abs=1e-12)
            # each image's figure is that image's own score, on this protocol's LR
            for path, hr, lr in pairs(toy_set, d, 4, 0, protocol=protocol):
                x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
                sr = (F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1) * 255)
                sr = sr.round()[0].permute(1, 2, 0).to(torch.uint8).numpy()
                assert e["per_image"][path.stem]["psnr_rgb"] == pytest.approx(psnr(sr, hr, 4, y_channel=False))
        write_results(run, res)
        reread = load_results(run, protocol)["Toy"]["noise"]["per_image"]
        assert reread["im1"] == res["Toy"]["noise"]["per_image"]["im1"]
        assert results_files(run, protocol)[1].is_file()
        title = format_table(res).splitlines()[0]
        assert title == ("PSNR (dB, Y channel), literature protocol" if protocol == "literature"
                         else "PSNR (dB, RGB), official protocol")
    assert sorted(p.name for p in run.iterdir()) == ["results.csv", "results.json", "results_official.csv",
                                                     "results_official.json"]
    lit, off = load_results(run), load_results(run, "official")
    assert lit["Toy"]["noise"]["psnr"] != off["Toy"]["noise"]["psnr"]
    with pytest.raises(ValueError, match="mix protocols"):
        write_results(run, {"A": lit["Toy"], "B": off["Toy"]})


def test_older_results_files_are_read_and_recomputed_only_where_needed(toy_set, tmp_path):
    model = Bicubic()
    new = evaluate(model, {"Toy": toy_set}, ["clean", "jpeg"], scale=4)
    old = {"Toy": {"clean": {k: v for k, v in new["Toy"]["clean"].items() if k not in ("per_image", "protocol")},
                   "jpeg": new["Toy"]["jpeg"]}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    loaded = load_results(tmp_path)
    assert loaded["Toy"]["clean"]["psnr"] == pytest.approx(new["Toy"]["clean"]["psnr"])
    assert format_table(loaded).startswith("PSNR (dB, Y channel), literature protocol")
    calls = model.calls
    again = evaluate(model, {"Toy": toy_set}, ["clean", "jpeg"], scale=4, done=loaded)
    assert model.calls == calls + 2  # the entry without per-image scores was recomputed, the other reused
    assert again["Toy"]["clean"] == new["Toy"]["clean"] and again["Toy"]["jpeg"] == new["Toy"]["jpeg"]
    # an entry of the other protocol is never reused
    evaluate(model, {"Toy": toy_set}, ["jpeg"], scale=4, done=loaded, protocol="official")
    assert model.calls == calls + 4


def test_unwritable_cache_falls_back_with_one_warning(toy_set, tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="src.evaluation"):
        res = evaluate(Bicubic(), {"Toy": toy_set}, ["clean", "noise"], scale=4, cache_dir=blocker / "testsets")
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1 and str(blocker / "testsets") in warnings[0].getMessage()
    assert res["Toy"]["noise"] == evaluate(Bicubic(), {"Toy": toy_set}, ["noise"], scale=4)["Toy"]["noise"]


def test_eval_both_protocols(toy_set, tmp_path):
    from src.eval import run_eval

    root = toy_set[0].parents[1].parent
    ckpt = _fake_run(tmp_path / "run")
    out = run_eval(_eval_cfg(root, ckpt, protocol="both", degradations="[clean]"))
    assert sorted(out[tmp_path / "run"]) == ["literature", "official"]
    lit = json.loads((tmp_path / "run" / "results.json").read_text())
    off = json.loads((tmp_path / "run" / "results_official.json").read_text())
    assert lit["Toy"]["clean"]["protocol"] == "literature" and off["Toy"]["clean"]["protocol"] == "official"
    with pytest.raises(ValueError, match="protocol='matlab': allowed literature, official or both"):
        run_eval(_eval_cfg(root, ckpt, protocol="matlab"))


# Bicubic x4 in the SR literature (MATLAB imresize both ways, PSNR/SSIM on MATLAB's rounded Y, 4 px cropped).
PUBLISHED_BICUBIC_X4 = {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "BSD100": (25.96, 0.6675),
                        "Urban100": (23.14, 0.6577)}


@pytest.mark.parametrize("name", [
    "Set5", "Set14", pytest.param("BSD100", marks=pytest.mark.slow), pytest.param("Urban100", marks=pytest.mark.slow)])
def test_literature_protocol_reproduces_published_bicubic(data_root, name):
    from src.data.datasets import list_images
    from src.evaluation import BicubicUpsampler

    folder = data_root / name / "HR"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    e = evaluate(BicubicUpsampler(4, "literature"), {name: list_images(folder)}, ["clean"], scale=4)[name]["clean"]
    psnr_y, ssim_y = PUBLISHED_BICUBIC_X4[name]
    assert abs(e["psnr"] - psnr_y) <= 0.01 and abs(e["ssim"] - ssim_y) <= 0.001, (e["psnr"], e["ssim"])
    if name == "Set5":  # float Y (round_y=False) reads a little higher
        e2 = evaluate(BicubicUpsampler(4, "literature"), {name: list_images(folder)}, ["clean"], scale=4,
                      round_y=False)[name]["clean"]
        assert e2["round_y"] is False and 0 < e2["psnr"] - e["psnr"] < 0.05


def test_gray_files_are_scored_on_grey_levels(tmp_path):
    from src.evaluation import BicubicUpsampler, score_image

    gray = _smooth(64, 56, seed=9, channels=1)  # (H, W)
    path = _write(tmp_path / "G" / "HR" / "g.png", gray)
    e = evaluate(BicubicUpsampler(4, "literature"), {"G": [path]}, ["clean"], scale=4)["G"]["clean"]
    (_, hr, lr), = load_test_pairs([path], "clean", 4, 0)
    sr = BicubicUpsampler(4)(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
    sr = (sr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    a, b = sr[4:-4, 4:-4, 0].astype(np.float64), hr[4:-4, 4:-4, 0].astype(np.float64)
    assert e["per_image"]["g"]["psnr"] == pytest.approx(10 * np.log10(255**2 / np.mean((a - b) ** 2)), abs=1e-5)
    # on Y of the replicated image, the range shrinks to 16-235 and PSNR rises by ~20 log10(255/219) = 1.3 dB
    on_y = score_image(sr, hr, 4, round_y=True)["psnr"]
    assert 1.0 < on_y - e["psnr"] < 1.6
    # the official protocol scores every image as RGB (BasicSR), Y unrounded
    off = evaluate(BicubicUpsampler(4, "official"), {"G": [path]}, ["clean"], scale=4, protocol="official")
    assert off["G"]["clean"]["round_y"] is False


def test_eval_bicubic_reference(toy_set, tmp_path):
    from src.eval import run_eval
    from src.evaluation import BicubicUpsampler

    root = toy_set[0].parents[1].parent
    with pytest.raises(ValueError, match="ckpt=bicubic .* needs out_dir"):
        run_eval(_eval_cfg(root, "bicubic"))
    out = run_eval(_eval_cfg(root, "bicubic", protocol="both", out_dir=tmp_path / "bicubic"))
    for protocol, name in (("literature", "results.json"), ("official", "results_official.json")):
        written = json.loads((tmp_path / "bicubic" / name).read_text())
        direct = evaluate(BicubicUpsampler(4, protocol), {"Toy": toy_set}, ["clean", "noise"], scale=4,
                          protocol=protocol)
        assert written["Toy"]["noise"]["per_image"] == direct["Toy"]["noise"]["per_image"]
        assert out[tmp_path / "bicubic"][protocol]["Toy"]["clean"]["psnr_rgb"] == direct["Toy"]["clean"]["psnr_rgb"]
    # each protocol upsamples with its own bicubic: MATLAB's and PIL's differ
    lr = np.random.default_rng(0).integers(0, 256, (1, 3, 12, 10)).astype(np.float32) / 255
    a, b = (BicubicUpsampler(4, p)(torch.from_numpy(lr)) for p in ("literature", "official"))
    assert a.shape == b.shape == (1, 3, 48, 40) and not torch.equal(a, b)


def test_given_lr_set_through_the_cli(toy_set, tmp_path):
    from src.data.testsets import bicubic_downscale
    from src.eval import run_eval

    root = toy_set[0].parents[1].parent
    for p in toy_set:
        _write(root / "Toy" / "LR" / f"{p.stem}x4.png", bicubic_downscale(cv2.imread(str(p))[..., ::-1].copy(), 4))
    ckpt = _fake_run(tmp_path / "run")
    run_eval(_eval_cfg(root, ckpt, degradations="[clean,given]"))
    r = json.loads((tmp_path / "run" / "results.json").read_text())["Toy"]
    # the given LR images are the literature's clean ones: the same scores
    assert r["given"]["per_image"] == r["clean"]["per_image"] and r["given"]["n_images"] == 2
    with pytest.raises(FileNotFoundError, match=r"no LR folder \(Toy: .*elsewhere"):
        run_eval(_eval_cfg(root, ckpt, degradations="[given]", **{"+lr_dirs.Toy": tmp_path / "elsewhere"}))


def test_bicubic_reference_rows_are_scored_once_and_printed_with_a_reading_line(toy_set, tmp_path, monkeypatch):
    from src.evaluation import BicubicUpsampler, bicubic_reference

    cache = tmp_path / "cache"
    ref = bicubic_reference({"Toy": toy_set}, ["clean", "noise"], 4, 0, "literature", True, cache)
    direct = evaluate(BicubicUpsampler(4, "literature"), {"Toy": toy_set}, ["clean", "noise"], scale=4, seed=0)
    for d in ("clean", "noise"):
        assert ref["Toy"][d]["psnr"] == pytest.approx(direct["Toy"][d]["psnr"], abs=1e-9)
    assert (cache / "bicubic_literature_x4.json").is_file()

    def no_forward(self, x):  # a cached reference must not be recomputed
        raise AssertionError("bicubic reference recomputed")

    monkeypatch.setattr(BicubicUpsampler, "forward", no_forward)
    again = bicubic_reference({"Toy": toy_set}, ["clean", "noise"], 4, 0, "literature", True, cache)
    assert again["Toy"]["clean"]["psnr"] == ref["Toy"]["clean"]["psnr"]
    with pytest.raises(AssertionError, match="recomputed"):  # another image list is scored anew
        bicubic_reference({"Toy": toy_set[:1]}, ["clean"], 4, 0, "literature", True, cache)

    monkeypatch.undo()
    (cache / "bicubic_literature_x4.json").write_text("{truncated")  # a corrupt cache: aside, then scored anew
    with pytest.warns(RuntimeWarning, match="bicubic_literature_x4.json was unreadable"):
        anew = bicubic_reference({"Toy": toy_set}, ["clean"], 4, 0, "literature", True, cache)
    assert anew["Toy"]["clean"]["psnr"] == ref["Toy"]["clean"]["psnr"]
    assert len(list(cache.glob("bicubic_literature_x4.json.corrupt-*"))) == 1

    model = evaluate(Bicubic(), {"Toy": toy_set}, ["clean", "noise"], scale=4, seed=0)
    lines = format_table(model, reference=ref).splitlines()
    row = next(line for line in lines if line.startswith("Toy bicubic"))
    assert f"{ref['Toy']['clean']['psnr']:.2f}" in row and f"{ref['Toy']['noise']['psnr']:.2f}" in row
    assert row.split()[-1] == "2"  # images
    header, model_row = lines[1], next(line for line in lines if line.startswith("Toy "))
    assert len({len(header), len(model_row), len(row)}) == 1  # the longer row label keeps the columns aligned
    assert lines[-1].startswith("Reading: the bicubic rows")
    assert "bicubic" not in format_table(model)


def test_json_lines_puts_innermost_objects_on_one_line_and_round_trips():
    from src.utils import json_lines

    obj = {"S": {"d": {"psnr": 30.125, "n": 2, "none": None, "per_image": {
        "a": {"psnr": 1.5, "ssim": 0.25}, "b{x}": {"psnr": -2.0}, "c\n]": {}}}}, "list": [1, {"k": 2}]}
    text = json_lines(obj)
    assert json.loads(text) == obj and text.endswith("}\n")
    lines = text.splitlines()
    assert '        "a": {"psnr": 1.5, "ssim": 0.25},' in lines
    assert '        "b{x}": {"psnr": -2.0},' in lines          # a brace inside a name does not break the layout
    assert '      "psnr": 30.125,' in lines          # objects holding objects stay one key per line
    assert len(text) < len(json.dumps(obj, indent=2)) + 1


def test_each_hr_image_is_prepared_for_scoring_once_for_all_degradations(toy_set, monkeypatch):
    from src import metrics

    made = []
    real_init = metrics.Reference.__init__

    def counting(self, hr, *args, **kwargs):
        made.append(hr.shape)
        real_init(self, hr, *args, **kwargs)

    monkeypatch.setattr(metrics.Reference, "__init__", counting)
    monkeypatch.setattr("src.evaluation.CHUNK", 1)
    res = evaluate(Bicubic(), {"Toy": toy_set}, ["clean", "noise", "jpeg"], scale=4)
    assert len(made) == len(toy_set)
    alone = {d: evaluate(Bicubic(), {"Toy": toy_set}, [d], scale=4)["Toy"][d] for d in ("noise", "jpeg")}
    for d, entry in alone.items():
        assert entry["per_image"] == res["Toy"][d]["per_image"]
