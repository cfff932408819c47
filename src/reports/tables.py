"""The paper's tables (Table 1, B.3, A.2) as plain data: rows of values, their seed spread, and best marks.

Best / second-best marks are ranked on the unrounded values, and a mark is given only where seeds separate the
value from the next one: the 95% interval of their difference over the seeds (paired t when both rows ran the same
seeds, else Welch) excludes zero. With one seed on either side nothing is marked: no interval, no ranking.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from src.reports.collect import (POSITION_LABEL, Reference, Setting, columns, columns_within, groups, protocol_metric,
                                 size_text, sort_key)
from src.reports.paper import paper_rows, same_training


@dataclass
class Row:
    label: str
    values: list[float]
    kind: str = "model"             # model | delta | reference | paper | paper_delta
    std: list[float] = field(default_factory=list)   # seed std per value (NaN: one seed)
    n: int = 1                      # seeds behind each value
    seeds: list = field(default_factory=list)        # per value {seed: value} of each run (for the marks)

    def __iter__(self):             # (label, values, kind), as rows were tuples before
        return iter((self.label, self.values, self.kind))

    def std_at(self, j: int) -> float:
        return self.std[j] if j < len(self.std) else math.nan

    def seeds_at(self, j: int) -> dict:
        return self.seeds[j] if j < len(self.seeds) else {}


@dataclass
class Table:
    name: str
    caption: str
    col_groups: list[str]           # header over each block of columns (a set), "" for none
    columns: list[str]
    rows: list[Row]
    per_row: bool = False           # rank best/second within rows (Table A.2) instead of columns
    row_header: str = "Model"
    notes: list[str] = field(default_factory=list)

    def marks(self) -> dict[tuple[int, int], str]:
        """{(row, col): "best" | "second"} over the model rows (per column, or per row for `per_row`)."""
        out = {}
        if self.per_row:
            for i, row in enumerate(self.rows):
                if row.kind == "model":
                    for j, m in rank(row.values, row.seeds).items():
                        out[(i, j)] = m
            return out
        model_rows = [i for i, row in enumerate(self.rows) if row.kind == "model"]
        for j in range(len(self.columns)):
            vals = [self.rows[i].values[j] for i in model_rows]
            samples = [self.rows[i].seeds_at(j) for i in model_rows]
            for k, m in rank(vals, samples).items():
                out[(model_rows[k], j)] = m
        return out


def rank(values: list[float], samples: list[dict] = ()) -> dict[int, str]:
    """{index: "best" | "second"} among `values` (at least 3 present), on unrounded values. `samples[i]` holds the
    per-seed values of item i ({seed: value}). The best is marked only when the seed-level interval of its lead
    over the second excludes zero, the second only when the best is marked and its lead over the third does."""
    from src.reports.stats import seed_difference

    items = sorted(((v, i) for i, v in enumerate(values) if not math.isnan(v)), reverse=True)
    if len(items) < 3 or len(samples) < len(values):
        return {}

    def ahead(i: int, j: int) -> bool:
        return seed_difference(samples[j], samples[i]).low > 0

    out = {}
    (_, i1), (_, i2), (_, i3) = items[:3]
    if ahead(i1, i2):
        out[i1] = "best"
        if ahead(i2, i3):
            out[i2] = "second"
    return out


def _row(st: Setting, cols, metric: str, protocol: str, label: str | None = None) -> Row:
    return Row(label or st.label, [st.value(s, d, metric, protocol) for s, d in cols], "model",
               [st.std(s, d, metric, protocol) for s, d in cols], st.n,
               [per_seed(st, s, d, metric, protocol) for s, d in cols])


def per_seed(st: Setting, s: str, d: str, metric: str, protocol: str) -> dict:
    """{seed: value} of a setting's runs in one column (runs without a seed are numbered by position)."""
    out = {}
    for k, r in enumerate(st.runs):
        v = r.value(s, d, metric, protocol)
        if not math.isnan(v):
            out[r.seed if r.seed is not None else f"#{k}"] = v
    return out


def _delta(st: Setting, base: Setting, cols, metric: str, protocol: str) -> Row:
    """Improvement over the baseline: difference of the means; its spread is the std of the per-seed
    differences when both settings ran the same seeds (each pair shares initial weights and batches)."""
    vals = [st.value(s, d, metric, protocol) - base.value(s, d, metric, protocol) for s, d in cols]
    std = [math.nan] * len(cols)
    if st.n >= 2 and sorted(map(str, st.seeds)) == sorted(map(str, base.seeds)):
        order_a = np.argsort([str(x) for x in st.seeds])
        order_b = np.argsort([str(x) for x in base.seeds])
        for j, (s, d) in enumerate(cols):
            diff = st.values(s, d, metric, protocol)[order_a] - base.values(s, d, metric, protocol)[order_b]
            diff = diff[~np.isnan(diff)]
            std[j] = float(diff.std(ddof=1)) if diff.size >= 2 else math.nan
    return Row("Improvement", vals, "delta", std, min(st.n, base.n))


def main_tables(settings: list[Setting], metric: str, protocol: str = "literature",
                reference: Reference | None = None, sets=None) -> list[Table]:
    """Table 1 (`table1`) of the models trained as the paper's Table 1 was (Real-ESRGAN's pipeline), and one table
    of the same layout (`table1_bicubic`) for the models trained otherwise (the bicubic setting of Fig. 2a/2b/4),
    each over the columns its own models scored: the bicubic setting is scored on clean input only, and its rows
    beside the Real models' would be seven empty columns and a different training. `sets`: only these test sets."""
    out = []
    for name, part in (("table1", [st for st in settings if same_training(st.pipeline)]),
                       ("table1_bicubic", [st for st in settings if not same_training(st.pipeline)])):
        cols = [c for c in columns(part, protocol) if sets is None or c[0] in sets]
        if part and cols:
            out.append(table_main(part, cols, metric, protocol, reference, name))
    return out


def table_main(settings: list[Setting], cols, metric: str, protocol: str = "literature",
               reference: Reference | None = None, name: str = "table1") -> Table:
    """Table 1 layout: the bicubic reference, then per group the baseline, each dropout variant and its
    Improvement over the baseline, and the paper's published rows where the protocol is the paper's."""
    m = protocol_metric(protocol, metric)
    rows = []
    if reference is not None:
        vals = [reference.value(s, d, m, protocol) for s, d in cols]
        if not all(math.isnan(v) for v in vals):
            rows.append(Row(reference.label, vals, "reference"))
    notes = []
    for group in groups(settings):
        rs = sorted((r for r in settings if r.group == group), key=sort_key)
        bases = [r for r in rs if r.baseline]
        for r in rs:
            rows.append(_row(r, cols, m, protocol))
            # the Improvement is over the baseline of the same experiment (two campaigns are not crossed)
            base = next((b for b in bases if b.family == r.family), bases[0] if bases else None)
            if base is not None and r.dropout:
                rows.append(_delta(r, base, cols, m, protocol))
        paper = paper_rows("table1", rs[0].backbone, [(r.position, r.p) for r in rs], protocol, m, rs[0].pipeline)
        for label, values, kind in paper:
            rows.append(Row(f"paper: {label}" if kind == "paper" else "paper: Improvement",
                            [values.get(s, {}).get(d, math.nan) for s, d in cols], kind))
        notes.append(f"{group}: {size_text(rs[0].size)}")
    caption = (f"{_metric_name(m)} of models x4, {protocol} protocol; Improvement = with dropout minus without "
               f"(p=0).")
    return Table(name + _suffix(protocol), caption, [s for s, _ in cols], [d for _, d in cols], rows,
                 notes=notes)


def table_positions(settings: list[Setting], cols, metric: str, protocol: str = "literature") -> list[Table]:
    """Table B.3: one table per (group, dim, p) that has two or more dropout positions, plus its baseline."""
    m = protocol_metric(protocol, metric)
    out = []
    for group, dim, p in sorted({(r.group, r.dim, r.p) for r in settings if r.dropout}):
        rs = [r for r in settings if r.group == group and r.dropout and r.dim == dim and r.p == p]
        if len({r.position for r in rs}) < 2:
            continue
        base = [r for r in settings if r.group == group and r.baseline]
        own = columns_within(base + rs, cols, protocol)
        rows = [_row(r, own, m, protocol, (f"{r.group} (p=0)" if r.baseline else
                                            f"{POSITION_LABEL.get(r.position, r.position)} (p={r.p:g})")
                     + (f" [mean of {r.n} seeds]" if r.n > 1 else ""))
                for r in sorted(base + rs, key=sort_key)]
        if dim == "channel" and p == 0.7:
            for label, values, kind in paper_rows("table_b3", rs[0].backbone,
                                                  [(r.position, r.p) for r in base + rs], protocol, m,
                                                  rs[0].pipeline):
                rows.append(Row(f"paper: {label}", [values.get(s, {}).get(d, math.nan) for s, d in own], kind))
        out.append(Table(f"table_b3_{slug(group)}_{dim}_p{p:g}{_suffix(protocol)}",
                         f"{_metric_name(m)} of {group} with {dim}-wise dropout (p={p:g}) at different positions, "
                         f"{protocol} protocol.", [s for s, _ in own], [d for _, d in own], rows))
    return out


def table_probabilities(settings: list[Setting], cols, metric: str, protocol: str = "literature") -> list[Table]:
    """Table A.2: per (group, position, dim) and campaign (the config less dropout: two JPEG codecs are two
    campaigns) with two or more probabilities, beside that campaign's own baseline; rows = set/degradation, columns
    = p. Under the paper's protocol its published cells follow as rows, on the probabilities this campaign ran (the
    paper gives two: Manga109 and Urban100 under noise); a note names the published cells this study did not
    score. A group with several campaigns names each table after its baseline's folder."""
    m = protocol_metric(protocol, metric)
    out = []
    keys = sorted({(r.group, r.position, r.dim, r.family) for r in settings if r.dropout})
    for group, pos, dim, family in keys:
        rs = sorted([r for r in settings if r.group == group and r.position == pos and r.dim == dim and r.dropout
                     and r.family == family], key=lambda r: r.p)
        if len(rs) < 2:
            continue
        base = [r for r in settings if r.group == group and r.baseline and r.family == family][:1]
        rs = base + rs
        own = columns_within(rs, cols, protocol)
        rows = [Row(f"{s} {d}", [r.value(s, d, m, protocol) for r in rs], "model",
                    [r.std(s, d, m, protocol) for r in rs], min(r.n for r in rs),
                    [per_seed(r, s, d, m, protocol) for r in rs]) for s, d in own]
        published: dict[tuple[str, str], list[float]] = {}
        for j, r in enumerate(rs):
            for _, values, kind in paper_rows("table_a2", r.backbone, [(r.position, r.p)], protocol, m, r.pipeline):
                for s, by_deg in values.items():
                    for d, v in by_deg.items():
                        published.setdefault((s, d), [math.nan] * len(rs))[j] = v
        rows += [Row(f"paper: {s} {d}", vals, "paper") for (s, d), vals in published.items()]
        notes = [f"the paper's {s} {d} is not scored here" for s, d in published if (s, d) not in own]
        campaigns = {r.family for r in settings if r.group == group and r.position == pos and r.dim == dim
                     and r.dropout}
        anchor = (base or rs)[0]
        tag = f"_{slug(anchor.runs[0].dir.parent.name)}" if len(campaigns) > 1 else ""
        out.append(Table(f"table_a2_{slug(group)}_{pos}_{dim}{tag}{_suffix(protocol)}",
                         f"{_metric_name(m)} of {group} with {dim}-wise dropout at {pos} for different "
                         f"probabilities, {protocol} protocol"
                         + (f" (campaign {anchor.runs[0].dir.parent.name})" if tag else "") + ".",
                         [""] * len(rs), [f"p={r.p:g}" for r in rs], rows, per_row=True, row_header="Test set",
                         notes=notes))
    return out


def _metric_name(metric: str) -> str:
    from src.reports.collect import METRIC_LABEL

    return METRIC_LABEL.get(metric, metric.upper())


def _suffix(protocol: str) -> str:
    return "" if protocol == "literature" else f"_{protocol}"


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")
