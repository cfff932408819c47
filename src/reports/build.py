"""One call that writes every table and figure of a report, and report.md gathering them."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from src.reports.collect import (METRIC_LABEL, Setting, columns, columns_within, find_reference, load_runs, groups,
                                 merge_seeds, protocol_metric, size_text, sort_key)
from src.reports.figures import fig_control, fig_curves, fig_dropout_bars, fig_gains, fig_visual
from src.reports.paper import paper_gains, paper_setting, published, same_training
from src.reports.prose import (column_rows, columns_line, control_paragraph, evidence_row, evidence_section,
                                headline, paper_line, secondary_line, weighting)
from src.reports.render import to_csv, to_latex, to_markdown, write_readme_block
from src.reports.stats import Evidence, PaperEffect, evidence, paper_effect
from src.reports.tables import main_tables, slug, table_positions, table_probabilities
from src.reports.wandb_report import log_report
from src.utils import atomic_write_text

READING_GUIDE = (
    "**How to read.** Columns are test sets x degradations (clean = bicubic x4 only; b+n+j = blur, bicubic, noise, "
    "JPEG), higher is better; Improvement = with dropout minus without; +- in the tables is the std over seeds "
    "(the comparisons give 95% intervals over seeds). The bicubic row "
    "is plain interpolation: a model trained on Real-ESRGAN degradations can score below it on *clean* inputs, "
    "because it learned to remove blur and noise that clean images do not have; for the same reason its "
    "validation PSNR on clean images can fall during training while it learns the harder degradations.")
PROTOCOL_NOTE = {
    "literature": "literature protocol: MATLAB-style bicubic test LR, PSNR/SSIM on the Y channel (SR papers' "
                  "convention)",
    "official": "official protocol: the paper's own test LR and RGB PSNR, comparable with the paper's tables"}


def build_report(sweeps: Sequence[os.PathLike], out: os.PathLike | None = None, metric: str = "psnr",
                 fig4: str | None = None, fig5: Sequence[str] | None = None, fig5_degradations=("clean", "noise"),
                 backbone=None, bicubic: os.PathLike | None = None, readme: os.PathLike | None = None
                 ) -> dict[str, list[Path]]:
    """Write tables and figures of the runs under `sweeps` to `out` (default <first sweep>/report); returns
    {"tables": [...], "figures": [...]} paths. `bicubic` is a folder with the bicubic reference's results files
    (default: a `bicubic` folder inside or beside the first source). The comparisons' summary goes to
    out/summary.md and, with `readme`, its headlines (readme_md) replace the text between that file's results
    markers."""
    runs, notes = load_runs(sweeps)
    settings = merge_seeds(runs)
    reference = find_reference(sweeps, bicubic)
    out = Path(out) if out else Path(sweeps[0]) / "report"
    protocols = [p for p in ("literature", "official") if any(p in st.protocols() for st in settings)]
    digits = 4 if metric.startswith("ssim") else 2
    written = {"tables": [], "figures": []}
    all_tables, summary, blocks = [], {}, {}
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
        tables = main_tables(scored, metric, protocol, reference) \
            + table_positions(scored, cols, metric, protocol) + table_probabilities(scored, cols, metric, protocol)
        md += [f"## {METRIC_LABEL.get(m, m)}, {PROTOCOL_NOTE.get(protocol, protocol)}", ""]
        for t in tables:
            for ext, text in (("md", to_markdown(t, digits)), ("tex", to_latex(t, digits)), ("csv", to_csv(t))):
                written["tables"].append(atomic_write_text(out / f"{t.name}.{ext}", text))
            md += [f"### {t.name}", "", to_markdown(t, digits)]
        all_tables += tables
        comps = comparisons(scored, cols, m, protocol)
        if comps:
            suffix = "" if protocol == "literature" else f"_{protocol}"
            md += [f"### Is the gain larger than the noise? ({protocol} protocol)", "", SEED_LEVEL_NOTE, "",
                   _comparisons_md(comps), ""]
            control = _control_md(comps, reference, cols, m, protocol)
            if control:
                md += [f"### Does dropout do more than shrink toward bicubic? ({protocol} protocol)", "",
                       CONTROL_NOTE, "", control, ""]
            rows = [evidence_row(c.name, c.evidence, c.paper) for c in comps]
            written["tables"].append(atomic_write_text(out / f"comparison{suffix}.csv", _csv(rows)))
            per_column = [r for c in comps for r in column_rows(c.name, c.evidence)]
            if per_column:
                written["tables"].append(atomic_write_text(out / f"comparison_columns{suffix}.csv", _csv(per_column)))
            summary.update({f"report/{protocol}/{r['comparison']}/{k}": r[k] for r in rows
                            for k in ("gain", "ci_low", "ci_high", "p", "wilcoxon_p")})
            blocks[protocol] = (main_tables(scored, metric, protocol, reference, sets=(SUMMARY_SET,)), comps, control)
        written["figures"] += _protocol_figures(scored, cols, metric, protocol, fig4, out, comps, reference)
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
    if blocks:
        written["tables"].append(atomic_write_text(out / "summary.md", summary_md(blocks, out, out, digits) + "\n"))
        if readme is not None:
            written["tables"].append(write_readme_block(readme, readme_md(blocks, out, Path(readme).parent),
                                                                 README_BEGIN, README_END))
    prune_stale(out, [p for paths in written.values() for p in paths])
    return written


GENERATED = "report_files.txt"


def prune_stale(out: Path, written: Sequence[Path]) -> list[Path]:
    """Remove the files of `out` that the previous build wrote (its GENERATED list) and this one did not, then
    record this build's: a table or figure whose setting was renamed or left the results (a second size of one
    backbone tags both groups' names, say) must not stay beside the rebuilt ones as if it were current. Files the
    report never wrote, and anything outside `out` (the README), are left alone. Returns the removed files."""
    out = Path(out)
    names = sorted({p.name for p in map(Path, written) if p.parent.resolve() == out.resolve()})
    listing = out / GENERATED
    before = listing.read_text().split() if listing.is_file() else []
    removed = []
    for name in before:
        path = out / name
        # only plain names of files directly in `out`: a damaged list must not reach anything else
        if name not in names and Path(name).name == name and name not in (".", "..") and path.is_file():
            path.unlink()
            removed.append(path)
    atomic_write_text(listing, "\n".join(names) + "\n")
    return removed


SUMMARY_SET = "Set5"
SEED_LEVEL_NOTE = (
    "Each comparison leads with one number per seed pair (the two models trained from the same seed): its "
    "image-weighted mean gain; the interval is over seed pairs, so it says whether another training run would "
    "show the gain. Settings with different seeds are compared with Welch's interval over their per-seed means.")
CONTROL_NOTE = (
    "The control: the baseline's output blended with the protocol's own bicubic upscaling of the same LR, "
    "a * SR + (1 - a) * bicubic, with `a` chosen on validation images, never on the test sets (blind: one `a` for "
    "every degradation; oracle: one `a` per degradation). A model that only sits closer to interpolation gains "
    "over the baseline the way the blend does.")
README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"


def summary_md(blocks: dict, out: Path, relative_to: Path, digits: int = 2) -> str:
    """out/summary.md: per protocol the Set5 tables, each comparison's seed-level headline with its columns, the
    paper beside it and the per-image line, and the control's paragraph; links relative to `relative_to`."""
    link = Path(os.path.relpath(out, relative_to)).as_posix()
    lines = ["<!-- written by `make report` (src.reports.build.summary_md) from the committed result files; "
             "edit the code, not this text -->"]
    for protocol, (tables, comps, control) in blocks.items():
        lines += ["", _protocol_heading(protocol, link)]
        lines += [x for t in tables for x in ("", to_markdown(t, digits).rstrip())]
        for c in comps:
            lines += ["", "- " + headline(c.name, c.evidence) + " " + columns_line(c.evidence)
                      + (" " + paper_line(c.paper, c.evidence) if c.paper else "")]
        first = comps[0].evidence
        lines += ["", weighting(first) + " " + secondary_line(first)]
        if control:
            lines += ["", "**Shrinkage control.** " + control]
    if not any(control for _, _, control in blocks.values()):
        lines += ["", "**Shrinkage control**: none in these folders (the blends toward bicubic are made from a "
                  "published run's weights: `python -m src.report blend=<campaign> val=[<validation set>]`)."]
    return "\n".join(lines)


def table1_settings() -> set[tuple[str, str, float]]:
    """(backbone, position, p) of each row of the paper's Table 1."""
    return {(r["backbone"], r["position"], round(float(r["p"]), 3)) for r in published()["tables"]["table1"]["rows"]}


def readme_md(blocks: dict, out: Path, relative_to: Path) -> str:
    """The README's results block: per protocol the seed-level headline of each comparison of the paper's Table 1
    settings (against p=0 and against the controls), the number of other comparisons, and a link to the complete
    summary (out/summary.md: every comparison, tables, per-column counts, the paper beside them, per-image tests).
    The other studies have their line in the scorecard block."""
    link = Path(os.path.relpath(out, relative_to)).as_posix()
    lines = ["<!-- written by `make report` (src.reports.build.readme_md) from the committed result files; "
             "edit the code, not this text -->"]
    others, table1 = 0, table1_settings()
    for protocol, (_, comps, _) in blocks.items():
        shown = [c for c in comps if c.variant.dropout and same_training(c.variant.pipeline)
                 and (c.variant.backbone, c.variant.position, round(c.variant.p, 3)) in table1]
        others += len(comps) - len(shown)
        if shown:
            lines += ["", _protocol_heading(protocol, link)]
            lines += [f"- {headline(c.name, c.evidence)}" for c in shown]
    more = f" ({others} more comparisons of other dropout settings there)" if others else ""
    lines += ["", f"Every table, per-column count, the paper's gains beside ours, the per-image tests and the "
              f"shrinkage control: [{link}/summary.md]({link}/summary.md){more}."]
    return "\n".join(lines)


def _protocol_heading(protocol: str, link: str) -> str:
    suffix = "" if protocol == "literature" else f"_{protocol}"
    return (f"**{PROTOCOL_NOTE.get(protocol, protocol).split(':')[0].capitalize()}** "
            f"([table1{suffix}.md]({link}/table1{suffix}.md), [comparison{suffix}.csv]({link}/"
            f"comparison{suffix}.csv), [per column]({link}/comparison_columns{suffix}.csv)).")


def _size_table(settings: list[Setting]) -> str:
    """Each group's size (width/depth, iterations, data) next to the paper's."""
    lines = ["| setting | seeds | size here | the paper's |", "|---|---|---|---|"]
    for st in sorted(settings, key=lambda s: (groups(settings).index(s.group), sort_key(s))):
        lines.append(f"| {st.label} | {', '.join(map(str, st.seeds))} | {size_text(st.size)} | "
                     f"{paper_setting(st.backbone)} |")
    return "\n".join(lines)


def comparisons(settings: list[Setting], cols, metric: str, protocol: str) -> list[Comparison]:
    """Per group: each dropout setting against the baseline of its own experiment (the same config but for
    dropout: two campaigns in one report are not compared across), then against each control made from that
    baseline (the blends toward bicubic), with seed-level evidence; the paper's gain beside the one over the
    baseline."""
    out = []
    for group in groups(settings):
        rs = sorted((r for r in settings if r.group == group), key=sort_key)
        bases = [r for r in rs if r.baseline]
        if not bases:
            continue
        drops = [r for r in rs if r.dropout]
        group_cols = columns_within(rs, cols, protocol)
        for v in drops:
            base = next((b for b in bases if b.family == v.family), bases[0])
            published = paper_gains(base.backbone, [(base.position, base.p), (v.position, v.p)], protocol, metric,
                                    base.pipeline)
            ev = evidence(base, v, group_cols, metric, protocol)
            pe = paper_effect({c: iv.mean for c, iv in ev.by_column.items()}, published)
            out.append(Comparison(f"{v.label} vs p=0", base, v, ev, pe))
            for c in (r for r in rs if r.control and r.family == base.family):
                out.append(Comparison(f"{v.label} vs {c.control}", c, v, evidence(c, v, group_cols, metric,
                                                                                   protocol)))
    return out


@dataclass
class Comparison:
    name: str
    base: Setting
    variant: Setting
    evidence: Evidence
    paper: PaperEffect | None = None


def _comparisons_md(comps: list[Comparison]) -> str:
    return "\n\n".join(f"#### {c.name}\n\n" + evidence_section(c.name, c.evidence, c.paper) for c in comps)


def _control_md(comps: list[Comparison], reference, cols, metric: str, protocol: str) -> str:
    """The shrinkage control's paragraph for each dropout setting that has controls beside its baseline."""
    out = []
    for c in comps:
        if c.base.baseline:
            controls = {k.base.control: k.evidence for k in comps if k.variant is c.variant and k.base.control}
            if not controls:
                continue
            below = {(s, d): c.base.value(s, d, metric, protocol) - reference.value(s, d, metric, protocol)
                     for s, d in cols} if reference is not None else {}
            out.append(control_paragraph(c.variant.label, c.evidence, controls, below))
    return "\n\n".join(out)


def comparisons_of(comps: list[Comparison], base: Setting) -> list[Comparison]:
    """The comparisons of dropout against `base` and against the controls made from it."""
    return [c for c in comps if c.base is base or (c.base.control and c.base.family == base.family)]


def _protocol_figures(settings, cols, metric, protocol, fig4, out: Path, comps=(), reference=None) -> list[Path]:
    suffix = "" if protocol == "literature" else f"_{protocol}"
    if fig4:
        s, d = fig4.split("/", 1)
    else:  # the paper's Fig. 4 uses BSD100 (bicubic); fall back to the first column available
        s, d = ("BSD100", "clean") if ("BSD100", "clean") in cols else cols[0]
    figures = []
    m = protocol_metric(protocol, metric)
    for group in groups(settings):
        rs = sorted((r for r in settings if r.group == group), key=sort_key)
        bases = [r for r in rs if r.baseline]
        group_cols = columns(rs, protocol)  # a group scored on fewer columns (clean only) draws no empty ones
        for base in bases:
            # two campaigns of one group (e.g. two JPEG codecs) get a figure each, named by the campaign's folder
            tag = "" if len(bases) == 1 else "_" + slug(base.runs[0].dir.parent.name)
            published = paper_gains(base.backbone, [(r.position, r.p) for r in rs if r.dropout
                                                    and r.family == base.family] + [("none", 0.0)], protocol, m,
                                    base.pipeline)
            name = f"{slug(group)}{tag}{suffix}.png"
            for p in (fig_dropout_bars(settings, group, s, d, metric, out / f"fig4_{name}", protocol, base),
                      fig_gains(settings, group, group_cols, metric, out / f"gains_{name}", protocol, published,
                                base),
                      fig_control(comparisons_of(comps, base), reference, group_cols, m, out / f"control_{name}",
                                  protocol)):
                if p:
                    figures.append(p)
    return figures


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
