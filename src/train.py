"""Train one SR model (or a sweep with -m) and evaluate it under the paper's 8 test degradations.

    python -m src.train                                   # quickstart: tiny SRResNet, sample photos, CPU
    python -m src.train data=t91_bsd200 backbone=srresnet trainer=gpu trainer.max_steps=500000
    python -m src.train -m dropout.position=last,b4 dropout.p=0.1,0.5
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from src.loggers import build_loggers, finish_wandb, log_results
from src import runs
from src.sweep import register_resolvers
from src.utils import build, resolve_device

register_resolvers()
log = logging.getLogger(__name__)


class AtomicCheckpoint(pl.Callback):
    """`checkpoints/last.ckpt` every N steps and at the end, replaced atomically so a kill never corrupts it."""

    def __init__(self, dirpath: Path, every_n_steps: int):
        self.path, self.every_n_steps = Path(dirpath) / "last.ckpt", max(int(every_n_steps), 1)

    def _save(self, trainer: pl.Trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # full state for resuming; collective under DDP
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("atomic-checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            self._save(trainer)


def is_rank_zero() -> bool:
    # Under DDP every rank runs this script; only one may write the job's status files.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


def is_complete(run_dir: Path, cfg: DictConfig) -> bool:
    return runs.is_complete(run_dir, cfg.trainer.max_steps, cfg.data.test_sets, cfg.eval.degradations)


def apply_shrink(cfg: DictConfig) -> None:
    """Apply `shrink.<BackboneClass>` argument overrides (scale=cpu) to the backbone config, in place."""
    changes = (cfg.get("shrink") or {}).get(cfg.backbone._target_.rsplit(".", 1)[-1])
    if changes:
        with open_dict(cfg):
            cfg.backbone = OmegaConf.merge(cfg.backbone, changes)


def train(cfg: DictConfig, run_dir: str | os.PathLike) -> dict:
    """Fit, checkpoint, evaluate; returns the results dict. `run_dir` is the job's own folder."""
    run_dir = Path(run_dir)
    if cfg.resume and not cfg.force and is_complete(run_dir, cfg):
        print(f"[train] {run_dir} is already complete (train_done.json + results.json); force=true reruns it")
        return runs.read_state(runs.results_file(run_dir))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    apply_shrink(cfg)
    # Hydra's .hydra/config.yaml is written before apply_shrink; config.yaml is what this run actually uses.
    runs.save_run_config(run_dir, cfg)

    # Backbone first: a bad dropout position or probability must fail before any data is touched.
    module_kwargs = OmegaConf.to_container(cfg.module, resolve=True)
    module = get_class(module_kwargs.pop("_target_"))(**module_kwargs)
    degradation = build(cfg.degradation)
    datamodule = build(cfg.data, degradation=degradation)
    if cfg.channels_last:
        module.net.to(memory_format=torch.channels_last)
    if cfg.compile:
        module.net.compile()  # in place: state-dict keys stay BasicSR-compatible

    loggers = build_loggers(cfg)
    try:
        return fit_and_evaluate(cfg, run_dir, module, datamodule, loggers)
    finally:
        finish_wandb(loggers)


def fit_and_evaluate(cfg: DictConfig, run_dir: Path, module, datamodule, loggers: list) -> dict:
    ckpt = runs.checkpoint(run_dir)
    trainer = build(cfg.trainer, logger=loggers or False,
                    callbacks=[AtomicCheckpoint(ckpt.parent, cfg.ckpt_every_n_steps)], default_root_dir=str(run_dir))
    resume_from = str(ckpt) if cfg.resume and ckpt.is_file() and not cfg.force else None
    if resume_from:
        print(f"[train] resuming from {resume_from}")
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.interrupted:
        raise RuntimeError("training was interrupted; rerun the same command to resume")
    if not trainer.is_global_zero:
        return {}
    runs.mark_trained(run_dir, trainer.global_step, time.time() - start)

    from src.evaluation import evaluate, format_table, resolve_protocols, write_results

    device = resolve_device("auto" if cfg.trainer.accelerator in ("gpu", "cuda", "auto") else "cpu")
    # The official protocol first, so that results.json (the completion marker) is written last.
    for protocol in reversed(resolve_protocols(cfg.eval.get("protocol", "literature"))):
        results = evaluate(module.net.eval(), datamodule.test_paths, degradations=list(cfg.eval.degradations),
                           scale=cfg.upscale, seed=cfg.eval.seed, device=device, tile=cfg.eval.tile,
                           cache_dir=Path(cfg.paths.cache) / "testsets", protocol=protocol)
        write_results(run_dir, results, protocol)
        if protocol == "literature":
            log_results(loggers, results, trainer.global_step)
        print(format_table(results))
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    try:
        results = train(cfg, output_dir)
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # In a sweep, one bad job must not cost the others: record it, and the sweep exits non-zero at the end.
        log.exception("job %s failed", output_dir)
        if is_rank_zero():
            runs.write_job_status(output_dir, overrides, "failed", error)
        return None
    if is_rank_zero():
        runs.write_job_status(output_dir, overrides, "completed")
    # A sweeper that optimises needs a number: mean PSNR over everything evaluated.
    values = [m["psnr"] for s in results.values() for m in s.values() if isinstance(m, dict) and "psnr" in m]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    main()
