"""The cluster path on one machine: sweeps through submitit's executor, a 2-node SLURM DDP job simulated with
SLURM's environment, and preemption (SIGUSR1 -> checkpoint -> `scontrol requeue` -> resume)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, compose_train

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PROBE = str(REPO / "tests" / "record_draws.py")
SHORT = ("eval.degradations=[clean]",)


def train_cmd(runs, *overrides, multirun=False, probe=False):
    entry = [PROBE] if probe else ["-m", "src.train"]
    return [sys.executable, *entry, *(["-m"] if multirun else []), *TINY, f"paths.runs={runs}",
            f"paths.cache={runs}/cache", *overrides]


def run(cmd, env=ENV, timeout=600):
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def job_dirs(runs):
    """Every job folder under a runs root (each job writes job.json, whether it trains or fails)."""
    return {p.parent: p for p in Path(runs).rglob("job.json") if (p.parent / ".hydra").is_dir()}


def the_run(runs):
    (folder,) = job_dirs(runs)
    return folder


def manifest(runs):
    (path,) = Path(runs).rglob("manifest.json")
    return json.loads(path.read_text())


def net_state(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a, b):
    a, b = net_state(a), net_state(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ckpt_step(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def free_port_job_id():
    # Lightning's SLURM environment derives the rendezvous port from the job id (15000 + its last 4 digits):
    # pick a job id whose port is free here, as SLURM's own would be on a cluster.
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 15000 <= port < 25000:
            return f"77{port - 15000:04d}"
    for port in range(15000 + os.getpid() % 5000, 25000):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return f"77{port - 15000:04d}"
    raise RuntimeError("no free port in 15000-24999")


def slurm_env(job_id, rank, ntasks, nnodes, **extra):
    """What SLURM puts in the environment of task `rank` of an `sbatch --nodes=nnodes --ntasks-per-node=...`
    job started with srun (one task per node here, so every task is local rank 0 of its own node)."""
    per_node = ntasks // nnodes
    return {**ENV, "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "reflash-sr", "SLURM_NTASKS": str(ntasks),
            "SLURM_NNODES": str(nnodes), "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank % per_node), "SLURM_NODEID": str(rank // per_node),
            "SLURM_NODELIST": ",".join(["localhost"] * nnodes), "SLURM_RESTART_COUNT": "0", **extra}


# ---------------------------------------------------------------------------------------------------- submitit


def test_slurm_launcher_asks_for_the_warning_signal_time_limit_and_requeue(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_train(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600",
                         "hydra.launcher.signal_delay_s=240"], tmp_path)
    launcher = cfg.hydra.launcher
    script = _make_sbatch_string(command="python -m submitit.core._submit x", folder=tmp_path, job_name="j",
                                 partition=launcher.partition, time=launcher.timeout_min,
                                 signal_delay_s=launcher.signal_delay_s,
                                 additional_parameters=dict(launcher.additional_parameters))
    assert "#SBATCH --signal=USR1@240" in script  # what preemption.signal catches, signal_delay_s early
    assert "#SBATCH --time=600" in script and "#SBATCH --requeue" in script
    assert cfg.preemption.signal == "SIGUSR1"


def test_bad_preemption_signal_is_a_clear_error():
    from src.cluster import parse_signal

    assert parse_signal("USR1") == signal.SIGUSR1 and parse_signal("SIGTERM") == signal.SIGTERM
    with pytest.raises(ValueError, match=r"preemption.signal='SIGKILL'.*SIGUSR1"):
        parse_signal("SIGKILL")
    with pytest.raises(ValueError, match=r"preemption.signal='NOPE'"):
        parse_signal("NOPE")


def test_submitit_sweep_matches_basic_launcher_and_records_the_failing_job(tmp_path):
    # A training set that does not exist fails only when that job reads its data (the preflight reads none).
    args = ("trainer.max_steps=3", "name=sub", "data.train_sets=[skimage],[nowhere]", *SHORT)
    basic = run(train_cmd(tmp_path / "basic", *args, multirun=True))
    sub = run(train_cmd(tmp_path / "submitit", *args, "hydra/launcher=submitit_local", multirun=True))
    assert basic.returncode != 0 and sub.returncode != 0  # a failed job fails the sweep, under both launchers
    assert "FAILED" in sub.stderr
    # the jobs really went through submitit: pickled, run in their own processes, logged in its folder
    assert list((tmp_path / "submitit").rglob(".submitit/*/*_submitted.pkl"))
    assert list((tmp_path / "submitit").rglob(".submitit/*/*_log.out"))

    def relative(root):
        return sorted(str(p.relative_to(root)) for p in job_dirs(root))

    assert relative(tmp_path / "basic") == relative(tmp_path / "submitit") and len(relative(tmp_path / "basic")) == 2
    mb, ms = manifest(tmp_path / "basic"), manifest(tmp_path / "submitit")
    assert ms["failed"] == mb["failed"] and len(ms["failed"]) == 1 and "nowhere" in ms["failed"][0]
    assert "nowhere" in ms["jobs"][ms["failed"][0]]["error"]
    for name, job in mb["jobs"].items():
        other = ms["jobs"][name]
        assert {k: other[k] for k in ("status", "dir", "error") if k in other} == \
               {k: job[k] for k in ("status", "dir", "error") if k in job}
        assert [o for o in other["overrides"] if "paths." not in o] == \
               [o for o in job["overrides"] if "paths." not in o]
    for folder in job_dirs(tmp_path / "basic"):
        twin = tmp_path / "submitit" / folder.relative_to(tmp_path / "basic")
        if (folder / "results.json").is_file():
            assert json.loads((folder / "results.json").read_text()) == \
                   json.loads((twin / "results.json").read_text())
            assert same_weights(folder / "checkpoints/last.ckpt", twin / "checkpoints/last.ckpt")
        else:
            assert not (twin / "results.json").exists()


def _submitit_tasks(root):
    """pid -> the run folder of each live submitit job process under `root` (found by its open train.log)."""
    tasks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "submitit.core._submit" not in cmdline or str(root) not in cmdline:
                continue
            logs = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        tasks[int(proc.name)] = next((Path(f).parent for f in logs if f.endswith("train.log")), None)
    return tasks


@pytest.mark.slow
def test_killed_submitit_job_resumes_when_the_sweep_is_rerun(tmp_path):
    args = ("trainer.max_steps=40", "ckpt_every_n_steps=2", "trainer.val_check_interval=40", "name=kill",
            "dropout.p=0.1,0.3", *SHORT)
    runs = tmp_path / "submitit"
    cmd = train_cmd(runs, *args, "hydra/launcher=submitit_local", multirun=True)
    sweep = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.time() + 400
    while victim is None and time.time() < deadline and sweep.poll() is None:
        for pid, folder in _submitit_tasks(runs).items():
            ckpt = folder / "checkpoints/last.ckpt" if folder else None
            if ckpt is not None and ckpt.is_file() and 6 <= ckpt_step(ckpt) < 30:
                os.kill(pid, signal.SIGKILL)
                victim = folder
                break
        time.sleep(0.2)
    sweep.communicate(timeout=600)
    assert victim is not None, "no submitit job could be caught mid-run"
    assert sweep.returncode != 0  # submitit reports the killed job; the sweep fails
    deadline = time.time() + 300
    while _submitit_tasks(runs) and time.time() < deadline:  # the other job runs on after the driver exits
        time.sleep(0.5)
    assert not (victim / "train_done.json").exists()

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    logs = "".join(p.read_text() for p in runs.rglob(".submitit/*/*_log.out"))
    assert f"resuming from {victim / 'checkpoints/last.ckpt'}" in logs
    assert all(job["status"] == "completed" for job in manifest(runs)["jobs"].values())
    # the resumed job ends where an uninterrupted run of it ends
    override = next(a for a in json.loads((victim / "job.json").read_text())["overrides"] if "dropout.p=" in a)
    ref = run(train_cmd(tmp_path / "ref", *[a for a in args if "dropout.p=" not in a], override))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert same_weights(the_run(tmp_path / "ref") / "checkpoints/last.ckpt", victim / "checkpoints/last.ckpt")


# ---------------------------------------------------------------------------------------------------- SLURM DDP


def _draws(folder):
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in Path(folder).glob("rank*.json")}


def test_two_node_slurm_job_trains_like_two_local_processes(tmp_path):
    args = ("trainer=ddp_cpu", "trainer.max_steps=4", "trainer.val_check_interval=4", "name=ddp", *SHORT)
    job_id = free_port_job_id()
    slurm_runs, local_runs = tmp_path / "slurm", tmp_path / "local"
    (tmp_path / "slurm_draws").mkdir()
    procs = []
    for rank in range(2):
        env = slurm_env(job_id, rank, ntasks=2, nnodes=2, SR_DRAWS_DIR=str(tmp_path / "slurm_draws"))
        env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)  # Lightning derives both from SLURM's
        procs.append(subprocess.Popen(
            train_cmd(slurm_runs, *args, "trainer.num_nodes=2", "trainer.devices=1", probe=True), cwd=REPO,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    (tmp_path / "local_draws").mkdir()
    local = run(train_cmd(local_runs, *args, probe=True), env={**ENV, "SR_DRAWS_DIR": str(tmp_path / "local_draws")})
    assert local.returncode == 0, local.stderr[-3000:]

    slurm, loc = _draws(tmp_path / "slurm_draws"), _draws(tmp_path / "local_draws")
    assert {r: (d["environment"], d["world_size"], d["node_rank"], d["local_rank"]) for r, d in slurm.items()} == \
           {0: ("SLURMEnvironment", 2, 0, 0), 1: ("SLURMEnvironment", 2, 1, 0)}
    assert {d["environment"] for d in loc.values()} == {"LightningEnvironment"}
    assert slurm[0]["pid"] != slurm[1]["pid"]
    # every step, the two ranks degrade different crops with different draws; and exactly as local DDP does
    assert len(slurm[0]["draws"]) == 4 and all(slurm[0]["draws"][s] != slurm[1]["draws"][s] for s in slurm[0]["draws"])
    assert {r: d["draws"] for r, d in slurm.items()} == {r: d["draws"] for r, d in loc.items()}

    assert len(list(slurm_runs.rglob("*.ckpt"))) == 1 and len(list(slurm_runs.rglob("results*.json"))) == 1
    folder = the_run(slurm_runs)
    assert json.loads((folder / "train_done.json").read_text())["global_step"] == 4
    assert json.loads((folder / "job.json").read_text())["status"] == "completed"
    assert same_weights(folder / "checkpoints/last.ckpt", the_run(local_runs) / "checkpoints/last.ckpt")


# ---------------------------------------------------------------------------------------------------- preemption


def fake_scontrol(tmp_path):
    """An `scontrol` that records its arguments instead of talking to a SLURM controller."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    script.chmod(0o755)
    return bin_dir, log


def test_sigusr1_checkpoints_requeues_and_the_requeued_run_ends_bit_identical(tmp_path):
    # No periodic checkpoint before the end: the one found after the signal can only come from the signal.
    args = ("trainer.max_steps=24", "ckpt_every_n_steps=1000", "trainer.val_check_interval=24", "name=pre",
            "dropout.p=0.5", *SHORT)
    ref = run(train_cmd(tmp_path / "ref", *args))
    assert ref.returncode == 0, ref.stderr[-3000:]

    bin_dir, log = fake_scontrol(tmp_path)
    runs, draws = tmp_path / "slurm", tmp_path / "draws"
    draws.mkdir()
    job_id = free_port_job_id()
    env = slurm_env(job_id, 0, ntasks=1, nnodes=1, PATH=f"{bin_dir}:{ENV['PATH']}", SR_DRAWS_DIR=str(draws))
    proc = subprocess.Popen(train_cmd(runs, *args, probe=True), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    signalled_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rank0 = draws / "rank0.json"
        try:
            seen = max(map(int, json.loads(rank0.read_text())["draws"])) if rank0.is_file() else -1
        except (ValueError, json.JSONDecodeError):  # caught mid-write
            seen = -1
        if 4 <= seen < 16:
            signalled_at = seen
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.05)
    out = proc.communicate(timeout=300)[0]
    assert signalled_at is not None, "training finished before it could be signalled"
    assert proc.returncode == 3, out[-3000:]  # src.cluster.PREEMPTED_EXIT_CODE
    assert "SLURMEnvironment" in (draws / "rank0.json").read_text()
    assert log.read_text().split() == ["requeue", job_id]
    folder = the_run(runs)
    step = ckpt_step(folder / "checkpoints/last.ckpt")
    assert signalled_at < step < 24  # written at once (the step after the signal), not at the end
    assert not (folder / "train_done.json").exists() and not (folder / "results.json").exists()
    assert not list(runs.rglob("hpc_ckpt*"))  # Lightning's own requeue checkpoint is not used

    requeued = run(train_cmd(runs, *args), env={**env, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming from {folder / 'checkpoints/last.ckpt'}" in requeued.stdout
    assert json.loads((folder / "train_done.json").read_text())["global_step"] == 24
    assert log.read_text().split() == ["requeue", job_id]  # no second requeue
    assert same_weights(the_run(tmp_path / "ref") / "checkpoints/last.ckpt", folder / "checkpoints/last.ckpt")
