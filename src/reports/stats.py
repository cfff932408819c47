"""Is a gain larger than the noise? Paired per-image statistics and the seeds' spread, computed from results files.

Two settings (a baseline and a variant) are compared on the same test images: the per-image scores
(`per_image` of the results files), averaged over each setting's seeds, give one difference per
image x degradation. The 8 degradations of one image are not independent observations, so the test statistics
use one value per image (its mean difference over the degradations); the counts use every image x degradation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from src.reports.collect import Setting


@dataclass
class Paired:
    """Per-image paired comparison of `variant` against `base` on one protocol and metric."""
    protocol: str
    metric: str
    items: int = 0                  # image x degradation pairs scored by every run of both settings
    improved: int = 0               # of those, how many are higher with the variant
    worse: int = 0
    mean_diff: float = math.nan     # mean over the items (dB for PSNR)
    images: int = 0                 # distinct test images
    images_improved: int = 0        # images whose mean over the degradations improves
    wilcoxon_p: float = math.nan    # two-sided Wilcoxon signed-rank on the per-image means
    t_p: float = math.nan           # two-sided paired t-test on the per-image means
    per_set: dict = field(default_factory=dict)    # {set: (improved, items)}


def per_image_diffs(base: Setting, variant: Setting, cols, metric: str, protocol: str
                    ) -> dict[tuple[str, str, str], float]:
    """{(set, degradation, image): variant minus base}, each side averaged over its seeds; only images that
    every run of both settings scored."""
    out = {}
    for s, d in cols:
        tables = []
        for st in (base, variant):
            per_run = [r.cell(protocol, s, d).get("per_image") or {} for r in st.runs]
            tables.append(per_run)
        common = set.intersection(*(set(t) for side in tables for t in side)) if all(
            t for side in tables for t in side) else set()
        for img in sorted(common):
            means = [np.mean([float(t[img][metric]) for t in side]) for side in tables]
            out[(s, d, img)] = float(means[1] - means[0])
    return out


def paired_tests(per_image: np.ndarray) -> tuple[float, float]:
    """(Wilcoxon signed-rank p, paired t-test p), both two-sided, of per-image differences; NaN when fewer
    than 2 differences or all are zero."""
    from scipy import stats

    x = np.asarray(per_image, dtype=float)
    if x.size < 2 or not np.any(x != 0):
        return math.nan, math.nan
    w = float(stats.wilcoxon(x).pvalue)
    t = float(stats.ttest_1samp(x, 0.0).pvalue) if np.std(x) > 0 else 0.0
    return w, t


def paired(base: Setting, variant: Setting, cols, metric: str, protocol: str) -> Paired:
    diffs = per_image_diffs(base, variant, cols, metric, protocol)
    out = Paired(protocol, metric)
    if not diffs:
        return out
    values = np.array(list(diffs.values()))
    out.items, out.improved, out.worse = values.size, int((values > 0).sum()), int((values < 0).sum())
    out.mean_diff = float(values.mean())
    by_image, by_set = {}, {}
    for (s, d, img), v in diffs.items():
        by_image.setdefault((s, img), []).append(v)
        imp, n = by_set.get(s, (0, 0))
        by_set[s] = (imp + int(v > 0), n + 1)
    image_means = np.array([np.mean(v) for v in by_image.values()])
    out.images, out.images_improved = image_means.size, int((image_means > 0).sum())
    out.wilcoxon_p, out.t_p = paired_tests(image_means)
    out.per_set = by_set
    return out


@dataclass
class Spread:
    """The gain against the seeds' own variation, over the columns of a table."""
    protocol: str
    metric: str
    seeds: tuple[int, int]          # seeds of (base, variant)
    cells: int = 0                  # columns with a value in both settings
    beyond: int = 0                 # columns whose |gain| exceeds the larger of the two seed stds
    gain: float = math.nan          # mean gain over the columns
    spread: float = math.nan        # larger of the two settings' seed std of their mean over the columns
    seeds_improved: int | None = None   # seeds (paired by seed number) whose mean over the columns improves

    @property
    def measured(self) -> bool:
        return min(self.seeds) >= 2

    def verdict(self) -> str:
        if not self.measured:
            return (f"one seed on at least one side ({self.seeds[0]} vs {self.seeds[1]}): the seed spread is not "
                    "measured, so the gain cannot be told from seed noise")
        word = "exceeds" if abs(self.gain) > self.spread else "is swallowed by"
        text = (f"the mean gain over the {self.cells} columns, {self.gain:+.3f}, {word} the seeds' spread "
                f"(std {self.spread:.3f}); the gain exceeds the spread in {self.beyond} of {self.cells} columns")
        if self.seeds_improved is not None:
            text += f"; {self.seeds_improved} of {self.seeds[0]} paired seeds improve"
        return text


def spread(base: Setting, variant: Setting, cols, metric: str, protocol: str) -> Spread:
    out = Spread(protocol, metric, (base.n, variant.n))
    gains = []
    for s, d in cols:
        a, b = base.value(s, d, metric, protocol), variant.value(s, d, metric, protocol)
        if math.isnan(a) or math.isnan(b):
            continue
        gains.append(b - a)
        sd = max(base.std(s, d, metric, protocol), variant.std(s, d, metric, protocol))
        out.beyond += int(not math.isnan(sd) and abs(b - a) > sd)
    out.cells = len(gains)
    if not gains:
        return out
    out.gain = float(np.mean(gains))

    def per_seed(st: Setting) -> np.ndarray:  # each seed's mean over the columns both settings have
        keep = [(s, d) for s, d in cols if not math.isnan(base.value(s, d, metric, protocol))
                and not math.isnan(variant.value(s, d, metric, protocol))]
        return np.array([np.nanmean([r.value(s, d, metric, protocol) for s, d in keep]) for r in st.runs])

    a, b = per_seed(base), per_seed(variant)
    if out.measured:
        out.spread = float(max(a.std(ddof=1), b.std(ddof=1)))
        if sorted(map(str, base.seeds)) == sorted(map(str, variant.seeds)):
            ia, ib = np.argsort([str(x) for x in base.seeds]), np.argsort([str(x) for x in variant.seeds])
            out.seeds_improved = int((b[ib] - a[ia] > 0).sum())
    return out


# --- seed-level inference ------------------------------------------------------------------------------------
# "Dropout helps" is a claim about training runs, so its interval comes from seeds: one number per seed (pair),
# never one per image of fixed models (images of the same models are not replications of the training).

@dataclass(frozen=True)
class Interval:
    """An effect with its confidence interval and two-sided p, and what the interval is over."""
    mean: float
    low: float
    high: float
    p: float
    n: int            # replications: seed pairs (paired) or seeds of the smaller side (unpaired)
    kind: str         # "paired t", "Welch t", or "" when there is too little to say

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def t_interval(diffs, level: float = 0.95) -> Interval:
    """Mean of per-seed-pair differences with a Student t interval (df = pairs - 1) and the one-sample t-test p.

    Example:
        >>> iv = t_interval([0.1, 0.2, 0.3])
        >>> round(iv.mean, 3), round(iv.low, 3), round(iv.high, 3), iv.n
        (0.2, -0.048, 0.448, 3)
    """
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n < 2:
        m = float(x.mean()) if n else math.nan
        return Interval(m, math.nan, math.nan, math.nan, n, "")
    m, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return Interval(m, m, m, 0.0 if m != 0 else 1.0, n, "paired t")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(m / se), n - 1))
    return Interval(m, m - half, m + half, p, n, "paired t")


def welch_interval(base, variant, level: float = 0.95) -> Interval:
    """Difference of means (variant - base) of two independent sets of per-seed values, with Welch's interval
    (Welch-Satterthwaite df) and p: for settings whose seeds are not paired."""
    from scipy import stats

    a, b = (np.asarray(v, dtype=float) for v in (base, variant))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    n = int(min(a.size, b.size))
    m = float(b.mean() - a.mean()) if a.size and b.size else math.nan
    if n < 2:
        return Interval(m, math.nan, math.nan, math.nan, n, "")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(m, m, m, 0.0 if m != 0 else 1.0, n, "Welch t")
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(m / se), df))
    return Interval(m, m - half, m + half, p, n, "Welch t")
