import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, TINY, compose_train, sweep_folder


def _run_train(tmp_path, overrides):
    from src.train import train

    cfg = compose_train(TINY + [f"paths.runs={tmp_path}", f"paths.cache={tmp_path / 'cache'}"] + overrides, tmp_path)
    return train(cfg, tmp_path), cfg


def test_fast_dev_run_writes_checkpoint_and_results(tmp_path, capsys):
    results, cfg = _run_train(tmp_path, ["debug=fast"])
    # the printed table ends with the bicubic reference of the same test images and a line on reading it
    out = capsys.readouterr().out
    assert "skimage_holdout bicubic" in out and "Reading: the bicubic rows" in out
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"skimage_holdout"}
    assert set(saved["skimage_holdout"]) == {"clean", "noise"}
    for metrics in saved["skimage_holdout"].values():
        assert math.isfinite(metrics["psnr"]) and 5 < metrics["psnr"] < 60
        assert metrics["n_images"] == 3
    assert (tmp_path / "results.csv").is_file()


def test_checkpoint_loads_weights_only_and_rebuilds_backbone(tmp_path):
    from src.models.loading import load_model

    _run_train(tmp_path, ["debug=fast"])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["backbone"]["_target_"] == "src.models.srresnet.MSRResNet"
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert not model.training
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_missing_data_root_names_path_and_how_to_get_it(tmp_path):
    from src.train import train

    cfg = compose_train(TINY + ["data=t91_bsd200", f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        train(cfg, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "T91" / "HR") in msg and "SR_DATA_ROOT" in msg


def test_bad_dropout_position_fails_before_training(tmp_path):
    from src.train import train

    cfg = compose_train(TINY + ["backbone=tiny", "dropout.position=b16"], tmp_path)  # tiny has 4 blocks
    with pytest.raises(ValueError, match="dropout.position"):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_multirun_sweep_runs_four_jobs_in_own_folders(tmp_path):
    cmd = [sys.executable, "-m", "src.train", "-m", "dropout.position=last,none", "dropout.p=0.1,0.5", "debug=fast",
           *TINY, f"paths.runs={tmp_path}", f"paths.cache={tmp_path / 'cache'}", "name=sw"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_folder(tmp_path, "sw")
    jobs = sorted(p for p in sweep.iterdir() if (p / "job.json").is_file())
    assert len(jobs) == 4
    for job, (p, pos) in zip(jobs, [(0.1, "last"), (0.1, "none"), (0.5, "last"), (0.5, "none")]):
        assert f"dropout.p-{p}_dropout.position-{pos}" in job.name  # folders are named by the overrides
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert cfg.dropout.position in ("last", "none")
        assert (job / "checkpoints" / "last.ckpt").is_file()
        results = json.loads((job / "results.json").read_text())
        assert all(math.isfinite(m["psnr"]) for m in results["skimage_holdout"].values())
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 4 and manifest["failed"] == []
    report = (sweep / "report" / "report.md").read_text()  # the sweep's tables, built at its end
    assert "Real-SRResNet (p=0.5)" in report and "Improvement" in report


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from src.models.loading import load_model

    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ValueError, match="broken.ckpt: not a readable checkpoint"):
        load_model(bad, backbone="tiny")


def test_training_images_smaller_than_a_patch_are_skipped_with_a_warning(tmp_path):
    import numpy as np

    from src.data.datasets import HRPatches
    from src.data.imageio import write_image

    rng = np.random.default_rng(0)
    write_image(tmp_path / "big.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    write_image(tmp_path / "small.png", rng.integers(0, 256, (20, 50, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="skipping 1 training image.*small.png"):
        data = HRPatches([tmp_path / "big.png", tmp_path / "small.png"], patch_size=32, length=4)
    assert [p.name for p in data.paths] == ["big.png"] and data[3].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="every training image is smaller"):
        HRPatches([tmp_path / "small.png"], patch_size=32, length=4)


@pytest.mark.parametrize("backbone", ["srresnet", "rrdb", "swinir"])
@pytest.mark.parametrize("position", ["last", "b4", "half"])
def test_every_backbone_trains_with_dropout_positions(tmp_path, backbone, position):
    # size=cpu narrows each backbone but keeps its depth, so every position of the full model still exists.
    results, cfg = _run_train(tmp_path, ["size=cpu", "debug=fast", f"backbone={backbone}", f"dropout.position={position}",
                                         "dropout.dim=element", "dropout.p=0.3", "eval.degradations=[clean]"])
    assert math.isfinite(results["skimage_holdout"]["clean"]["psnr"])
    built = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # the dropout node is passed to the backbone beside its architecture, and saved with the checkpoint
    assert built["hyper_parameters"]["dropout"]["position"] == position
    assert not any(k.startswith("dropout") for k in built["hyper_parameters"]["backbone"])


def test_init_from_weights_fine_tunes_with_a_fresh_optimizer(tmp_path):
    """init_from loads a BasicSR .pth (here in the paper's details layout) strictly; lr=0 keeps it unchanged."""
    from src.models.srresnet import MSRResNet

    torch.manual_seed(3)
    source = MSRResNet(num_feat=32, num_block=4)  # conf/backbone/tiny.yaml's architecture
    theirs = {(f"body{int(k.split('.')[1]) + 1}.0.{k.split('.', 2)[2]}" if k.startswith("body.") else k): v
              for k, v in source.state_dict().items()}
    pth = tmp_path / "published.pth"
    torch.save({"params_ema": theirs}, pth)
    run = tmp_path / "run"
    _run_train(run, ["debug=fast", "backbone=tiny", f"init_from={pth}", "module.optimizer.lr=0",
                     "module.scheduler.eta_min=0"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    net = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert all(torch.equal(net[k], v) for k, v in source.state_dict().items())
    # a fresh optimizer: Adam's step count is this run's (the file has none to carry over)
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {ckpt["global_step"]}


def test_init_from_a_mismatched_file_fails_before_training(tmp_path):
    from src.models.srresnet import MSRResNet
    from src.train import train

    pth = tmp_path / "wide.pth"
    torch.save({"params": MSRResNet(num_feat=16, num_block=4).state_dict()}, pth)
    cfg = compose_train(TINY + ["backbone=tiny", f"init_from={pth}"], tmp_path)
    with pytest.raises(ValueError, match=r"wide\.pth: weights do not fit.*conv_first\.weight \(16, 3, 3, 3\) vs "
                                         r"\(32, 3, 3, 3\)"):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    torch.save({"params": MSRResNet(num_feat=32, num_block=5).state_dict()}, pth)
    with pytest.raises(ValueError, match=r"wide\.pth: its \d+ weights fit no known key layout.*body\.4\.conv1"):
        train(compose_train(TINY + ["backbone=tiny", f"init_from={pth}"], tmp_path), tmp_path)


@pytest.mark.parametrize("option,expected", [("default", []), ("lr_monitor", ["LearningRateMonitor"]),
                                             ("rich", ["RichProgressBar"]),
                                             ("[lr_monitor,rich]", ["LearningRateMonitor", "RichProgressBar"])])
def test_callbacks_compose_and_instantiate(tmp_path, option, expected):
    from src.train import build_callbacks

    cfg = compose_train([f"callbacks={option}"], tmp_path)
    built = build_callbacks(cfg, loggers=["a logger"], interactive=True)
    assert sorted(type(c).__name__ for c in built) == expected
    # without a terminal a progress bar would flood the log: only the other callbacks stay
    quiet = build_callbacks(cfg, loggers=["a logger"], interactive=False)
    assert sorted(type(c).__name__ for c in quiet) == [n for n in expected if n != "RichProgressBar"]


def test_lr_monitor_without_a_logger_is_a_clear_error(tmp_path):
    from src.train import build_callbacks

    cfg = compose_train(["callbacks=lr_monitor", "logger=none"], tmp_path)
    with pytest.raises(ValueError, match=r"callbacks.lr_monitor .*logger=none.*logger=csv"):
        build_callbacks(cfg, loggers=[], interactive=True)


@pytest.mark.parametrize("option,expected", [("none", []), ("csv", ["ResumableCSVLogger"]),
                                             ("tensorboard", ["ResumableCSVLogger", "TensorBoardLogger"]),
                                             ("wandb", ["ResumableCSVLogger", "WandbLogger"])])
def test_loggers_compose_and_instantiate(tmp_path, option, expected):
    from src.loggers import build_loggers, finish_wandb

    loggers = build_loggers(compose_train([f"logger={option}"], tmp_path))
    try:
        assert sorted(type(lg).__name__ for lg in loggers) == expected
    finally:
        finish_wandb(loggers)


def test_tensorboard_logger_and_lr_monitor_record_a_run(tmp_path):
    _run_train(tmp_path, ["logger=tensorboard", "callbacks=lr_monitor", "trainer.max_steps=3",
                          "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "backbone=tiny",
                          "eval.degradations=[clean]"])
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    tb.Reload()
    assert [e.step for e in tb.Images("val/panel")] == [3]  # the validation crops, as W&B gets them
    assert [p.name for p in (tmp_path / "visualization").glob("*.png")] == ["step-000003.png"]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    lr_columns = [c for c in header if c.startswith("lr-")]  # LearningRateMonitor's column, beside the module's own
    assert lr_columns and "train/lr" in header


def test_progress_lines_carry_elapsed_time_and_eta():
    from src.train import LineProgress, clock

    assert clock(0) == "0:00:00" and clock(3599.6) == "1:00:00" and clock(90061) == "1d+1:01:01"
    progress = LineProgress()
    progress.start_step = 100  # resumed at step 100: speed counts this process's steps only
    line = progress.line(300, 1100, {"train/loss": torch.tensor(0.05), "val/psnr": torch.tensor(27.5)}, 100.0)
    # 200 steps in 100 s = 2 it/s; 800 steps left = 400 s
    assert line == "[train] step 300/1100, train/loss 0.05, val/psnr 27.5, 2.00 it/s, elapsed 0:01:40, ETA 0:06:40"


def test_build_parts_gives_plain_hyperparameters_and_fails_on_the_model_first(tmp_path):
    from omegaconf import DictConfig, ListConfig

    from src.train import build_parts

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", "ema.decay=0.5"], tmp_path)
    module, datamodule = build_parts(cfg)

    def nodes(value):
        if isinstance(value, (DictConfig, ListConfig)):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from nodes(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from nodes(v)

    assert not list(nodes(dict(module.hparams)))  # checkpoints load with weights_only: no OmegaConf objects
    assert module.hparams.backbone == OmegaConf.to_container(cfg.module.backbone, resolve=True)
    assert module.net_ema is not None and datamodule.scale == cfg.scale
    bad = compose_train(TINY + ["dropout.position=nowhere", "data.root=/nonexistent"], tmp_path)
    with pytest.raises(ValueError, match="nowhere"):  # the model's error, not the missing data's
        build_parts(bad)
