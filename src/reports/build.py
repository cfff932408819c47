"""One call that writes every table and figure of a report, and report.md gathering them."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

from src.reports.collect import (METRIC_LABEL, Setting, columns, find_reference, load_runs, groups, merge_seeds,
                                 protocol_metric, size_text, sort_key)
from src.reports.figures import fig_curves, fig_dropout_bars, fig_gains, fig_visual
from src.reports.paper import paper_rows, paper_setting
from src.reports.render import to_csv, to_latex, to_markdown
from src.reports.stats import paired, spread
from src.reports.tables import slug, table_main, table_positions, table_probabilities
from src.reports.wandb_report import log_report
from src.utils import atomic_write_text

READING_GUIDE = (
    "**How to read.** Columns are test sets x degradations (clean = bicubic x4 only; b+n+j = blur, bicubic, noise, "
    "JPEG), higher is better; Improvement = with dropout minus without; +- is the std over seeds. The bicubic row "
    "is plain interpolation: a model trained on Real-ESRGAN degradations can score below it on *clean* inputs, "
    "because it learned to remove blur and noise that clean images do not have; for the same reason its "
    "validation PSNR on clean images can fall during training while it learns the harder degradations.")
PROTOCOL_NOTE = {
    "literature": "literature protocol: MATLAB-style bicubic test LR, PSNR/SSIM on the Y channel (SR papers' "
                  "convention)",
    "official": "official protocol: the paper's own test LR and RGB PSNR, comparable with the paper's tables"}


def build_report(sweeps: Sequence[os.PathLike], out: os.PathLike | None = None, metric: str = "psnr",
                 fig4: str | None = None, fig5: Sequence[str] | None = None, fig5_degradations=("clean", "noise"),
                 backbone=None, bicubic: os.PathLike | None = None) -> dict[str, list[Path]]:
    """Write tables and figures of the runs under `sweeps` to `out` (default <first sweep>/report); returns
    {"tables": [...], "figures": [...]} paths. `bicubic` is a folder with the bicubic reference's results files
    (default: a `bicubic` folder inside or beside the first source)."""
    runs, notes = load_runs(sweeps)
    settings = merge_seeds(runs)
    reference = find_reference(sweeps, bicubic)
    out = Path(out) if out else Path(sweeps[0]) / "report"
    protocols = [p for p in ("literature", "official") if any(p in st.protocols() for st in settings)]
    digits = 4 if metric.startswith("ssim") else 2
    written = {"tables": [], "figures": []}
    all_tables, summary = [], {}
    md = [f"# Report: {', '.join(map(str, sweeps))}", "",
          f"{len(runs)} trained model(s) in {len(settings)} setting(s); "
          f"{'bicubic reference from ' + str(reference.dir) if reference else 'no bicubic reference found'}.", "",
          READING_GUIDE, "", "## Setting", "", _size_table(settings), ""]
    for protocol in protocols:
        # a study scored under one protocol only (the probability study: the paper's) has no row of empty cells
        # in the other protocol's tables
        scored = [st for st in settings if protocol in st.protocols()]
        cols = columns(scored, protocol)
        m = protocol_metric(protocol, metric)
        tables = [table_main(scored, cols, metric, protocol, reference)] \
            + table_positions(scored, cols, metric, protocol) + table_probabilities(scored, cols, metric, protocol)
        md += [f"## {METRIC_LABEL.get(m, m)}, {PROTOCOL_NOTE.get(protocol, protocol)}", ""]
        for t in tables:
            for ext, text in (("md", to_markdown(t, digits)), ("tex", to_latex(t, digits)), ("csv", to_csv(t))):
                written["tables"].append(atomic_write_text(out / f"{t.name}.{ext}", text))
            md += [f"### {t.name}", "", to_markdown(t, digits)]
        all_tables += tables
        comparison_md, rows = _comparisons(scored, cols, m, protocol)
        if rows:
            md += [f"### Is the gain larger than the noise? ({protocol} protocol)", "", comparison_md, ""]
            name = "comparison" + ("" if protocol == "literature" else f"_{protocol}")
            written["tables"].append(atomic_write_text(out / f"{name}.csv", _csv(rows)))
            summary.update({f"report/{protocol}/{r['comparison']}/{k}": r[k] for r in rows
                            for k in ("mean_diff", "improved", "items", "wilcoxon_p")})
        written["figures"] += _protocol_figures(scored, cols, metric, protocol, fig4, out)
    for group in groups(settings):
        val = next((st.size.get("val") for st in settings if st.group == group), "")
        p = fig_curves(settings, group, out / f"curves_{slug(group)}.png", val_set=val)
        if p:
            written["figures"].append(p)
    if fig5:
        if len(fig5) != 3:
            raise ValueError(f"fig5 needs 3 paths (checkpoint without dropout, with dropout, image); got {fig5}")
        written["figures"].append(fig_visual(*fig5, out / "fig5_visual.png", degradations=fig5_degradations,
                                             backbone=backbone))
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in written["figures"]]
    if notes:
        md += ["", "## Left out", ""] + [f"- {n}" for n in notes]
    log_report(all_tables, written["figures"], summary)
    written["tables"].append(atomic_write_text(out / "report.md", "\n".join(md) + "\n"))
    return written


def _size_table(settings: list[Setting]) -> str:
    """Each group's size (width/depth, iterations, data) next to the paper's."""
    lines = ["| setting | seeds | size here | the paper's |", "|---|---|---|---|"]
    for st in sorted(settings, key=lambda s: (groups(settings).index(s.group), sort_key(s))):
        lines.append(f"| {st.label} | {', '.join(map(str, st.seeds))} | {size_text(st.size)} | "
                     f"{paper_setting(st.backbone)} |")
    return "\n".join(lines)


def _comparisons(settings: list[Setting], cols, metric: str, protocol: str) -> tuple[str, list[dict]]:
    """Each dropout setting against its group's baseline: paired per-image statistics and the seed spread."""
    rows, verdicts = [], []
    for group in groups(settings):
        rs = sorted((r for r in settings if r.group == group), key=sort_key)
        if not rs[0].baseline:
            continue
        for v in rs[1:]:
            pr, sp = paired(rs[0], v, cols, metric, protocol), spread(rs[0], v, cols, metric, protocol)
            name = f"{v.label} vs p=0"
            rows.append({"comparison": name, "seeds": f"{rs[0].n} vs {v.n}", "items": pr.items,
                         "improved": pr.improved, "worse": pr.worse, "mean_diff": pr.mean_diff,
                         "images": pr.images, "images_improved": pr.images_improved, "wilcoxon_p": pr.wilcoxon_p,
                         "t_p": pr.t_p, "mean_gain": sp.gain, "seed_spread": sp.spread,
                         "columns_beyond_spread": f"{sp.beyond}/{sp.cells}"})
            per_set = ", ".join(f"{s} {a}/{n}" for s, (a, n) in pr.per_set.items())
            verdicts.append(f"- **{name}**: {sp.verdict()}." + (
                f" Per test image: {pr.improved} of {pr.items} image x degradation pairs improve ({per_set}); "
                f"{pr.images_improved} of {pr.images} images improve on average over the degradations "
                f"(Wilcoxon signed-rank p = {_p(pr.wilcoxon_p)}, paired t-test p = {_p(pr.t_p)}, one value "
                "per image)." if pr.items else " No per-image scores in the results files: no paired test."))
    if not rows:
        return "", []
    head = "| comparison | seeds | improved pairs | mean diff | images improved | Wilcoxon p | t-test p | " \
           "gain vs seed std | columns beyond spread |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['comparison']} | {r['seeds']} | {r['improved']}/{r['items']} | {_num(r['mean_diff'])} | "
                     f"{r['images_improved']}/{r['images']} | {_p(r['wilcoxon_p'])} | {_p(r['t_p'])} | "
                     f"{_num(r['mean_gain'])} vs {_num(r['seed_spread'], signed=False)} | "
                     f"{r['columns_beyond_spread']} |")
    caveat = ("The per-image tests hold the trained models fixed: they say whether these models differ on these "
              "images, not whether another training seed would; the seeds' spread answers that.")
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n\n" + caveat, rows


def _protocol_figures(settings, cols, metric, protocol, fig4, out: Path) -> list[Path]:
    suffix = "" if protocol == "literature" else f"_{protocol}"
    if fig4:
        s, d = fig4.split("/", 1)
    else:  # the paper's Fig. 4 uses BSD100 (bicubic); fall back to the first column available
        s, d = ("BSD100", "clean") if ("BSD100", "clean") in cols else cols[0]
    figures = []
    m = protocol_metric(protocol, metric)
    for group in groups(settings):
        rs = sorted((r for r in settings if r.group == group), key=sort_key)
        published = {}
        for label, values, kind in paper_rows("table1", rs[0].backbone, [(r.position, r.p) for r in rs],
                                              protocol, m):
            if kind == "paper_delta":
                published = {(a, b): v for a, degs in values.items() for b, v in degs.items()}
        for p in (fig_dropout_bars(settings, group, s, d, metric, out / f"fig4_{slug(group)}{suffix}.png", protocol),
                  fig_gains(settings, group, cols, metric, out / f"gains_{slug(group)}{suffix}.png", protocol,
                            published)):
            if p:
                figures.append(p)
    return figures


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _num(v: float, signed: bool = True) -> str:
    if v is None or math.isnan(v):
        return "-"
    s = f"{v:+.3f}" if signed else f"{v:.3f}"
    return s.lstrip("+-") if float(s) == 0 else s


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
