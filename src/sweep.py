"""Hydra plumbing shared by the entry points: run-folder naming and the sweep manifest."""
from __future__ import annotations

import json
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


class ManifestCallback(Callback):
    """Writes `job.json` (overrides, status, error) into each job's folder, and `manifest.json` (all jobs) into
    the sweep folder when the sweep ends. Per-job files avoid racing writers under parallel launchers."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        output = Path(config.hydra.runtime.output_dir)
        status = getattr(job_return.status, "name", str(job_return.status)).lower()
        entry = {"overrides": list(config.hydra.overrides.task), "dir": output.name, "status": status,
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if status != "completed":
            entry["error"] = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
        atomic_write_json(output / "job.json", entry)

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
        if failed:
            print(f"[sweep] {len(failed)} of {len(jobs)} jobs failed: {', '.join(failed)} (see {sweep_dir}/manifest.json)")
