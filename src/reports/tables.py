"""The paper's tables (Table 1, B.3, A.2) as plain data: rows of values with best / second-best marks."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from src.reports.collect import POSITION_LABEL, Run, _groups, _sort_key


@dataclass
class Table:
    name: str
    caption: str
    col_groups: list[str]           # header over each block of columns (a set), "" for none
    columns: list[str]
    rows: list[tuple[str, list[float], str]]   # (label, values, kind: "model" | "delta")
    per_row: bool = False           # rank best/second within rows (Table A.2) instead of columns
    row_header: str = "Model"

    def marks(self) -> dict[tuple[int, int], str]:
        """{(row, col): "best" | "second"} over the model rows, per column."""
        out = {}
        model_rows = [i for i, (_, _, kind) in enumerate(self.rows) if kind == "model"]
        for j in range(len(self.columns)):
            vals = sorted({round(self.rows[i][1][j], 2) for i in model_rows if not math.isnan(self.rows[i][1][j])},
                          reverse=True)
            if len(model_rows) < 3 or not vals:
                continue
            for i in model_rows:
                v = self.rows[i][1][j]
                if not math.isnan(v) and round(v, 2) == vals[0]:
                    out[(i, j)] = "best"
                elif len(vals) > 1 and not math.isnan(v) and round(v, 2) == vals[1]:
                    out[(i, j)] = "second"
        return out



def table_main(runs: list[Run], cols, metric: str) -> Table:
    """Table 1 layout: per group, the baseline, then each dropout variant and its Improvement over the baseline."""
    rows = []
    for group in _groups(runs):
        rs = sorted((r for r in runs if r.group == group), key=_sort_key)
        base = rs[0] if rs[0].baseline else None
        for r in rs:
            vals = [r.value(s, d, metric) for s, d in cols]
            rows.append((r.label, vals, "model"))
            if base is not None and r is not base:
                rows.append(("Improvement", [v - base.value(s, d, metric) for v, (s, d) in zip(vals, cols)], "delta"))
    return Table("table1", f"{metric.upper()} of models x4; Improvement = with dropout minus without (p=0).",
                 [s for s, _ in cols], [d for _, d in cols], rows)


def table_positions(runs: list[Run], cols, metric: str) -> list[Table]:
    """Table B.3: one table per (group, dim, p) that has two or more dropout positions, plus its baseline."""
    out = []
    keys = sorted({(r.group, r.dim, r.p) for r in runs if not r.baseline})
    for group, dim, p in keys:
        rs = [r for r in runs if r.group == group and not r.baseline and r.dim == dim and r.p == p]
        if len({r.position for r in rs}) < 2:
            continue
        base = [r for r in runs if r.group == group and r.baseline]
        rows = [(f"{r.group} (p=0)" if r.baseline else f"{POSITION_LABEL.get(r.position, r.position)} (p={r.p:g})",
                 [r.value(s, d, metric) for s, d in cols], "model") for r in sorted(base + rs, key=_sort_key)]
        out.append(Table(f"table_b3_{_slug(group)}_{dim}_p{p:g}",
                         f"{metric.upper()} of {group} with {dim}-wise dropout (p={p:g}) at different positions.",
                         [s for s, _ in cols], [d for _, d in cols], rows))
    return out


def table_probabilities(runs: list[Run], cols, metric: str) -> list[Table]:
    """Table A.2: per (group, position, dim) with two or more probabilities; rows = set/degradation, columns = p."""
    out = []
    for group, pos, dim in sorted({(r.group, r.position, r.dim) for r in runs if not r.baseline}):
        rs = sorted([r for r in runs if r.group == group and r.position == pos and r.dim == dim], key=lambda r: r.p)
        base = [r for r in runs if r.group == group and r.baseline][:1]
        if len(rs) < 2:
            continue
        rs = base + rs
        rows = [(f"{s} {d}", [r.value(s, d, metric) for r in rs], "model") for s, d in cols]
        out.append(Table(f"table_a2_{_slug(group)}_{pos}_{dim}",
                         f"{metric.upper()} of {group} with {dim}-wise dropout at {pos} for different probabilities.",
                         [""] * len(rs), [f"p={r.p:g}" for r in rs], rows, per_row=True,
                         row_header="Test set"))
    return out


def _row_marks(t: Table) -> dict[tuple[int, int], str]:
    if not t.per_row:
        return t.marks()
    out = {}
    for i, (_, vals, _) in enumerate(t.rows):
        ranked = sorted({round(v, 2) for v in vals if not math.isnan(v)}, reverse=True)
        for j, v in enumerate(vals):
            if len(vals) >= 3 and ranked and not math.isnan(v):
                if round(v, 2) == ranked[0]:
                    out[(i, j)] = "best"
                elif len(ranked) > 1 and round(v, 2) == ranked[1]:
                    out[(i, j)] = "second"
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")

