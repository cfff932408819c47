"""Nothing lost under races, signals, requeues and crafted inputs: the run lock, exit codes, refused reruns,
publishing, crafted weights and memory limits."""
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest

from conftest import REPO, TOY, toy_root
from src import runs


# --- the run lock -------------------------------------------------------------------------------------------
def _append(log, line):
    # O_APPEND: each line lands whole and in order of the writes, whichever process writes it
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def _contender(run_dir, log, barrier, rounds):
    warnings.simplefilter("error")  # a takeover between live contenders would be a false "stale" judgement
    for r in range(rounds):
        barrier.wait()
        try:
            with runs.lock(run_dir):
                _append(log, f"enter {r} {os.getpid()}")
                time.sleep(0.001)
                _append(log, f"exit {r} {os.getpid()}")
        except runs.RunFolderBusy:
            pass


def test_racing_processes_never_hold_the_lock_together(tmp_path):
    n, rounds = 4, 120
    ctx = multiprocessing.get_context("fork")
    barrier, log = ctx.Barrier(n, timeout=30), tmp_path / "holders.log"
    procs = [ctx.Process(target=_contender, args=(tmp_path / "run", log, barrier, rounds)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    held, rounds_held = None, set()
    for line in log.read_text().splitlines():
        what, r, pid = line.split()
        if what == "enter":
            assert held is None, f"PID {pid} entered round {r} while PID {held} held the lock"
            held = pid
            rounds_held.add(r)
        else:
            assert held == pid
            held = None
    assert len(rounds_held) == rounds  # every round someone got the lock
    assert not (tmp_path / "run" / runs.LOCK).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no temporary lock files left


def _hold_as_node_b(run_dir, lease_s, held):
    import socket

    socket.gethostname = lambda: "node-b"
    with runs.lock(run_dir, lease_s=lease_s):
        held.set()
        time.sleep(600)


def _holder_on_other_host(run_dir, lease_s):
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    proc = ctx.Process(target=_hold_as_node_b, args=(run_dir, lease_s, held), daemon=True)
    proc.start()
    assert held.wait(30)
    return proc


def test_lock_of_another_host_holds_while_renewed_and_goes_stale_when_renewal_stops(tmp_path):
    lease = 1.0
    proc = _holder_on_other_host(tmp_path, lease)
    try:
        deadline = time.time() + 2.5 * lease  # longer than the lease: only renewal keeps it held
        while time.time() < deadline:
            with pytest.raises(runs.RunFolderBusy, match=rf"in use by PID {proc.pid} on node-b"):
                with runs.lock(tmp_path):
                    pass
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGSTOP)  # alive but no longer renewing, like a node that lost the filesystem
        time.sleep(lease + 0.3)
        with pytest.warns(RuntimeWarning, match=rf"lock of PID {proc.pid} on node-b .*not renewed for \d+ s "
                                                rf"\(lease 1 s\)"):
            with runs.lock(tmp_path) as path:
                assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        proc.kill()
        proc.join()


def _write_lock(run_dir, text, age_s=0.0):
    path = run_dir / runs.LOCK
    path.write_text(text)
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def test_unreadable_lock_is_taken_only_after_its_lease(tmp_path):
    _write_lock(tmp_path, "")  # half-written by an older version, or damaged: its writer may still be alive
    with pytest.raises(runs.RunFolderBusy, match="lock file is unreadable"):
        with runs.lock(tmp_path):
            pass
    _write_lock(tmp_path, "", age_s=runs.LOCK_LEASE_S + 5)
    with pytest.warns(RuntimeWarning, match=rf"not renewed for {runs.LOCK_LEASE_S + 5:.0f} s"), runs.lock(tmp_path):
        pass


def test_requeued_slurm_job_takes_over_its_earlier_incarnation_on_another_node(tmp_path, monkeypatch):
    record = {"pid": 4242, "host": "node-a", "command": "python -m src.train", "slurm_job": "77_3",
              "slurm_restart": 0}
    _write_lock(tmp_path, json.dumps(record))
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation elsewhere: still held
    with pytest.raises(runs.RunFolderBusy, match="PID 4242 on node-a"), runs.lock(tmp_path):
        pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.warns(RuntimeWarning, match="its SLURM job 77_3 was requeued"), runs.lock(tmp_path) as path:
        assert json.loads(path.read_text())["slurm_restart"] == 1


def test_lock_that_is_a_folder_is_a_one_line_error(tmp_path):
    (tmp_path / runs.LOCK).mkdir()
    with pytest.raises(runs.RunFolderBusy) as err, runs.lock(tmp_path):
        pass
    assert str(err.value) == f"{tmp_path / runs.LOCK} is a folder, not a lock file; remove it (rm -r " \
                             f"{tmp_path / runs.LOCK}) and run again"


# --- signals ------------------------------------------------------------------------------------------------
def _train_until_running(runs_dir, *overrides):
    """A training subprocess that has finished a few steps (its first progress line printed)."""
    from conftest import TINY

    cmd = [sys.executable, "-m", "src.train", *TINY, f"paths.runs={runs_dir}", f"paths.cache={runs_dir}/cache",
           "eval.degradations=[clean]", "trainer.max_steps=100000", "trainer.val_check_interval=2",
           "ckpt_every_n_steps=100000", "name=sig", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[train] step"):
            return proc, seen
    proc.wait()
    raise AssertionError("training ended before it printed progress:\n" + "".join(seen[-40:]))


@pytest.mark.parametrize("signum, overrides, code", [
    (signal.SIGTERM, (), 143),                                     # scancel, kill, a container stop
    pytest.param(signal.SIGINT, (), 130, marks=pytest.mark.slow),  # Ctrl+C
    pytest.param(signal.SIGTERM, ("preemption.signal=SIGTERM",), 3, marks=pytest.mark.slow),  # a scheduler's warning
])
def test_signal_checkpoints_marks_the_job_interrupted_and_exits_nonzero(tmp_path, signum, overrides, code):
    import torch

    proc, seen = _train_until_running(tmp_path, *overrides)
    proc.send_signal(signum)
    out = "".join(seen) + proc.communicate(timeout=300)[0]
    assert proc.returncode == code, out[-3000:]
    (folder,) = {p.parent for p in tmp_path.rglob("job.json")}
    job = json.loads((folder / runs.JOB).read_text())
    assert job["status"] == "interrupted" and f"on {signum.name}: " in job["error"], job
    step = torch.load(folder / runs.CKPT, map_location="cpu", weights_only=True)["global_step"]
    assert step >= 2 and f"checkpointing step {step}" in out
    assert not (folder / runs.DONE).exists() and not (folder / runs.LOCK).exists()


# --- a refused rerun ----------------------------------------------------------------------------------------


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_refused_rerun_leaves_the_run_it_refuses_untouched(tmp_path):
    from conftest import TINY, compose_train
    from src.train import train

    run = tmp_path / "runs" / "r"
    a, b = toy_root(tmp_path / "a", 0), toy_root(tmp_path / "b", 1)

    def go(root):
        cfg = compose_train(TINY + [f"paths.runs={run.parent}", f"paths.cache={tmp_path / 'cache'}", *TOY,
                                    f"data.root={root}"], run)
        return train(cfg, run)

    go(a)
    runs.write_job_status(run, ["data.root=a"], "completed")  # as src.train's entry point leaves a finished run
    before = _snapshot(run)
    with pytest.raises(runs.RunIdentityError) as err:
        go(b)
    assert _snapshot(run) == before  # job.json, identity, results, checkpoint: not a byte, not a timestamp
    msg = str(err.value)
    assert "left as it was" in msg and "\n  data.train.sha1: " in msg
    assert "name=<new name>" in msg and "force=true instead retrains this folder from scratch, deleting its " \
                                        "checkpoint and results" in msg


@pytest.mark.slow
def test_refused_sweep_job_is_reported_as_refused_and_its_folder_kept(tmp_path):
    a, b = toy_root(tmp_path / "a", 0), toy_root(tmp_path / "b", 1)
    from conftest import TINY

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def sweep(root):
        return subprocess.run([sys.executable, "-m", "src.train", "-m", *TINY, *TOY, f"paths.runs={tmp_path / 'runs'}",
                               f"paths.cache={tmp_path / 'cache'}", f"data.root={root}", "seed=0"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = sweep(a)
    assert first.returncode == 0, first.stderr[-3000:]
    (manifest,) = (tmp_path / "runs").rglob(runs.MANIFEST)
    (job,) = json.loads(manifest.read_text())["jobs"]
    before = _snapshot(manifest.parent / job)
    second = sweep(b)
    assert second.returncode == 1
    assert _snapshot(manifest.parent / job) == before  # .hydra/ and train.log included
    entry = json.loads(manifest.read_text())["jobs"][job]
    assert entry["status"] == "refused" and "data.train.sha1" in entry["error"]
    assert "[sweep] 0 of 1 jobs completed" in second.stdout and f"FAILED {job}: RunIdentityError" in second.stderr


@pytest.mark.slow
def test_a_sweep_job_failing_before_it_holds_a_finished_runs_folder_leaves_it_as_it_was(tmp_path):
    """A data root without the run's sets fails the job while it builds its data, before it is admitted to the
    folder a finished run holds: that run's job.json still says completed, and the sweep's manifest says failed."""
    from conftest import TINY

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def sweep(root):
        return subprocess.run([sys.executable, "-m", "src.train", "-m", *TINY, *TOY, f"paths.runs={tmp_path / 'runs'}",
                               f"paths.cache={tmp_path / 'cache'}", f"data.root={root}", "seed=0"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = sweep(toy_root(tmp_path / "a", 0))
    assert first.returncode == 0, first.stderr[-3000:]
    (manifest,) = (tmp_path / "runs").rglob(runs.MANIFEST)
    (job,) = json.loads(manifest.read_text())["jobs"]
    before = _snapshot(manifest.parent / job)
    (tmp_path / "empty").mkdir()
    second = sweep(tmp_path / "empty")
    assert second.returncode == 1
    assert _snapshot(manifest.parent / job) == before
    assert json.loads((manifest.parent / job / runs.JOB).read_text())["status"] == "completed"
    entry = json.loads(manifest.read_text())["jobs"][job]
    assert entry["status"] == "failed" and str(tmp_path / "empty") in entry["error"], entry


@pytest.mark.slow
def test_a_refused_launch_leaves_hydras_record_and_the_log_as_they_were(tmp_path):
    """Hydra writes .hydra/ and opens train.log when a job starts; the suite writes both only once the run holds
    its folder, so a launch refused there (another run's data, the folder in use) changes no file of it."""
    from conftest import TINY

    a, b = toy_root(tmp_path / "a", 0), toy_root(tmp_path / "b", 1)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def launch(root):
        return subprocess.run([sys.executable, "-m", "src.train", *TINY, *TOY, f"paths.runs={tmp_path / 'runs'}",
                               f"paths.cache={tmp_path / 'cache'}", f"data.root={root}", "name=r"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = launch(a)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "r").iterdir()
    before = _snapshot(run)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log"} <= set(before)
    assert f"data.root={a}" in (run / ".hydra" / "overrides.yaml").read_text()
    other_data = launch(b)
    assert other_data.returncode != 0 and "left as it was" in other_data.stderr
    assert _snapshot(run) == before
    with runs.lock(run):  # a live process holds the folder
        busy = launch(a)
    assert busy.returncode != 0 and str(os.getpid()) in busy.stderr
    assert _snapshot(run) == before


# --- publishing ---------------------------------------------------------------------------------------------
def _finished_run(folder):
    folder.mkdir(parents=True)
    (folder / runs.CONFIG).write_text("seed: 0\n")
    runs.write_job_status(folder, ["seed=0"], "completed")
    (folder / "results.json").write_text(json.dumps({"Set5": {"clean": {"psnr": 30.0}}}))
    return folder


def test_publish_never_writes_outside_its_folder_nor_reads_outside_the_run(tmp_path):
    sweep, dest = tmp_path / "sweep", tmp_path / "pub" / "campaign"
    _finished_run(sweep / "a")
    (sweep / runs.MANIFEST).write_text(json.dumps({"jobs": {"a": {"dir": ".."}}}))
    with pytest.raises(runs.PublishError, match=r"manifest.json: '\.\.' is not a folder name"):
        runs.publish(sweep, dest)
    assert not (tmp_path / "pub").exists()

    (sweep / runs.MANIFEST).write_text(json.dumps({"jobs": {"a": {"dir": "a"}}}))
    secret = tmp_path / "secret.txt"
    secret.write_text("not for git")
    (sweep / "a" / runs.METRICS).symlink_to(secret)
    with pytest.raises(runs.PublishError, match=r"a/metrics.csv is not a regular file \(a symlink or a folder\)"):
        runs.publish(sweep, dest)
    assert not (tmp_path / "pub").exists()
    (sweep / "a" / runs.METRICS).unlink()
    assert runs.publish(sweep, dest) == [dest / "a"]
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["config.yaml", "job.json", "results.json"]


def test_runs_of_multiruns_that_differ_in_a_constant_are_published_apart(tmp_path):
    """`-m dropout.p=0,0.5 seed=2` names its jobs by what varies (`dropout.p-0.0`); the published folder names
    the seed too, so seed 1's runs, published before into the same campaign, are not overwritten."""
    dest = tmp_path / "pub"
    for seed in (1, 2):
        sweep = tmp_path / f"sweep-seed-{seed}"
        jobs = {}
        for p in ("0.0", "0.5"):
            _finished_run(sweep / f"dropout.p-{p}")
            jobs[f"dropout.p-{p}"] = {"dir": f"dropout.p-{p}", "overrides": [f"seed={seed}", f"dropout.p={p}"]}
        (sweep / runs.MANIFEST).write_text(json.dumps({"jobs": jobs}))
        assert runs.publish(sweep, dest) == [dest / f"dropout.p-{p}_seed-{seed}" for p in ("0.0", "0.5")]
    assert sorted(p.name for p in dest.iterdir()) == ["dropout.p-0.0_seed-1", "dropout.p-0.0_seed-2",
                                                      "dropout.p-0.5_seed-1", "dropout.p-0.5_seed-2"]
    # a one-job multirun (its job folder is `default`) and a job named by all its overrides: the same rule
    one = tmp_path / "sweep-dropout.position-none_seed-0"
    _finished_run(one / "default")
    (one / runs.MANIFEST).write_text(json.dumps({"jobs": {"default": {
        "dir": "default", "overrides": ["dropout.position=none", "seed=0"]}}}))
    assert runs.publish(one, dest) == [dest / "dropout.position-none_seed-0"]
    assert runs.published_name(one / "default") == runs.run_id("dropout.position=none,seed=0")
    # outside a sweep, or with a manifest that does not list the run's overrides: the run's own folder name
    assert runs.published_name(_finished_run(tmp_path / "solo")) == "solo"


def test_publish_refuses_a_run_whose_results_do_not_parse(tmp_path):
    run, dest = _finished_run(tmp_path / "a"), tmp_path / "pub"
    (run / "results.json").write_text('{"Set5": {"clean"')
    with pytest.raises(runs.PublishError, match=rf"{run / 'results.json'} does not parse \(.*\); nothing of a was "
                                                 "published"):
        runs.publish(run, dest)
    assert not dest.exists() and sorted(p.name for p in run.iterdir()) == ["config.yaml", "job.json", "results.json"]


def test_publish_of_an_oversized_file_is_a_one_line_error(tmp_path):
    run = _finished_run(tmp_path / "a")
    (run / runs.METRICS).write_bytes(b"0" * (runs.PUBLISH_MAX_BYTES + 1))
    done = subprocess.run([sys.executable, "-m", "src.report", str(run), f"publish={tmp_path / 'pub'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"src.report: {run / runs.METRICS} ({runs.PUBLISH_MAX_BYTES + 1:,} bytes) is over the "
        f"{runs.PUBLISH_MAX_BYTES:,}-byte cap on published files; nothing of a was published")


# --- crafted weights ----------------------------------------------------------------------------------------
def _crafted(path, **arch):
    import torch
    from safetensors.torch import save_file

    cfg = {"_target_": "src.models.srresnet.MSRResNet", "num_feat": 32, "num_block": 4, **arch}
    save_file({"conv_first.weight": torch.zeros(1)}, str(path), metadata={"backbone": json.dumps(cfg), "scale": "4"})
    return path


@pytest.mark.parametrize("arch, message", [
    ({"num_block": 3_000_000}, r"num_block=3000000 is out of bounds: sizes are integers from 1 to 1024"),
    ({"num_feat": -8}, r"num_feat=-8 is out of bounds"),
    ({"num_feat": 1024, "num_block": 1024},
     # 1024 blocks of two 3x3 convolutions at 1024 features are over 19 billion parameters
     r"declares has 19,\d{3},\d{3},\d{3} parameters, over the budget of 200,000,000"),
])
def test_architecture_sizes_from_a_file_are_bounded_before_anything_is_built(tmp_path, arch, message):
    import resource

    from src.models.loading import load

    path = _crafted(tmp_path / "crafted.safetensors", **arch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=rf"^{path}: .*{message}"):
        load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was allocated


def test_parameter_count_on_the_meta_device_matches_the_built_network():
    from src.models.loading import check_sizes
    from src.models.srresnet import MSRResNet

    # the README's figure for the narrow SRResNet (16 blocks, 32 features, x4)
    assert check_sizes(MSRResNet, {"num_feat": 32, "num_block": 16, "scale": 4}, "test") == 380_931
    assert check_sizes(MSRResNet, {"num_feat": 32, "num_block": 16, "scale": 4}, "test") == \
        sum(p.numel() for p in MSRResNet(num_feat=32, num_block=16, scale=4).parameters())


# --- memory limits ------------------------------------------------------------------------------------------
def test_auto_tiling_sizes_tiles_from_the_process_memory_limit():
    # under `ulimit -v`: the host's free memory is not what this process may take
    code = ("import resource\n"
            "from src.tiling import available_bytes, _proc_kib\n"
            "mapped = _proc_kib('/proc/self/status', 'VmSize:')\n"
            "resource.setrlimit(resource.RLIMIT_AS, (mapped + 300 * 2**20, resource.RLIM_INFINITY))\n"
            "print(available_bytes(), _proc_kib('/proc/meminfo', 'MemAvailable:'))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    free, host = map(int, done.stdout.split())
    assert host > 2**30 and 250 * 2**20 < free <= 300 * 2**20, (free, host)


def test_allocation_failure_names_the_image_and_a_tile_while_the_folder_goes_on(tmp_path):
    import numpy as np
    import torch

    from src.data.imageio import write_image
    from src.infer import run_inference
    from src.tiling import bytes_per_pixel

    class Greedy(torch.nn.Module):  # an x2 network that cannot allocate for inputs over 40x40
        scale = 2

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)

        def forward(self, x):
            if x.shape[-1] * x.shape[-2] > 40 * 40:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 123456789 bytes")
            return torch.nn.functional.pixel_shuffle(self.conv(x), 2)

    rng = np.random.default_rng(0)
    write_image(tmp_path / "in" / "a_big.png", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    write_image(tmp_path / "in" / "b_small.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    model = Greedy()
    summary = run_inference(model, sorted((tmp_path / "in").iterdir()), tmp_path / "out", progress=False)
    assert [p.name for p in summary.written] == ["b_small.png"]
    need = bytes_per_pixel(model, "cpu") * 60 * 80 / 2**30
    assert summary.failed == {tmp_path / "in" / "a_big.png": (
        f"{tmp_path / 'in' / 'a_big.png'}: out of memory: this 80x60 px image needs ~{need:.1f} GB untiled; pass "
        f"tile=256 (or smaller) to upscale it in tiles")}


# --- the test-set writer ------------------------------------------------------------------------------------
def _set(folder, names, seed=0):
    import numpy as np

    from src.data.imageio import write_image

    rng = np.random.default_rng(seed)
    for name in names:
        write_image(folder / "HR" / f"{name}.png", rng.integers(0, 256, (127, 130, 3), dtype=np.uint8))
    return folder


def test_testset_writer_never_writes_into_its_source_nor_mixes_sets(tmp_path, capsys):
    from src.data.testsets import main

    src = _set(tmp_path / "Toy", ["a", "b"])
    before = _snapshot(src)
    for out in (src, src / "HR", src / "HR" / "lr"):
        with pytest.raises(SystemExit) as exit_:
            main([str(src), str(out), "degradations=[clean]"])
        assert exit_.value.code == 2
        assert f"error: src.data.testsets: out={out} is inside the source images' folder " in capsys.readouterr().err
    assert _snapshot(src) == before  # 130x127 images stay 130x127: nothing replaced, nothing added

    out = tmp_path / "out"
    main([str(src), str(out), "degradations=[clean]"])
    other = _set(tmp_path / "Other", ["c"], seed=1)
    with pytest.raises(SystemExit) as exit_:
        main([str(other), str(out), "degradations=[clean]"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{out / 'HR'} already holds 2 other image(s) (a.png, b.png): another set?" in err and "force=true" in err
    assert sorted(p.name for p in (out / "HR").iterdir()) == ["a.png", "b.png"]
    main([str(src), str(out), "degradations=[clean]"])  # the same set again replaces its own files
    main([str(other), str(out), "degradations=[clean]", "force=true"])
    assert sorted(p.name for p in (out / "clean").iterdir()) == ["a.png", "b.png", "c.png"]


def test_testset_writer_takes_key_value_and_refuses_old_flags_with_their_new_spelling(tmp_path, capsys):
    from src.data.testsets import main

    src = _set(tmp_path / "Toy", ["a"])
    for argv, message in (
            (["--protocol", "official"], "'--protocol': settings are key=value, not --flags; write protocol=official"),
            (["--force"], "'--force': settings are key=value, not --flags; write force=true"),
            (["protocol=matlab"], "protocol='matlab'; allowed: literature, official"),
            (["degradations=[clean,fog]"], "degradations: unknown ['fog']; allowed: clean,blur"),
            (["scale=four"], "scale='four': must be a whole number")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            main([str(src), str(tmp_path / "out"), *argv])
    with pytest.raises(SystemExit, match=re.escape("needs SET and OUT, got ['x']")):
        main(["x"])
    main([str(src), str(tmp_path / "out"), "protocol=official", "degradations=[clean, noise]", "seed=0"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["HR", "clean", "noise"]
    assert not (tmp_path / "out" / "blur").exists()


def test_testset_writer_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    from src.data.testsets import main

    src = _set(tmp_path / "Toy", ["a"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main([str(src), str(tmp_path / "file"), "degradations=[clean]"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1
    assert f"error: src.data.testsets: cannot write {tmp_path / 'file'}" in err and "choose a writable output folder" in err


# --- smaller messages ---------------------------------------------------------------------------------------
def test_failed_checkpoint_save_leaves_no_partial_file(tmp_path):
    import errno

    from src.train import AtomicCheckpoint

    cb = AtomicCheckpoint(tmp_path, 1)
    cb.path.parent.mkdir(parents=True)

    class FullDisk:
        is_global_zero = True

        def save_checkpoint(self, path, weights_only):
            path.write_bytes(b"x" * 1000)  # part of the checkpoint got written before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cb._save(FullDisk())
    assert list(cb.path.parent.iterdir()) == []


def test_weights_path_that_is_a_folder_says_so(tmp_path):
    from src.models.loading import read_weights

    with pytest.raises(IsADirectoryError, match=rf"^{tmp_path} is a folder, not a weights file: pass a \.ckpt"):
        read_weights(tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_pickle_payload_is_refused_without_advising_weights_only_false(tmp_path):
    import torch

    from src.models.loading import load

    path = tmp_path / "crafted.pth"
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(ValueError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds pickled Python objects other than tensors") and "refused" in msg
    assert "weights_only" not in msg and "truncated" not in msg


def test_corrupt_identity_refuses_instead_of_skipping_the_check(tmp_path):
    (tmp_path / runs.IDENTITY).write_text('{"config": {"seed"')
    with pytest.raises(runs.RunIdentityError, match=r"identity.json is unreadable \(JSONDecodeError: .*\), so whether "
                                                    r"this folder holds the same run cannot be told"):
        runs.claim_identity(tmp_path, {"config": {"seed": 1}})
    assert (tmp_path / runs.IDENTITY).read_text() == '{"config": {"seed"' and len(list(tmp_path.iterdir())) == 1
    runs.claim_identity(tmp_path, {"config": {"seed": 1}}, force=True)
    assert json.loads((tmp_path / runs.IDENTITY).read_text()) == {"config": {"seed": 1}}


def test_over_long_name_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "src.train", "name=" + "n" * 300, f"paths.runs={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: name={'n' * 40}... is 300 bytes long; a run's name becomes a folder name, "
                                   "at most 255 bytes: choose a shorter name=")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_decode_cache_falls_back_to_decoding(tmp_path):
    import numpy as np

    from src.data.datasets import decoded
    from src.data.imageio import read_image

    (image,) = _set(tmp_path / "Toy", ["a"]).joinpath("HR").iterdir()
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache"  # cannot be created, as a read-only folder cannot be written
    with pytest.warns(RuntimeWarning, match=rf"data.cache_dir={cache} is not writable \(.*\); decoding images "
                                            "without the cache"):
        img = decoded(image, cache)
    assert np.array_equal(img, read_image(image))


def test_unwritable_test_image_cache_falls_back_to_computing(tmp_path):
    from src.data.testsets import load_test_pairs

    src = _set(tmp_path / "Toy", ["a", "b"])
    (tmp_path / "file").write_text("x")
    with pytest.warns(RuntimeWarning, match="is not writable") as seen:
        pairs = load_test_pairs(sorted((src / "HR").iterdir()), "clean", cache_dir=tmp_path / "file" / "cache")
    assert len(pairs) == 2 and pairs[0][2].shape == (31, 32, 3) and len(seen) == 1  # one warning, not one per image


def test_unicode_name_is_accepted(tmp_path):
    from src.sweep import quote_non_ascii

    assert quote_non_ascii(["name=résumé", "seed=1", "-m", "name=a,é", "name='é'"]) == \
        ["name='résumé'", "seed=1", "-m", "name=a,é", "name='é'"]
    done = subprocess.run([sys.executable, "-m", "src.train", "name=résumé_日本", f"paths.runs={tmp_path}", "--cfg",
                           "job"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\nname: résumé_日本\n" in done.stdout
