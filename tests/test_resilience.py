"""DDP on the CPU, kill -9 and resume, failing sweep jobs, the NaN guard, sweep files, joblib."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, TINY, compose_train, sweep_folder

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(runs, *overrides, multirun=False):
    return [sys.executable, "-m", "src.train", *(["-m"] if multirun else []), *TINY, f"paths.runs={runs}",
            f"paths.cache={runs}/cache", *overrides]


def only_job(runs, name):
    jobs = [p for p in (Path(runs) / name).iterdir() if (p / "config.yaml").is_file()]
    assert len(jobs) == 1, jobs
    return jobs[0]


def net_state(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_ddp_cpu_two_processes(tmp_path):
    cmd = train_cmd(tmp_path, "trainer=ddp_cpu", "trainer.max_steps=4", "trainer.val_check_interval=2", "name=ddp",
                    "eval.degradations=[clean]")
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    job = only_job(tmp_path, "ddp")
    done = json.loads((job / "train_done.json").read_text())
    assert done["global_step"] == 4
    # data.batch_size=2 (TINY) is the global batch: one patch on each of the 2 processes
    assert done["batch"] == {"global": 2, "devices": 2, "per_device": 1}
    assert proc.stdout.count("[train] batch: 2 LR patches per step = 2 device(s) x 1") == 1  # rank 0 only
    assert json.loads((job / "results.json").read_text())["skimage_holdout"]["clean"]["n_images"] == 3


@pytest.mark.parametrize("extra", [(), ("trainer.accumulate_grad_batches=2", "ema.decay=0.9", "data.pool_size=4",
                                        "data.degrade_size=80")],
                         ids=["plain", "accumulate2-ema-pool-degrade80"])
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, extra):
    args = ("trainer.max_steps=48", "ckpt_every_n_steps=3", "trainer.val_check_interval=24", "name=kr",
            "eval.degradations=[clean]", "dropout.p=0.5", *extra)
    ref = subprocess.run(train_cmd(tmp_path / "ref", *args), cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    ckpt = _run_killed_then_resumed(tmp_path / "killed", args, "kr", min_step=6)
    a, b = net_state(only_job(tmp_path / "ref", "kr") / "checkpoints/last.ckpt"), net_state(ckpt)
    assert a.keys() == b.keys()
    assert any(k.startswith("net_ema.") for k in a) == ("ema.decay=0.9" in extra)  # the average is compared too
    # Under the default layout (channels_last: auto, channels_last on a CPU): the saved tensors keep their strides.
    convs = [k for k in a if a[k].dim() == 4]
    assert convs and all(a[k].is_contiguous(memory_format=torch.channels_last)
                         and b[k].is_contiguous(memory_format=torch.channels_last) for k in convs)
    assert not all(a[k].is_contiguous() for k in convs)  # not merely a shape where both layouts coincide
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def _run_killed_then_resumed(runs, args, name, min_step):
    """Start training, kill -9 its process group once a checkpoint of step >= min_step exists, rerun it (resume)."""
    proc = subprocess.Popen(train_cmd(runs, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.glob(f"{name}/*/checkpoints/last.ckpt"))
        if found:
            try:
                step = torch.load(found[0], map_location="cpu", weights_only=True)["global_step"]
            except Exception:  # replaced while being read
                step = -1
            if step >= min_step:
                ckpt = found[0]
                break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, "training finished before it could be killed"
    assert not (ckpt.parent.parent / "train_done.json").exists()
    resumed = subprocess.run(train_cmd(runs, *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    return ckpt


def test_ddp_kill9_then_resume_with_a_pool_matches_uninterrupted_run(tmp_path):
    # Each rank holds its own pool of degraded pairs; the checkpoint must restore every rank's, not rank 0's on all.
    args = ("trainer=ddp_cpu", "trainer.max_steps=16", "ckpt_every_n_steps=2", "trainer.val_check_interval=16",
            "name=kd", "eval.degradations=[clean]", "data.pool_size=4", "data.lr_patch_size=8", "data.val_crop=32")
    ref = subprocess.run(train_cmd(tmp_path / "ref", *args), cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ckpt = _run_killed_then_resumed(tmp_path / "killed", args, "kd", min_step=6)
    pools = torch.load(ckpt, map_location="cpu", weights_only=True)["SRDataModule"]["pools"]
    assert len(pools) == 2 and not torch.equal(pools[0]["lr"], pools[1]["lr"])  # one pool per rank, each its own
    a, b = net_state(only_job(tmp_path / "ref", "kd") / "checkpoints/last.ckpt"), net_state(ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed DDP weights differ from the uninterrupted run"


def test_sweep_with_failing_job_finishes_others_and_exits_nonzero(tmp_path):
    # A training set that does not exist fails only when that job reads its data (the preflight builds models, it
    # reads no data): that job fails, the other two must still run.
    cmd = train_cmd(tmp_path, "debug=fast", "name=sw", "data.train_sets=[skimage],[nowhere],[skimage_holdout]",
                    multirun=True)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    manifest = json.loads((sweep_folder(tmp_path, "sw") / "manifest.json").read_text())
    status = {name.split("data.train_sets-")[1]: job["status"] for name, job in manifest["jobs"].items()}
    assert status == {"skimage": "completed", "nowhere": "failed", "skimage_holdout": "completed"}
    (failed,) = manifest["failed"]
    assert "nowhere" in manifest["jobs"][failed]["error"]
    assert "FAILED" in proc.stderr


def test_rerunning_a_finished_sweep_skips_complete_jobs(tmp_path):
    cmd = train_cmd(tmp_path, "trainer.max_steps=2", "name=again", "dropout.p=0.1,0.3", multirun=True)
    first = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already complete") == 2


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    from src.models.module import NonFiniteLossError
    from src.train import train

    # An absurd learning rate blows the weights up within a few steps: a real way to get a non-finite loss.
    cfg = compose_train(TINY + ["module.optimizer.lr=1e30", "trainer.max_steps=20", "ckpt_every_n_steps=1"], tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as err:
        train(cfg, tmp_path)
    step = int(str(err.value).split("at step ")[1].split(":")[0])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == step  # the checkpoint after the last finite step
    assert not (tmp_path / "train_done.json").exists()


SWEEP_JOBS = {"positions": 9, "probabilities": 6, "dimensions": 48, "backbones": 6, "repro_small": 6,
              "repro_probabilities": 4, "repro_rrdb": 2, "repro_positions": 9, "repro_bicubic": 48}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")))
def test_every_sweep_file_composes_and_expands(name, tmp_path):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.resolvers import register_resolvers

    register_resolvers()
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    search_path = create_config_search_path(str(REPO / "conf"))
    search_path.prepend("sweeps", f"file://{REPO / 'sweeps'}")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    for size in ([], ["size=cpu"]):  # the file's own setting, and its CPU trial
        cfg = loader.load_configuration(name, overrides=size, run_mode=RunMode.MULTIRUN)
        params = cfg.hydra.sweeper.params
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        assert sum(len(b) for b in batches) == SWEEP_JOBS[name]
        assert cfg.name == name
        if not name.startswith("repro"):  # the reduced campaign's experiments set their own length
            assert cfg.trainer.max_steps == (100 if size else 500000)
        # every job's config composes and its backbone accepts the dropout setting
        for job in batches[0]:
            job_cfg = loader.load_configuration(name, overrides=[*size, *job], run_mode=RunMode.RUN)
            OmegaConf.to_container(job_cfg.backbone, resolve=True)


def test_cli_override_wins_over_sweep_axis(tmp_path):
    # positions.yaml sweeps 9 positions at p=0.7; the command line narrows the axis and changes p.
    cmd = [sys.executable, "-m", "src.train", "--config-dir", "sweeps", "--config-name", "positions", "-m",
           "size=cpu", "trainer.max_steps=1", "dropout.p=0.5", "dropout.position=last,b4", *TINY,
           f"paths.runs={tmp_path}", f"paths.cache={tmp_path}/cache", "eval.degradations=[clean]"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in sweep_folder(tmp_path, "positions").iterdir() if (p / "job.json").is_file()]
    configs = [OmegaConf.load(j / "config.yaml") for j in jobs]
    assert sorted(c.dropout.position for c in configs) == ["b4", "last"]
    assert {c.dropout.p for c in configs} == {0.5}
    assert {c.backbone.num_feat for c in configs} == {16}  # size=cpu narrowed the full SRResNet
    hydra_saved = [OmegaConf.load(j / ".hydra" / "config.yaml") for j in jobs]
    assert {c.backbone.num_feat for c in hydra_saved} == {16}  # Hydra's own record is the network that ran


def test_joblib_launcher_runs_two_jobs(tmp_path):
    cmd = train_cmd(tmp_path, "debug=fast", "name=jl", "dropout.p=0.1,0.2", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", multirun=True)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((sweep_folder(tmp_path, "jl") / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 2 and manifest["failed"] == []


def test_joblib_jobs_split_the_cores(monkeypatch):
    from hydra.types import RunMode

    from src.train import share_cores
    from src.utils import job_threads

    assert [job_threads(n, env={}, cores=16) for n in (1, 2, 3, -1, -15)] == [None, 8, 5, 1, 8]
    assert job_threads(2, env={"OMP_NUM_THREADS": "3"}, cores=16) is None  # the user's choice stands
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    try:
        torch.set_num_threads(cores)
        share_cores(OmegaConf.create({"mode": RunMode.RUN, "launcher": joblib}))  # a single run keeps every core
        assert torch.get_num_threads() == cores
        share_cores(OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": joblib}))
        assert torch.get_num_threads() == max(1, cores // 2)
    finally:
        torch.set_num_threads(before)
