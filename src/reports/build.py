"""One call that writes every table and figure of a report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from src.reports.collect import _columns, _groups, _merge_seeds, load_runs
from src.reports.figures import fig_curves, fig_dropout_bars, fig_visual
from src.reports.render import to_csv, to_latex, to_markdown
from src.reports.tables import _slug, table_main, table_positions, table_probabilities
from src.reports.wandb_report import log_tables_to_wandb
from src.utils import atomic_write_text


def build_report(sweeps: Sequence[os.PathLike], out: os.PathLike | None = None, metric: str = "psnr",
                 fig4: str | None = None, fig5: Sequence[str] | None = None, fig5_degradations=("clean", "noise"),
                 backbone=None) -> dict[str, list[Path]]:
    """Write tables and figures; returns {"tables": [...], "figures": [...]} paths."""
    runs, notes = load_runs(sweeps)
    runs = _merge_seeds(runs)
    out = Path(out) if out else Path(sweeps[0]) / "report"
    cols = _columns(runs)
    digits = 4 if metric.startswith("ssim") else 2
    tables = [table_main(runs, cols, metric)] + table_positions(runs, cols, metric) \
        + table_probabilities(runs, cols, metric)
    written = {"tables": [], "figures": []}
    md = [f"# Report: {', '.join(map(str, sweeps))}", "", f"{len(runs)} model(s); metric {metric} "
          f"({'Y channel' if metric in ('psnr', 'ssim') else 'RGB'}).", ""]
    for t in tables:
        for ext, text in (("md", to_markdown(t, digits)), ("tex", to_latex(t, digits)), ("csv", to_csv(t))):
            written["tables"].append(atomic_write_text(out / f"{t.name}.{ext}", text))
        md += [f"## {t.name}", "", to_markdown(t, digits)]
    log_tables_to_wandb(tables)

    if fig4:
        s, d = fig4.split("/", 1)
    else:  # the paper's Fig. 4 uses BSD100 (bicubic); fall back to the first column available
        s, d = ("BSD100", "clean") if ("BSD100", "clean") in cols else cols[0]
    for group in _groups(runs):
        for kind, fn in (("fig4", lambda p: fig_dropout_bars(runs, group, s, d, metric, p)),
                         ("curves", lambda p: fig_curves(runs, group, p))):
            p = fn(out / f"{kind}_{_slug(group)}.png")
            if p:
                written["figures"].append(p)
    if fig5:
        if len(fig5) != 3:
            raise ValueError(f"--fig5 needs 3 paths (checkpoint without dropout, with dropout, image); got {fig5}")
        written["figures"].append(fig_visual(*fig5, out / "fig5_visual.png", degradations=fig5_degradations,
                                             backbone=backbone))
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written["figures"]]
    if notes:
        md += ["", "## Left out", ""] + [f"- {n}" for n in notes]
    written["tables"].append(atomic_write_text(out / "report.md", "\n".join(md) + "\n"))
    return written

