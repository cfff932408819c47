"""A report in W&B: its tables (and figures) logged to the active run."""
from __future__ import annotations

import math
import sys

from src.reports.tables import Table


def log_tables_to_wandb(tables: list[Table]) -> bool:
    """Log each table as a wandb.Table when a W&B run is active (never starts one)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    for t in tables:
        cols = ["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)]
        data = [[label, kind] + [None if math.isnan(v) else v for v in vals] for label, vals, kind in t.rows]
        wandb.log({f"report/{t.name}": wandb.Table(columns=cols, data=data)})
    return True

