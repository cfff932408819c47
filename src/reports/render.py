"""Tables as Markdown, LaTeX and CSV; generated blocks of a hand-written file (the README)."""
from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from src.reports.tables import Table
from src.utils import atomic_write_text

MARK_NOTE = ("Bold / red: best, italic / blue: second best, ranked on unrounded values and only where the 95% "
             "seed-level interval of the lead over the next excludes zero (never with one seed).")
STD_NOTE = "Values with +- are mean +- std over the seeds (count in the row label)."


def fmt(v: float, kind: str, digits: int) -> str:
    """A value as printed: signed for differences, and never `-0.00` (a difference that rounds to zero
    is printed as 0.00, without a sign)."""
    if math.isnan(v):
        return "-"
    if kind in ("delta", "paper_delta"):
        s = f"{v:+.{digits}f}"
        return s[1:] if float(s) == 0 else s
    s = f"{v:.{digits}f}"
    return s.lstrip("-") if float(s) == 0 else s


def _cell(t: Table, i: int, j: int, digits: int, pm: str) -> str:
    row = t.rows[i]
    c = fmt(row.values[j], row.kind, digits)
    std = row.std_at(j)
    if c != "-" and not math.isnan(std):
        c += f"{pm}{fmt(std, 'model', digits)}"
    return c


def _spans(t: Table) -> dict[str, list[int]]:
    # One block per set keeps 8 columns per line, as the paper stacks its test sets.
    spans = defaultdict(list)
    for j, g in enumerate(t.col_groups):
        spans[g].append(j)
    return spans


def _has_std(t: Table) -> bool:
    return any(not math.isnan(s) for row in t.rows for s in row.std)


def to_markdown(t: Table, digits: int = 2) -> str:
    marks = t.marks()
    blocks = []
    for g, js in _spans(t).items():
        lines = [f"**{g}**\n" if g else "", f"| {t.row_header} | " + " | ".join(t.columns[j] for j in js) + " |",
                 "|---|" + "---:|" * len(js)]
        for i, row in enumerate(t.rows):
            cells = []
            for j in js:
                c = _cell(t, i, j, digits, " ± ")
                m = marks.get((i, j))
                cells.append(f"**{c}**" if m == "best" else f"*{c}*" if m == "second" else c)
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(x for x in lines if x))
    head = " ".join([t.caption, MARK_NOTE] + ([STD_NOTE] if _has_std(t) else []))
    notes = "".join(f"\n- {n}" for n in t.notes)
    return head + ("\n" + notes if notes else "") + "\n\n" + "\n\n".join(blocks) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def to_latex(t: Table, digits: int = 2) -> str:
    marks = t.marks()
    spans = _spans(t)
    width = max(len(js) for js in spans.values())
    out = ["% needs \\usepackage{xcolor}; red = best, blue = second best", "\\begin{table}[t]", "\\centering",
           "\\small", f"\\begin{{tabular}}{{l{'c' * width}}}", "\\toprule"]
    for g, js in spans.items():
        if g:
            out.append(f"\\multicolumn{{{width + 1}}}{{c}}{{{_tex_escape(g)}}} \\\\")
        out.append(f"{t.row_header} & " + " & ".join(_tex_escape(t.columns[j]) for j in js) + " \\\\")
        out.append("\\midrule")
        for i, row in enumerate(t.rows):
            cells = []
            for j in js:
                c = _cell(t, i, j, digits, "$\\pm$")
                m = marks.get((i, j))
                cells.append(f"\\textcolor{{red}}{{{c}}}" if m == "best" else
                             f"\\textcolor{{blue}}{{{c}}}" if m == "second" else c)
            out.append(f"{_tex_escape(row.label)} & " + " & ".join(cells) + " \\\\")
        out.append("\\midrule" if g != list(spans)[-1] else "\\bottomrule")
    caption = " ".join([t.caption] + ([STD_NOTE] if _has_std(t) else []))
    out += ["\\end{tabular}", f"\\caption{{{_tex_escape(caption)}}}", f"\\label{{tab:{t.name}}}",
            "\\end{table}", ""]
    return "\n".join(out)


def to_csv(t: Table) -> str:
    """One line per row (kind: model, delta, reference, paper, paper_delta), unrounded to 4 decimals; a row with
    seeds is followed by a `std` line holding the std over its seeds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)])
    for row in t.rows:
        w.writerow([row.label, row.kind] + ["" if math.isnan(v) else f"{v:.4f}" for v in row.values])
        if any(not math.isnan(s) for s in row.std) and row.kind in ("model", "delta"):
            w.writerow([f"± std (n={row.n})", "std"] + ["" if math.isnan(s) else f"{s:.4f}" for s in row.std])
    return buf.getvalue()


def write_readme_block(readme: os.PathLike, text: str, begin: str, end: str) -> Path:
    """Replace what lies between the `begin` and `end` markers of `readme` with `text` (a ValueError naming the
    file when the markers are missing or out of order)."""
    path = Path(readme)
    body = path.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if body.count(begin) != 1 or body.count(end) != 1 or not pattern.search(body):
        raise ValueError(f"readme={path}: needs one {begin} line followed by one {end} line around "
                         "the generated block")
    new = pattern.sub(lambda _: f"{begin}\n{text}\n{end}", body)
    return path if new == body else atomic_write_text(path, new)
