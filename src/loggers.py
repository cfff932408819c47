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


def _hydra_runtime() -> tuple[dict, bool]:
    """The config groups chosen on the command line ({group: option}) and whether this job is one of a multirun
    ({} and False outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}, False
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in (OmegaConf.select(hydra_cfg, "runtime.choices") or {}).items()}
    return choices, OmegaConf.select(hydra_cfg, "mode") == RunMode.MULTIRUN


# W&B refuses tags longer than this.
_TAG_MAX = 64


def wandb_tags(cfg: DictConfig, sweep: str | None = None) -> list[str]:
    """Tags that let the W&B dashboard filter and group runs by what a study varies, from the config that runs:
    the experiment and backbone options as chosen (`backbone=srresnet_small`; the class as `arch=`), dropout
    position, dim and p, the seed, the degradation, and the sweep folder. A run without dropout (position `none` or
    p = 0) is tagged `position=none`, `p=0` whatever p the sweep set."""
    choices, _ = _hydra_runtime()
    d = cfg.dropout
    position, p = ("none", 0) if is_baseline(d.position, d.p) else (d.position, d.p)
    arch = cfg.backbone._target_.rsplit(".", 1)[-1]
    tags = [f"experiment={choices.get('experiment') or 'none'}" if choices else None,
            f"backbone={choices.get('backbone') or arch}", f"arch={arch}", f"position={position}", f"dim={d.dim}",
            f"p={p:g}" if isinstance(p, (int, float)) else f"p={p}",
            f"seed={cfg.seed}" if "seed" in cfg else None,
            f"degradation={choices.get('degradation') or cfg.degradation._target_.rsplit('.', 1)[-1]}",
            f"sweep={sweep}" if sweep else None]
    return [t[:_TAG_MAX] for t in tags if t]


def wandb_names(run_dir: str | Path, runs_root: str | Path, in_sweep: bool) -> tuple[str, str]:
    """(group, display name) of a run's W&B run: the group is the sweep folder (a single run is a group of its own),
    the name the run folder, both as paths below `paths.runs` (`train/sweep-dropout.p-0.1+0.5` and
    `train/sweep-dropout.p-0.1+0.5/dropout.p-0.1`), so names never collide across sweeps."""
    run_dir = Path(run_dir).resolve()
    try:
        name = run_dir.relative_to(Path(runs_root).resolve()).as_posix()
    except ValueError:  # a folder outside paths.runs: its last parts still tell sweeps apart
        name = "/".join(run_dir.parts[-3 if in_sweep else -2:])
    group = name.rpartition("/")[0] if in_sweep and "/" in name else name
    return group, name


def wandb_settings(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The group, name and tags of this run's W&B run; a group or name set in logger.wandb is kept."""
    _, in_sweep = _hydra_runtime()
    run_dir = Path(run_dir)
    in_sweep = in_sweep or (run_dir.parent / "manifest.json").is_file()
    group, name = wandb_names(run_dir, OmegaConf.select(cfg, "paths.runs", default="runs"), in_sweep)
    node = cfg.logger.wandb
    return {"group": node.get("group") or group, "name": node.get("name") or name,
            "tags": wandb_tags(cfg, run_dir.parent.name if in_sweep else None)}


def build_loggers(cfg: DictConfig, run_dir: str | Path | None = None) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            # W&B is not silenced: its closing lines say which `wandb sync` command uploads an offline run.
            folder = run_dir if run_dir is not None else logger_cfg.save_dir
            logger = build(logger_cfg, **wandb_settings(cfg, folder))
            # Lightning always passes `anonymous` (None when unset) and wandb >= 0.19 warns on any value given,
            # once per run; leaving the key out when unset says the same and prints nothing.
            init = getattr(logger, "_wandb_init", {})
            if init.get("anonymous", "") is None:
                del init["anonymous"]
            from src.runs import git_state

            # the whole composed config, and the code it ran: {commit, dirty}
            logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "git": git_state()})
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
