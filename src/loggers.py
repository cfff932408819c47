"""Loggers for training runs: CSV (read by reports) and W&B (offline by default), and what goes to them."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger

from src import runs
from src.metrics import METRICS
from src.models.dropout import is_baseline
from src.utils import atomic_write_text, build


# ResumableCSVLogger keeps the file this warning says is deleted.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run appends to `metrics.csv` instead of deleting it.

    Rows logged between the last checkpoint and a kill appear twice (the steps are redone); readers keep the
    last row per step.
    """

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / runs.METRICS
        old = path.read_text() if path.is_file() else ""
        experiment = super().experiment
        if old:  # atomically: a kill right here must not lose the curves so far
            atomic_write_text(path, old)
            experiment.metrics_keys = sorted(next(csv.reader([old.splitlines()[0]])))
        return experiment


def wandb_tags(cfg: DictConfig) -> list[str]:
    """Tags that let the W&B dashboard filter and group runs by what the sweep varies, from the config that runs:
    a run without dropout (position `none` or p = 0) is tagged `position=none`, `p=0` whatever p the sweep set."""
    d = cfg.dropout
    position, p = ("none", 0) if is_baseline(d.position, d.p) else (d.position, d.p)
    return [f"backbone={cfg.backbone._target_.rsplit('.', 1)[-1]}", f"position={position}", f"dim={d.dim}",
            f"p={p:g}" if isinstance(p, (int, float)) else f"p={p}",
            f"degradation={cfg.degradation._target_.rsplit('.', 1)[-1]}"]


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            # W&B is not silenced: its closing lines say which `wandb sync` command uploads an offline run.
            logger = build(logger_cfg, tags=wandb_tags(cfg))
            # Lightning always passes `anonymous` (None when unset) and wandb >= 0.19 warns on any value given,
            # once per run; leaving the key out when unset says the same and prints nothing.
            init = getattr(logger, "_wandb_init", {})
            if init.get("anonymous", "") is None:
                del init["anonymous"]
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole composed config
            loggers.append(logger)
        else:
            loggers.append(build(logger_cfg))
    return loggers


RESULT_COLUMNS = ["set", "degradation", *METRICS, "n_images"]


def log_results(loggers: list, results: dict, step: int) -> None:
    """Test metrics as `test/<set>/<degradation>/<metric>` scalars (summary values in W&B: one number per run,
    not a one-point chart), and as a table where the logger has tables."""
    flat, rows = {}, []
    for set_name, per_degradation in results.items():
        for degradation, m in per_degradation.items():
            flat.update({f"test/{set_name}/{degradation}/{k}": m[k] for k in ("psnr", "ssim") if k in m})
            rows.append([set_name, degradation] + [m.get(k) for k in RESULT_COLUMNS[2:]])
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(flat)
        else:
            logger.log_metrics(flat, step=step)
        if hasattr(logger, "log_table"):
            logger.log_table("test/results", columns=RESULT_COLUMNS, data=rows)
        logger.save()


def finish_wandb(loggers: list) -> None:
    # Each sweep job needs its own W&B run; a run left open would be reused by the next job in this process.
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()
