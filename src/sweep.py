"""Hydra plumbing shared by the entry points: run-folder naming and the sweep manifest."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.utils import atomic_write_json


def run_id(override_dirname: str) -> str:
    # A run without overrides still needs a stable folder name so that rerunning it resumes.
    return override_dirname.replace("/", "_") or "default"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)


def write_job_status(output_dir: str | Path, overrides: list[str], error: BaseException | None = None) -> None:
    """`job.json` in the job's folder: its overrides and status (and error). One file per job, so parallel
    launchers never race on a shared manifest."""
    entry = {"overrides": list(overrides), "dir": Path(output_dir).name,
             "status": "failed" if error else "completed", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if error is not None:
        entry["error"] = f"{type(error).__name__}: {error}"
    atomic_write_json(Path(output_dir) / "job.json", entry)


def write_sweep_report(config: DictConfig, sweep_dir: Path) -> None:
    """The paper-style tables of a finished sweep, in `<sweep>/report/`, and in W&B when the sweep logs there
    (a run of its own in the sweep's group, so the dashboard shows the comparison next to the jobs)."""
    from src.report import build_report

    wandb_cfg = (config.get("logger") or {}).get("wandb")
    run = None
    try:
        if wandb_cfg is not None:
            import wandb

            run = wandb.init(project=wandb_cfg.project, group=wandb_cfg.group, name=f"{config.name}-report",
                             job_type="report", dir=str(sweep_dir), mode="offline" if wandb_cfg.offline else None)
        build_report([sweep_dir])
    except Exception as e:  # a report is a convenience: it must not turn a finished sweep into a failure
        print(f"[sweep] could not build the report for {sweep_dir}: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if run is not None:
            run.finish()


class ManifestCallback(Callback):
    """At the end of a sweep, gathers every job's `job.json` into `manifest.json` in the sweep folder and exits
    non-zero if any job failed (the failed jobs do not stop the others: src.train records and swallows them)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = {}
        for job_file in sorted(sweep_dir.glob("*/job.json")):
            try:
                jobs[job_file.parent.name] = json.loads(job_file.read_text())
            except (OSError, json.JSONDecodeError) as e:
                jobs[job_file.parent.name] = {"status": "unknown", "error": str(e)}
        failed = sorted(k for k, v in jobs.items() if v.get("status") != "completed")
        atomic_write_json(sweep_dir / "manifest.json", {"name": config.get("name"), "jobs": jobs, "failed": failed})
        if len(jobs) - len(failed) > 0:
            write_sweep_report(config, sweep_dir)
        if failed:
            for name in failed:
                print(f"[sweep] FAILED {name}: {jobs[name].get('error')}", file=sys.stderr)
            print(f"[sweep] {len(failed)} of {len(jobs)} jobs failed (see {sweep_dir / 'manifest.json'})",
                  file=sys.stderr)
            sys.exit(1)
