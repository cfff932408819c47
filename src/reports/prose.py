"""Generated prose: every sentence of a report or the README that carries a number is written here from computed
results (src.reports.stats), so text cannot drift from the files it describes.

Wording that draws a conclusion is chosen by rules on the intervals (an interval above zero, below zero, or
across it), never typed by hand.
"""
from __future__ import annotations

import math

import numpy as np

from src.reports.stats import BOOTSTRAP_B, BOOTSTRAP_SEED, Evidence, Interval, PaperEffect


def unit_of(metric: str) -> str:
    return " dB" if metric.startswith("psnr") else ""


def num(v: float, digits: int = 3, signed: bool = True) -> str:
    """A value as printed, never `-0.000`."""
    if v is None or math.isnan(v):
        return "-"
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return s.lstrip("+-") if float(s) == 0 else s


def pval(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def interval(iv: Interval, unit: str = "", digits: int = 3) -> str:
    """`+0.063 dB [95% CI +0.018, +0.107], p = 0.026`, or the bare mean where no interval exists."""
    if math.isnan(iv.low):
        return f"{num(iv.mean, digits)}{unit} (no interval: one seed)"
    return f"{num(iv.mean, digits)}{unit} [95% CI {num(iv.low, digits)}, {num(iv.high, digits)}], p = {pval(iv.p)}"


def direction(iv: Interval) -> str:
    """`above zero`, `below zero` or `across zero`: where a 95% interval lies (the wording rule of every verdict)."""
    if math.isnan(iv.low):
        return "unmeasured"
    return "above zero" if iv.low > 0 else "below zero" if iv.high < 0 else "across zero"


def over(ev: Evidence) -> str:
    """What an interval is over: `paired t over 3 seed pairs, df = 2` or `Welch t over 3 and 2 seeds`."""
    if ev.overall is None or not ev.overall.kind:
        if tuple(ev.seeds) == (1, 1):
            return "one seed each: no seed-level interval"
        return f"{ev.seeds[0]} vs {ev.seeds[1]} seeds: no seed-level interval"
    if ev.paired:
        extra = f"; {ev.left_out} run(s) without a seed pair left out" if ev.left_out else ""
        return f"paired t over {ev.overall.n} seed pairs, df = {ev.overall.n - 1}{extra}"
    return f"Welch t over {ev.seeds[0]} and {ev.seeds[1]} seeds"


def headline(name: str, ev: Evidence) -> str:
    """The one sentence a comparison leads with."""
    u = unit_of(ev.metric)
    if ev.overall is not None and math.isnan(ev.overall.low):  # over() already says why there is no interval
        text = f"**{name}: {num(ev.overall.mean)}{u}** ({over(ev)})"
    else:
        text = f"**{name}: {interval(ev.overall, u)}** ({over(ev)})"
    if not math.isnan(ev.bootstrap[0]):
        text += (f"; two-level bootstrap (seed pairs, then images; B = {BOOTSTRAP_B}, RNG seed {BOOTSTRAP_SEED}) "
                 f"[{num(ev.bootstrap[0])}, {num(ev.bootstrap[1])}]")
    return text + "."


def weighting(ev: Evidence) -> str:
    degs = len(ev.by_degradation)
    return (f"Means are image-weighted: every one of the {ev.images} test images x {degs} degradations counts once "
            f"(a set of 100 images weighs 20 times a set of 5); per set, over its images and degradations; per "
            f"degradation, over the images of every set.")


def columns_line(ev: Evidence) -> str:
    n = len(ev.by_column)
    if ev.overall is None or math.isnan(ev.overall.low):
        return f"No per-column intervals either ({n} columns, one seed on a side)."
    return (f"Per column (one set x degradation, its images weighted equally): {ev.above} of {n} columns have a 95% "
            f"interval above zero, {ev.below} below zero; after a Holm correction over the {n} columns, "
            f"{ev.holm_above} above and {ev.holm_below} below.")


def paper_line(pe: PaperEffect | None, ev: Evidence) -> str:
    if pe is None:
        return ""
    u = unit_of(ev.metric)
    return (f"Beside the paper, computed the same way (the {pe.columns} columns both have, each column weighted "
            f"equally as the paper's tables average): {num(pe.ours)}{u} here vs {num(pe.paper)}{u} in the paper; "
            f"median over the columns of ours / paper: {num(pe.median_ratio, 2, signed=False)}.")


def secondary_line(ev: Evidence) -> str:
    pr = ev.secondary
    if pr is None or not pr.items:
        return "No per-image scores in the results files: no per-image test."
    return (f"Secondary, per image (conditions on these {ev.seeds[0] + ev.seeds[1]} trained models: it says these "
            f"models differ on these images, not that another training run would): {pr.improved} of {pr.items} "
            f"image x degradation pairs improve, {pr.images_improved} of {pr.images} images on average over the "
            f"degradations; Wilcoxon signed-rank p = {pval(pr.wilcoxon_p)}, paired t p = {pval(pr.t_p)} (one value "
            f"per image, each averaged over the seeds).")


def breakdown_table(ev: Evidence) -> str:
    """Per degradation and per set: gain, 95% interval and p."""
    u = unit_of(ev.metric).strip() or "value"
    lines = [f"| over | gain ({u}) | 95% CI | p |", "|---|---:|---|---:|"]
    for label, ivs in (("degradation", ev.by_degradation), ("set", ev.by_set)):
        for k, iv in ivs.items():
            ci = "-" if math.isnan(iv.low) else f"[{num(iv.low)}, {num(iv.high)}]"
            lines.append(f"| {label} {k} | {num(iv.mean)} | {ci} | {pval(iv.p)} |")
    return "\n".join(lines)


def column_table(ev: Evidence) -> str:
    """Sets x degradations: each column's gain and 95% interval; † where it survives Holm over the columns."""
    sets = list(dict.fromkeys(s for s, _ in ev.by_column))
    degs = list(dict.fromkeys(d for _, d in ev.by_column))
    lines = ["| set | " + " | ".join(degs) + " |", "|---|" + "---:|" * len(degs)]
    for s in sets:
        cells = []
        for d in degs:
            iv = ev.by_column.get((s, d))
            if iv is None:
                cells.append("-")
                continue
            c = num(iv.mean, 2) + ("" if math.isnan(iv.low) else f" [{num(iv.low, 2)}, {num(iv.high, 2)}]")
            cells.append(c + (" †" if ev.holm.get((s, d)) else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n† the interval excludes zero after Holm's correction over the columns."


def evidence_section(name: str, ev: Evidence, paper: PaperEffect | None = None) -> str:
    """A comparison in report.md: the seed-level headline, its breakdown, the columns, the paper, per image."""
    parts = [headline(name, ev) + " " + weighting(ev)]
    if ev.per_pair:
        parts.append("Each seed pair's gain: " + ", ".join(num(g) for g in ev.per_pair) + ".")
    parts += [breakdown_table(ev), columns_line(ev), column_table(ev)]
    if paper is not None:
        parts.append(paper_line(paper, ev))
    parts.append(secondary_line(ev))
    return "\n\n".join(parts)


def evidence_row(name: str, ev: Evidence, paper: PaperEffect | None = None) -> dict:
    """One line of comparison*.csv."""
    pr = ev.secondary
    iv = ev.overall
    return {"comparison": name, "seeds": f"{ev.seeds[0]} vs {ev.seeds[1]}", "interval": iv.kind or "none",
            "replications": iv.n, "gain": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "p": iv.p,
            "bootstrap_low": ev.bootstrap[0], "bootstrap_high": ev.bootstrap[1],
            "per_pair": " ".join(f"{g:.6g}" for g in ev.per_pair), "weighting": "image",
            "columns": len(ev.by_column), "columns_above": ev.above, "columns_below": ev.below,
            "holm_above": ev.holm_above, "holm_below": ev.holm_below, "column_mean": ev.column_mean,
            "paper_columns": paper.columns if paper else "", "paper_column_mean": paper.paper if paper else math.nan,
            "ours_on_paper_columns": paper.ours if paper else math.nan,
            "median_ratio_to_paper": paper.median_ratio if paper else math.nan,
            "items": pr.items if pr else 0, "improved": pr.improved if pr else 0, "worse": pr.worse if pr else 0,
            "mean_diff": pr.mean_diff if pr else math.nan, "images": pr.images if pr else 0,
            "images_improved": pr.images_improved if pr else 0,
            "wilcoxon_p": pr.wilcoxon_p if pr else math.nan, "t_p": pr.t_p if pr else math.nan}


def column_rows(name: str, ev: Evidence) -> list[dict]:
    """Lines of comparison_columns*.csv: one per set x degradation."""
    return [{"comparison": name, "set": s, "degradation": d, "gain": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
             "p": iv.p, "holm": int(bool(ev.holm.get((s, d))))} for (s, d), iv in ev.by_column.items()]


# --- the shrinkage control -----------------------------------------------------------------------------------

def control_paragraph(drop_name: str, vs_base: Evidence, vs_controls: dict[str, Evidence],
                      below_bicubic: dict) -> str:
    """Where dropout does more than shrink toward interpolation, from the numbers: dropout's gain over the
    baseline and over each blend (seed-level intervals), and how the gain over the baseline tracks how far the
    baseline sits below bicubic (`below_bicubic`: {(set, degradation): baseline - bicubic})."""
    u = unit_of(vs_base.metric)
    out = []
    cols = [c for c in vs_base.by_column if c in below_bicubic and not math.isnan(below_bicubic[c])]
    if len(cols) >= 3:
        g = np.array([vs_base.by_column[c].mean for c in cols])
        b = np.array([below_bicubic[c] for c in cols])
        r = float(np.corrcoef(g, b)[0, 1]) if g.std() > 0 and b.std() > 0 else math.nan
        under = [c for c in cols if below_bicubic[c] < 0]
        text = (f"Across the {len(cols)} columns the gain over p=0 correlates with (p=0 - bicubic) at r = "
                f"{num(r, 2)}")
        if under and len(under) < len(cols):
            gu = np.mean([vs_base.by_column[c].mean for c in under])
            go = np.mean([vs_base.by_column[c].mean for c in cols if c not in under])
            text += (f"; mean gain {num(gu)}{u} over the {len(under)} columns where p=0 is below bicubic, "
                     f"{num(go)}{u} over the {len(cols) - len(under)} where it is above")
        out.append(text + ".")
    for label, ev in vs_controls.items():
        where = direction(ev.overall)
        verdict = {"above zero": "dropout does more than this shrinkage toward bicubic",
                   "below zero": "this shrinkage toward bicubic alone beats dropout",
                   "across zero": "dropout cannot be told from this shrinkage toward bicubic",
                   "unmeasured": "no seed-level interval (one seed)"}[where]
        degs_above = [d for d, iv in ev.by_degradation.items() if direction(iv) == "above zero"]
        degs_below = [d for d, iv in ev.by_degradation.items() if direction(iv) == "below zero"]
        text = (f"Against the {label}: {drop_name} gains {interval(ev.overall, u)} overall ({over(ev)}), so "
                f"overall {verdict}; {ev.above} of {len(ev.by_column)} columns above zero, {ev.below} below "
                f"({ev.holm_above} and {ev.holm_below} after Holm)")
        text += (f"; degradations with an interval above zero: {', '.join(degs_above) or 'none'}; below zero: "
                 f"{', '.join(degs_below) or 'none'}.")
        out.append(text)
    if vs_controls:
        base_iv = vs_base.overall
        if direction(base_iv) == "above zero":  # a share of a gain that may be zero says nothing
            shares = {label: 1 - ev.overall.mean / base_iv.mean for label, ev in vs_controls.items()}
            out.append("Share of dropout's overall gain over p=0 that the blend alone reaches (1 - gain over "
                       "blend / gain over p=0): " + ", ".join(f"{label} {num(s * 100, 0, signed=False)} %"
                                                          for label, s in shares.items()) + ".")
    return " ".join(out)
