"""Train one SR model (or a sweep with -m) and evaluate it under the paper's 8 test degradations.

    python -m src.train                                   # quickstart: tiny SRResNet, sample photos, CPU
    python -m src.train data=t91_bsd200 backbone=srresnet trainer=gpu trainer.max_steps=500000
    python -m src.train -m dropout.position=last,b4 dropout.p=0.1,0.5
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.cluster import PreemptionCheckpoint, StoppedOnSignal, global_rank_from_env, parse_signal, slurm_plugins
from src.loggers import build_loggers, finish_wandb, log_results
from src import runs
from src.preflight import check_device, check_values
from src.resolvers import register_resolvers
from src.sweep import quote_non_ascii
from src.utils import apply_memory_format, build, job_threads, resolve_device, set_threads

register_resolvers()
log = logging.getLogger(__name__)


class AtomicCheckpoint(pl.Callback):
    """`checkpoints/last.ckpt` every N steps and at the end, replaced atomically so a kill never corrupts it; the
    network that is evaluated (the average when the EMA is on) also as safetensors at each of `keep_steps`, for
    studies of the gain against training length. The checkpoint carries the seconds spent training so far, so that a
    run resumed (once or many times) reports the training time of its weights, not that of its last process."""

    def __init__(self, run_dir: Path, every_n_steps: int, keep_steps=()):
        self.run_dir, self.path = Path(run_dir), runs.checkpoint(run_dir)
        self.every_n_steps, self.keep_steps = max(int(every_n_steps), 1), {int(s) for s in keep_steps or ()}
        self.saved_step = -1
        self.earlier_seconds, self.started = 0.0, None

    def fit_seconds(self) -> float:
        """Seconds of training behind the current weights: earlier processes' (from the checkpoint) plus this one's."""
        return self.earlier_seconds + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state_dict(self) -> dict:
        return {"fit_seconds": self.fit_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        # A checkpoint written before this was recorded has none: only this process's time is then known.
        self.earlier_seconds = float(state_dict.get("fit_seconds", 0.0))

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint of the current step (once per step, whoever asks: schedule, end, preemption)."""
        if trainer.global_step != self.saved_step:
            self._save(trainer)
            self.saved_step = trainer.global_step

    def _save(self, trainer: pl.Trainer) -> None:
        tmp = runs.temporary_name(self.path)  # unique: never shared with another process writing this folder
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # full state for resuming; collective under DDP
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves a partial file that would only fill it sooner
            raise
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("atomic-checkpoint")

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Only right after an optimizer step: with gradient accumulation the batches in between hold gradients
        # that a checkpoint does not carry; save() writes each step once, and on_train_start marks the step resumed
        # from as saved.
        if trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)
        if trainer.global_step in self.keep_steps and trainer.is_global_zero:
            self.keep(trainer.global_step, pl_module)

    def keep(self, step: int, pl_module) -> None:
        from src.models.loading import save_safetensors

        save_safetensors(pl_module.eval_net, dict(pl_module.hparams.backbone), runs.step_weights(self.run_dir, step),
                         {"step": str(step)}, pl_module.hparams.scale)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


def clock(seconds: float) -> str:
    """A duration as h:mm:ss (d+h:mm:ss past a day): what a log line needs to read at a glance."""
    seconds = max(int(round(seconds)), 0)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d+{text}" if days else text


class LineProgress(pl.Callback):
    """One line per validation (step, loss, val PSNR, speed, elapsed time and ETA): progress for logs that are not a
    terminal (SLURM). Speed and ETA count the steps of this process only, so a resumed run is not credited with the
    steps it loaded."""

    def __init__(self):
        self.start, self.start_step = time.time(), None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start, self.start_step = time.time(), trainer.global_step

    def line(self, step: int, max_steps: int, metrics: dict, elapsed: float) -> str:
        done = step - (self.start_step or 0)
        rate = done / max(elapsed, 1e-9)
        parts = [f"step {step}/{max_steps}"] + [f"{k} {float(metrics[k]):.4g}" for k in
                                                ("train/loss", "val/psnr", "val/psnr_rgb") if k in metrics]
        eta = clock((max_steps - step) / rate) if rate > 0 else "?"
        return f"[train] {', '.join(parts)}, {rate:.2f} it/s, elapsed {clock(elapsed)}, ETA {eta}"

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        print(self.line(trainer.global_step, trainer.max_steps, trainer.callback_metrics, time.time() - self.start),
              flush=True)


def build_callbacks(cfg: DictConfig, loggers: list, interactive: bool) -> list[pl.Callback]:
    """The `callbacks` node's Lightning callbacks (conf/callbacks), instantiated."""
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        callback = build(callback_cfg)
        if isinstance(callback, LearningRateMonitor) and not loggers:
            raise ValueError(f"callbacks.{name} (LearningRateMonitor) writes to a logger, but logger="
                             f"{OmegaConf.select(cfg, 'hydra.runtime.choices.logger', default='none')} has none; "
                             "use logger=csv, logger=wandb or logger=tensorboard, or drop the callback")
        if isinstance(callback, ProgressBar) and not interactive:
            continue  # a bar without a terminal floods the log; LineProgress prints one line per validation instead
        callbacks.append(callback)
    return callbacks


def is_rank_zero() -> bool:
    # Under DDP (and under SLURM, one task per process) every rank runs this script; only one may write the
    # job's status files.
    return global_rank_from_env() == 0


def is_complete(run_dir: Path, cfg: DictConfig) -> bool:
    return runs.is_complete(run_dir, cfg.trainer.max_steps, cfg.data.test_sets, cfg.eval.degradations)


def quiet_known_noise() -> None:
    """Silence messages that say nothing about this run; real warnings still show."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning warns that resuming mid-epoch "can cause unreliable results" because its samplers restart the
    # epoch. Here the sampler is indexed by the global step and resumes at the exact batch (the kill -9 test
    # shows bit-identical weights), so the warning is untrue for this suite.
    warnings.filterwarnings("ignore", message=r".*can cause unreliable results")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_noise)


def _not_noise(record: logging.LogRecord) -> bool:
    # Lightning's tips, and its accelerator census when there is nothing to report (no GPU, no TPU/HPU at all);
    # "GPU available: True (cuda), used: True" on a GPU machine is kept: it confirms the run is on the GPU.
    msg = str(record.msg)
    return not ("Tip:" in msg or msg.startswith(("TPU available", "HPU available", "IPU available"))
                or msg.startswith("GPU available: False"))


def task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def print_folders(run_dir: Path) -> None:
    lines = [f"[train] run folder: {run_dir}"]
    for path in (runs.results_file(run_dir), runs.results_file(run_dir, "official"), runs.checkpoint(run_dir)):
        if path.is_file():
            lines.append(f"[train]   {path.relative_to(run_dir)}: {path}")
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    if offline:
        lines.append(f"[train]   W&B (offline): {offline[-1]}  (upload: wandb sync {offline[-1]})")
    print("\n".join(lines), flush=True)


def train(cfg: DictConfig, run_dir: str | os.PathLike, admitted: Callable[[], None] = lambda: None) -> dict:
    """Fit, checkpoint, evaluate; returns the results dict. `run_dir` is the job's own folder.

    The process of rank 0 owns the folder for the whole run (a lock; other DDP ranks only train alongside it): it
    records the run's identity, refuses a folder holding a different run, and keeps the state files. `admitted`
    is called once it holds the folder (the entry point writes Hydra's record of the launch then).
    """
    run_dir = Path(run_dir)
    quiet_known_noise()
    check_values(cfg, task_overrides())
    check_device(cfg)
    owner = is_rank_zero()
    with runs.lock(run_dir) if owner else contextlib.nullcontext():
        return _train(cfg, run_dir, owner, admitted)


class _HeldLog(logging.Filter):
    """Holds a log file's records in memory until `release`, then writes them and lets later ones through."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler, self.held, self.open = handler, [], False
        handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.open:
            self.held.append(record)
        return self.open

    def release(self) -> None:
        self.open = True
        for record in self.held:
            self.handler.handle(record)
        self.held.clear()


class LaunchRecord:
    """What Hydra writes into a run folder at launch, held back until the run is admitted there: `.hydra/` (the
    train config sets hydra.output_subdir to null, so Hydra writes none itself) and the job's log file (opened at
    its first record, conf/hydra/job_logging/run_folder.yaml; its records wait in memory). Calling it writes both,
    once, when the run holds its folder; a refused launch (another run's folder, a folder in use) never calls it and
    so leaves every file of the folder as it was; `admitted` says whether it was called. DDP ranks other than 0
    hold nothing."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike):
        self.admitted, self.run_dir, self.launch, self.holds = False, run_dir, None, []
        if is_rank_zero():
            self.launch = copy.deepcopy(cfg), copy.deepcopy(HydraConfig.instance().cfg)
            folder = Path(run_dir).resolve()
            self.holds = [_HeldLog(h) for h in logging.getLogger().handlers
                          if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == folder]

    def __call__(self) -> None:
        if self.admitted:
            return
        self.admitted = True
        if self.launch is not None:
            runs.save_launch_record(self.run_dir, *self.launch)
        for hold in self.holds:
            hold.release()


def build_parts(cfg: DictConfig) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The model (`cfg.module`: the network, its EMA copy, the loss, optimizer and schedule settings) and the
    datamodule (`cfg.data`, degrading with `cfg.degradation`) a training config describes: the one recipe that
    training, the tests and the benchmarks build them with.

    The module gets plain values, not OmegaConf nodes: it saves its arguments into every checkpoint, which loads
    with weights_only (no unpickling of library objects). It is built first, so a bad dropout position or
    probability fails before any data is touched.
    """
    module = build_module(cfg)
    return module, build(cfg.data, degradation=build(cfg.degradation))


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The LightningModule of `cfg.module` from plain values (see build_parts); the benchmarks and the GPU check
    build their models with it too."""
    kwargs = OmegaConf.to_container(cfg.module, resolve=True)
    return get_class(kwargs.pop("_target_"))(**kwargs)


def _train(cfg: DictConfig, run_dir: Path, owner: bool, admitted: Callable[[], None] = lambda: None) -> dict:
    from src.evaluation import format_table

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, datamodule = build_parts(cfg)
    init_from_weights(cfg, run_dir, module.net)
    if module.net_ema is not None:  # the average starts from the weights training starts from
        module.net_ema.load_state_dict(module.net.state_dict())
    if owner:
        data = {"train": datamodule.train_paths,
                "val": [p for paths in datamodule.val_paths.values() for p in paths],
                "test": [p for paths in datamodule.test_paths.values() for p in paths]}
        runs.claim_identity(run_dir, runs.fingerprint(cfg, datamodule.root, data), force=cfg.force)
        admitted()
        # Only now: a run refused by the folder's identity must leave the folder's job.json as it was.
        runs.write_job_status(run_dir, task_overrides(), "running")
        if cfg.force or not cfg.resume:
            # Before anything touches the checkpoint: an interrupted retrain must not leave the old results (or
            # the old weights) looking like the outcome of this one.
            runs.invalidate(run_dir, checkpoint=True)
    if cfg.resume and not cfg.force and is_complete(run_dir, cfg):
        results = runs.read_state(runs.results_file(run_dir))
        print(f"[train] {run_dir} is already complete (train_done.json + results.json); force=true reruns it")
        print(format_table(results, reference=reference_results(cfg, datamodule, "literature")))
        print_folders(run_dir)
        return results
    if owner:
        # The composed config, resolved: the values this run used (.hydra/config.yaml keeps the interpolations).
        runs.save_run_config(run_dir, cfg)
    train_device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    for net in (module.net, module.net_ema):
        if net is not None:
            apply_memory_format(net, cfg.channels_last, train_device)
    if cfg.compile:
        module.net.compile()  # in place: state-dict keys stay BasicSR-compatible

    loggers = build_loggers(cfg, run_dir)
    try:
        return fit_and_evaluate(cfg, run_dir, module, datamodule, loggers)
    finally:
        finish_wandb(loggers)


def init_from_weights(cfg: DictConfig, run_dir: Path, net: torch.nn.Module) -> None:
    """Fine-tuning: start from the weights of `init_from` (not a resume: optimizer and schedule start fresh).

    A run that resumes from its own checkpoint already holds the fine-tuned weights, so they are not replaced.
    """
    if not cfg.get("init_from"):
        return
    from hydra.utils import to_absolute_path

    from src.models.loading import init_weights

    if cfg.resume and not cfg.force and runs.checkpoint(run_dir).is_file():
        print(f"[train] resuming this run's own checkpoint; init_from={cfg.init_from} was applied at its start")
        return
    path = Path(to_absolute_path(str(cfg.init_from)))
    layout = init_weights(net, path)
    print(f"[train] backbone initialised from {path} ({layout} key layout); optimizer and schedule start fresh")


def reference_results(cfg: DictConfig, datamodule, protocol: str) -> dict | None:
    """The bicubic reference on the run's test sets (`eval.reference=bicubic`, cached per machine), or None."""
    if cfg.eval.get("reference") != "bicubic":
        return None
    from src.evaluation import bicubic_reference

    return bicubic_reference(datamodule.test_paths, list(cfg.eval.degradations), cfg.scale, cfg.eval.seed, protocol,
                             cfg.eval.get("round_y", True), Path(cfg.paths.cache) / "testsets")


def leave_process_group() -> None:
    """Under DDP, every rank leaves the process group together once training ends.

    Rank 0 goes on to evaluate alone while the other ranks exit; a rank that exits with the backend's threads still
    running is aborted by the C++ runtime ("terminate called without an active exception"), and Lightning's launcher
    then kills every rank, rank 0's evaluation included."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def fit_and_evaluate(cfg: DictConfig, run_dir: Path, module, datamodule, loggers: list) -> dict:
    ckpt = runs.checkpoint(run_dir)
    # Without a terminal (a log file, a cluster job) a progress bar is a flood of carriage returns: print a line
    # at each validation instead.
    interactive = sys.stdout.isatty()
    checkpoint = AtomicCheckpoint(run_dir, cfg.ckpt_every_n_steps, cfg.get("ckpt_keep_steps"))
    preemption = PreemptionCheckpoint(checkpoint.save, parse_signal(cfg.preemption.signal), cfg.preemption.requeue)
    callbacks = [checkpoint, preemption] + ([] if interactive else [LineProgress()])
    callbacks += build_callbacks(cfg, loggers, interactive)
    # Under SLURM: SLURM's ranks and nodes, our own requeue handling (src/cluster.py); elsewhere nothing.
    plugins = slurm_plugins()
    trainer = build(cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir),
                    enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)) and interactive,
                    **({"plugins": plugins} if plugins else {}))
    resume_from = str(ckpt) if cfg.resume and ckpt.is_file() and not cfg.force else None
    if resume_from:
        print(f"[train] resuming from {resume_from}")
    trained_before = runs.training_done(run_dir) if resume_from else None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException:  # before the training loop took the signal over: nothing new to checkpoint
        raise StoppedOnSignal("stopped on SIGTERM before training started; rerun the same command to resume",
                              128 + signal.SIGTERM) from None
    leave_process_group()
    if preemption.preempted:
        # Not a failure and not a result: the requeued job (or the same command) resumes from the checkpoint.
        raise StoppedOnSignal(
            f"stopped at step {trainer.global_step} on {preemption.stopped_by.name}: {ckpt} written"
            + ("; SLURM requeue requested" if preemption.requeued else "; rerun the same command to resume"),
            preemption.exit_code)
    if trainer.interrupted:
        raise RuntimeError("training was interrupted; rerun the same command to resume")
    if not trainer.is_global_zero:
        return {}
    runs.mark_trained(run_dir, trainer.global_step, checkpoint.fit_seconds(),
                      batch={"global": datamodule.batch_size, "devices": trainer.world_size,
                             "per_device": datamodule.device_batch})

    from src.evaluation import evaluate, format_table, load_results, resolve_protocols, write_results

    # A run stopped while scoring resumes with its training already done (the same step before and after this fit):
    # the results written since then score these very weights, so a protocol scored before the stop is reused.
    # After any training step they describe older weights and are scored again.
    same_weights = bool(trained_before) and trained_before.get("global_step") == trainer.global_step
    device = resolve_device("auto" if cfg.trainer.accelerator in ("gpu", "cuda", "auto") else "cpu")
    # The official protocol first, so that results.json (the completion marker) is written last.
    for protocol in reversed(resolve_protocols(cfg.eval.get("protocol", "literature"))):
        done = load_results(run_dir, protocol) if same_weights else None
        if done:
            print(f"[train] training was already done: reusing the {protocol} results written after it")
        results = evaluate(module.eval_net.eval(), datamodule.test_paths, degradations=list(cfg.eval.degradations),
                           scale=cfg.scale, seed=cfg.eval.seed, device=device, tile=cfg.eval.tile,
                           cache_dir=Path(cfg.paths.cache) / "testsets", protocol=protocol,
                           round_y=cfg.eval.get("round_y", True), done=done)
        write_results(run_dir, results, protocol)
        if protocol == "literature":
            log_results(loggers, results, trainer.global_step)
        print(format_table(results, reference=reference_results(cfg, datamodule, protocol)))
    print_folders(run_dir)
    return results


def share_cores(hydra_cfg) -> None:
    """Jobs that the joblib launcher runs side by side (sweeps/repro_*.yaml: n_jobs 2) split the cores between
    them (src.utils.job_threads) instead of each starting one thread per core."""
    launcher = hydra_cfg.get("launcher") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or "Joblib" not in str(launcher.get("_target_", "")):
        return
    threads = job_threads(int(launcher.get("n_jobs", 1) or 1))
    if threads is not None:
        set_threads(threads)
        print(f"[train] {launcher.n_jobs} jobs side by side: {threads} intra-op thread(s) each "
              f"(OMP_NUM_THREADS=N sets it yourself)", flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    share_cores(hydra_cfg)
    record = LaunchRecord(cfg, output_dir)
    try:
        results = train(cfg, output_dir, admitted=record)
    except StoppedOnSignal as stop:  # the whole process stops, sweep included: that is what the signal asked
        print(f"[train] {stop}", flush=True)
        if is_rank_zero():
            runs.write_job_status(output_dir, overrides, "interrupted", str(stop))
        sys.exit(stop.exit_code)
    except runs.RunFolderBusy as error:  # the folder and its job.json belong to the other process
        if hydra_cfg.mode != RunMode.MULTIRUN:
            from src.cli import exit_with

            exit_with(error)
        log.error("job %s skipped: %s", output_dir, error)
        return None
    except runs.RunIdentityError as error:  # the folder and its job.json belong to the run it holds
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        runs.record_refusal(output_dir, overrides, error)
        log.error("job %s refused: %s", output_dir, error)
        return None
    except Exception as error:
        if is_rank_zero():
            held = not record.admitted and (Path(output_dir) / runs.IDENTITY).exists()
            if held and hydra_cfg.mode == RunMode.MULTIRUN:  # another run's folder: left as it was
                runs.record_refusal(output_dir, overrides, error, status="failed")
            elif not held:
                record()  # a folder no run holds keeps the failed launch's record and log, as any job's
                runs.write_job_status(output_dir, overrides, "failed", error)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            from src.cli import exit_with

            exit_with(error)
        # In a sweep, one bad job must not cost the others: record it, and the sweep exits non-zero at the end.
        log.exception("job %s failed", output_dir)
        return None
    if is_rank_zero():
        runs.write_job_status(output_dir, overrides, "completed")
    # A sweeper that optimises needs a number: mean PSNR over everything evaluated.
    values = [m["psnr"] for s in results.values() for m in s.values() if isinstance(m, dict) and "psnr" in m]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    sys.argv[1:] = quote_non_ascii(sys.argv[1:])
    from src.cli import run

    run(main, "train")
