"""Running on a SLURM cluster: Lightning's SLURM environment and preemption (signal -> checkpoint -> requeue).

SLURM warns a job `signal_delay_s` seconds before its time limit (and a preempting scheduler warns before it
kills) by sending a signal, SIGUSR1 as conf/hydra/launcher/slurm.yaml asks for it. `PreemptionCheckpoint`
turns that signal into: finish the current optimizer step, write the run's own `checkpoints/last.ckpt`
(atomically, as every periodic checkpoint), ask SLURM to requeue the job (`scontrol requeue <job id>`), stop.
The requeued job runs the same command in the same run folder and resumes from that checkpoint.

Lightning's own auto-requeue is switched off on purpose: its handler saves from inside the signal handler,
which can land in the middle of a step, and writes `hpc_ckpt_<n>.ckpt` beside the run instead of the checkpoint
resume reads; saving at the next step boundary is what keeps a requeued run bit-identical.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Callable

import pytorch_lightning as pl
import torch

# A preempted run exits with this code after its checkpoint is written and the requeue is requested, so a
# script can tell "stopped to be requeued" from success (0) and from a crash (1). A run stopped by a plain SIGTERM
# (scancel, kill, a container stop) or SIGINT (Ctrl+C) also checkpoints first, requests no requeue, and exits with
# the code a shell gives a process killed by that signal: 128 + its number (143, 130).
PREEMPTED_EXIT_CODE = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedOnSignal(Exception):
    """Training stopped on a signal after writing its checkpoint; `exit_code` is what the process should exit with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def under_slurm() -> bool:
    """True inside a SLURM job step whose tasks Lightning should treat as its processes (as Lightning decides:
    SLURM_NTASKS set and the job not named `bash`/`interactive`)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def slurm_plugins() -> list:
    """Trainer plugins for this process: SLURM's environment without Lightning's auto-requeue (see the module
    docstring) when running under SLURM, nothing otherwise."""
    if not under_slurm():
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def global_rank_from_env() -> int:
    """This process's rank before Lightning has set anything up: torchrun/Lightning's RANK, SLURM's
    SLURM_PROCID under SLURM, else LOCAL_RANK (Lightning's own DDP children), else 0."""
    for key in ("RANK",) + (("SLURM_PROCID",) if under_slurm() else ()) + ("LOCAL_RANK",):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs: `<array job>_<task>` for an array job (submitit sweeps are arrays)."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def request_requeue(job_id: str) -> bool:
    """`scontrol requeue <job_id>`; False (with the reason on stderr) when it cannot be done."""
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        print(f"[cluster] not requeuing: SLURM job id {job_id!r} is not of the form 123 or 123_4", file=sys.stderr)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"[cluster] scontrol requeue {job_id} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    if result.returncode != 0:
        print(f"[cluster] scontrol requeue {job_id} exited {result.returncode}: {result.stderr.strip()}",
              file=sys.stderr)
        return False
    print(f"[cluster] requeue of SLURM job {job_id} requested", flush=True)
    return True


def parse_signal(name: str | int) -> signal.Signals:
    """`SIGUSR1`, `USR1` or a number -> the signal; anything else is a clear error."""
    if isinstance(name, int) or str(name).isdigit():
        return signal.Signals(int(name))
    key = str(name).upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    if not hasattr(signal, key) or key in ("SIGKILL", "SIGSTOP"):
        raise ValueError(f"preemption.signal={name!r} is not a signal this process can catch; "
                         "use SIGUSR1 (what conf/hydra/launcher/slurm.yaml asks SLURM to send), SIGUSR2 or SIGTERM")
    return getattr(signal, key)


class PreemptionCheckpoint(pl.Callback):
    """On `signum` (the scheduler's warning), SIGTERM or SIGINT: at the end of the current step, save through
    `save(trainer)` and stop training; on `signum` only, also request a SLURM requeue (rank 0, when `requeue` and the
    job has a SLURM id). `preempted` tells the caller, `stopped_by` which signal, `exit_code` what to exit with.

    The handler itself only records the signal (it can arrive anywhere, even inside an optimizer step); under DDP it
    is combined across ranks every step so that all ranks stop after the same step even when the signal reached only
    some of them. A second SIGINT stops at once (KeyboardInterrupt), as Ctrl+C twice is meant to.
    """

    def __init__(self, save: Callable[[pl.Trainer], None], signum: signal.Signals = signal.SIGUSR1,
                 requeue: bool = True):
        self.save, self.signum, self.requeue = save, signum, requeue
        self.signals = tuple(dict.fromkeys((signum, *STOP_SIGNALS)))
        self.received = 0
        self.preempted = False
        self.stopped_by: signal.Signals | None = None
        self.requeued = False
        self._previous: dict = {}

    @property
    def exit_code(self) -> int:
        return PREEMPTED_EXIT_CODE if self.stopped_by == self.signum else 128 + int(self.stopped_by or 0)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or int(signum)

    def _install(self) -> None:
        for signum in self.signals:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler after setup (it ends fit with an exit status of 0 and no
        # checkpoint); ours replaces it for the training loop.
        self._install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = self.received
        if trainer.world_size > 1:
            t = torch.tensor([float(received)], device=pl_module.device)
            received = int(trainer.strategy.reduce(t, reduce_op="max").item())
        if not received or self.preempted:
            return
        self.preempted = True
        self.stopped_by = signal.Signals(received)
        print(f"[cluster] rank {trainer.global_rank}: {self.stopped_by.name} received; checkpointing step "
              f"{trainer.global_step}", flush=True)
        self.save(trainer)
        job_id = slurm_job_id()
        if self.stopped_by == self.signum and trainer.is_global_zero and self.requeue and job_id:
            self.requeued = request_requeue(job_id)
        trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
