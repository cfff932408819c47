"""Hydra plumbing shared by the entry points: run-folder naming and the sweep manifest."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src import runs


def register_resolvers() -> None:
    # A run without overrides still needs a stable folder name so that rerunning it resumes.
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", runs.run_id)


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
        for job_file in sorted(sweep_dir.glob(f"*/{runs.JOB}")):
            jobs[job_file.parent.name] = runs.read_job(job_file.parent) or {
                "status": "unknown", "error": f"{job_file} was unreadable"}
        failed = sorted(k for k, v in jobs.items() if v.get("status") != "completed")
        runs.write_manifest(sweep_dir, config.get("name"), jobs)
        if len(jobs) - len(failed) > 0:
            write_sweep_report(config, sweep_dir)
        if failed:
            for name in failed:
                print(f"[sweep] FAILED {name}: {jobs[name].get('error')}", file=sys.stderr)
            print(f"[sweep] {len(failed)} of {len(jobs)} jobs failed (see {sweep_dir / 'manifest.json'})",
                  file=sys.stderr)
            sys.exit(1)
