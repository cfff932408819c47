"""Tables as Markdown, LaTeX and CSV."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict

from src.reports.tables import Table, _row_marks


def _fmt(v: float, kind: str, digits: int) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:+.{digits}f}" if kind == "delta" else f"{v:.{digits}f}"



def to_markdown(t: Table, digits: int = 2) -> str:
    marks = _row_marks(t)
    blocks = []
    # One block per set keeps 8 columns per line, as the paper stacks its test sets.
    spans = defaultdict(list)
    for j, g in enumerate(t.col_groups):
        spans[g].append(j)
    for g, js in spans.items():
        lines = [f"**{g}**\n" if g else "", f"| {t.row_header} | " + " | ".join(t.columns[j] for j in js) + " |",
                 "|---|" + "---:|" * len(js)]
        for i, (label, vals, kind) in enumerate(t.rows):
            cells = []
            for j in js:
                c = _fmt(vals[j], kind, digits)
                m = marks.get((i, j))
                cells.append(f"**{c}**" if m == "best" else f"*{c}*" if m == "second" else c)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(x for x in lines if x))
    return f"{t.caption} Bold: best, italic: second best.\n\n" + "\n\n".join(blocks) + "\n"


def _tex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("#", r"\#")


def to_latex(t: Table, digits: int = 2) -> str:
    marks = _row_marks(t)
    spans = defaultdict(list)
    for j, g in enumerate(t.col_groups):
        spans[g].append(j)
    width = max(len(js) for js in spans.values())
    out = ["% needs \\usepackage{xcolor}; red = best, blue = second best", "\\begin{table}[t]", "\\centering",
           "\\small", f"\\begin{{tabular}}{{l{'c' * width}}}", "\\toprule"]
    for g, js in spans.items():
        if g:
            out.append(f"\\multicolumn{{{width + 1}}}{{c}}{{{_tex_escape(g)}}} \\\\")
        out.append(f"{t.row_header} & " + " & ".join(_tex_escape(t.columns[j]) for j in js) + " \\\\")
        out.append("\\midrule")
        for i, (label, vals, kind) in enumerate(t.rows):
            cells = []
            for j in js:
                c = _fmt(vals[j], kind, digits)
                m = marks.get((i, j))
                cells.append(f"\\textcolor{{red}}{{{c}}}" if m == "best" else
                             f"\\textcolor{{blue}}{{{c}}}" if m == "second" else c)
            out.append(f"{_tex_escape(label)} & " + " & ".join(cells) + " \\\\")
        out.append("\\midrule" if g != list(spans)[-1] else "\\bottomrule")
    out += ["\\end{tabular}", f"\\caption{{{_tex_escape(t.caption)}}}", f"\\label{{tab:{t.name}}}",
            "\\end{table}", ""]
    return "\n".join(out)


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "kind"] + [f"{g}/{c}" if g else c for g, c in zip(t.col_groups, t.columns)])
    for label, vals, kind in t.rows:
        w.writerow([label, kind] + ["" if math.isnan(v) else f"{v:.4f}" for v in vals])
    return buf.getvalue()

