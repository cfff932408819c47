"""A report in W&B: tables, figures and the comparison numbers logged to a run of its own.

The sweep's report run has a deterministic id (from the sweep folder), so building the report again replaces
the earlier one instead of adding another run to the project.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import sys
from pathlib import Path

from src.reports.tables import Table, slug


def log_report(tables: list[Table], figures: list[Path] = (), summary: dict | None = None) -> bool:
    """Log each table as a wandb.Table, each figure as a wandb.Image and `summary` as summary values, when a
    W&B run is active (never starts one)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    for t in tables:
        cols = ["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)]
        data = [[row.label, row.kind] + [None if math.isnan(v) else v for v in row.values] for row in t.rows]
        wandb.log({f"report/{t.name}": wandb.Table(columns=cols, data=data)})
    image = getattr(wandb, "Image", None)
    for p in figures:
        if image is not None and Path(p).suffix == ".png":
            wandb.log({f"report/{Path(p).stem}": image(str(p))})
    if summary and getattr(wandb.run, "summary", None) is not None:
        wandb.run.summary.update(summary)
    return True


log_tables_to_wandb = log_report


def report_run_id(name: str, sweep_dir: Path) -> str:
    """The same id for every report of one sweep folder: a rebuilt report replaces the earlier run."""
    digest = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:8]
    return f"{slug(str(name))[:40]}-report-{digest}"


def start_report_run(wandb_cfg, name: str, sweep_dir: Path):
    """wandb.init for the sweep's report run (offline unless the logger config says otherwise). An earlier
    offline copy of the same report is removed, so `wandb sync` uploads the new one only."""
    import wandb

    run_id = report_run_id(name, sweep_dir)
    for old in (Path(sweep_dir) / "wandb").glob(f"offline-run-*-{run_id}"):
        shutil.rmtree(old, ignore_errors=True)
    offline = bool(wandb_cfg.get("offline", True))
    return wandb.init(project=wandb_cfg.get("project"), group=wandb_cfg.get("group"), name=f"{name}-report",
                      id=run_id, resume="allow", job_type="report", dir=str(sweep_dir),
                      mode="offline" if offline else None)
