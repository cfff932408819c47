"""Is a gain larger than the noise? Seed-level intervals first, per-image tests second, from results files.

The claim "dropout helps" is about training runs, so the headline (`evidence`) has one number per seed pair: the
image-weighted mean gain of that pair's two models (every image x degradation counts once), with a t interval
over the pairs and a two-level bootstrap (seed pairs, then images). `pairing` decides, for every comparison of
the reports and the scorecard, which seeds pair: those both settings ran, when at least two do (seeds only one side
ran are left out); settings with fewer common seeds are compared with Welch's interval over their per-seed means.

The per-image statistics (`paired`) hold the trained models fixed: the per-image scores, averaged over each
setting's seeds, give one difference per image x degradation; the 8 degradations of one image are not
independent, so the tests use one value per image (its mean over the degradations). They say whether these
models differ on these images, not whether another training run would.
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


def holm(pvalues, alpha: float = 0.05) -> list[bool]:
    """Which of `pvalues` Holm's step-down procedure rejects at family-wise level `alpha` (NaN never does)."""
    p = np.asarray(pvalues, dtype=float)
    order = [i for i in np.argsort(p) if not math.isnan(p[i])]
    m, out = len(order), [False] * len(p)
    for k, i in enumerate(order):
        if p[i] > alpha / (m - k):
            break
        out[i] = True
    return out


def pairing(base_seeds, variant_seeds) -> list | None:
    """The seeds a comparison pairs on, or None when it compares the two sides as independent samples (Welch).

    Two runs of one seed saw the same initialisation and batches, so their difference cancels what the seed
    adds: a comparison pairs on the seeds both sides ran whenever at least two pair, leaving out the seeds only
    one side ran. With fewer pairs, Welch's interval over each side's seeds if each side has two; with less
    still there is no interval, and the (at most one) common seed is returned.

    Example:
        >>> pairing([0, 1, 2], [0, 1]), pairing([0, 1], [2, 3]), pairing([0, 1, 2], [0])
        ([0, 1], None, [0])
    """
    common = sorted(set(base_seeds) & set(variant_seeds), key=str)
    if len(common) >= 2 or len(set(base_seeds)) < 2 or len(set(variant_seeds)) < 2:
        return common
    return None


def seed_difference(base: dict, variant: dict, level: float = 0.95) -> Interval:
    """variant - base from per-seed values ({seed: value}), paired or not as `pairing` decides: a paired t
    interval over the common seeds, or Welch's over every seed of each side. NaN where nothing can be said."""
    seeds = pairing(base, variant)
    if seeds is None:
        return welch_interval(list(base.values()), list(variant.values()), level)
    return t_interval([variant[s] - base[s] for s in seeds], level)


@dataclass
class SetScores:
    """Per-image scores of one test set for two settings: arrays [run, degradation, image] (NaN-free: the images
    every run of both settings scored under every degradation)."""
    degradations: list[str]
    images: list[str]
    base: np.ndarray
    variant: np.ndarray


def set_scores(base: Setting, variant: Setting, cols, metric: str, protocol: str) -> dict[str, SetScores]:
    """{set: SetScores} over `cols`; runs ordered by seed, so that index k of both sides is seed pair k when the
    two settings ran the same seeds."""
    out = {}
    for s in dict.fromkeys(c[0] for c in cols):
        degs = [d for c_s, d in cols if c_s == s]
        tables = {id(r): {d: r.cell(protocol, s, d).get("per_image") or {} for d in degs}
                  for st in (base, variant) for r in st.runs}
        common = set.intersection(*(set(t[d]) for t in tables.values() for d in degs))
        images = sorted(common)
        if not images:
            continue

        def stack(st: Setting) -> np.ndarray:
            runs = sorted(st.runs, key=lambda r: str(r.seed))
            return np.array([[[float(tables[id(r)][d][i][metric]) for i in images] for d in degs] for r in runs])

        out[s] = SetScores(degs, images, stack(base), stack(variant))
    return out


def _select(scores: dict[str, SetScores], sets=None, degs=None):
    """[(set weight, base[run, image], variant[run, image])]: per image the mean over the selected degradations;
    a set's weight is its images x selected degradations, so the overall mean weights every image x degradation
    equally (image-weighted, not column-weighted)."""
    out = []
    for s, sc in scores.items():
        if sets is not None and s not in sets:
            continue
        js = [j for j, d in enumerate(sc.degradations) if degs is None or d in degs]
        if js:
            out.append((len(sc.images) * len(js), sc.base[:, js].mean(1), sc.variant[:, js].mean(1)))
    return out


def _run_means(parts) -> tuple[np.ndarray, np.ndarray]:
    """Each run's image-weighted mean over the selected cells: (base per run, variant per run)."""
    w = np.array([p[0] for p in parts], dtype=float)
    b = sum(wi * p[1].mean(1) for wi, p in zip(w, parts)) / w.sum()
    v = sum(wi * p[2].mean(1) for wi, p in zip(w, parts)) / w.sum()
    return b, v


def seed_level(scores: dict[str, SetScores], paired: bool, sets=None, degs=None) -> tuple[Interval, list[float]]:
    """(interval, per-replication gains) of the image-weighted mean gain over the selected cells: per seed pair
    the variant's minus the base's mean (paired t over pairs), or each side's per-seed means (Welch)."""
    parts = _select(scores, sets, degs)
    if not parts:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, ""), []
    b, v = _run_means(parts)
    if paired:
        gains = list(v - b)
        return t_interval(gains), [float(g) for g in gains]
    return welch_interval(b, v), []


BOOTSTRAP_B = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(scores: dict[str, SetScores], paired: bool, sets=None, degs=None, b: int = BOOTSTRAP_B,
                 seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Two-level percentile bootstrap of the image-weighted mean gain: each draw resamples the seed pairs (or,
    unpaired, each side's seeds), then each set's images; the drawn images are shared by the drawn seeds,
    since every model was scored on the same test images. (NaN, NaN) with fewer than two seed pairs."""
    parts = _select(scores, sets, degs)
    if not parts:
        return math.nan, math.nan
    nb, nv = parts[0][1].shape[0], parts[0][2].shape[0]
    if min(nb, nv) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:   # (b, n): how often each index is drawn
        idx = rng.integers(0, n, size=(b, n))
        return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)

    cb = counts(nb)
    cv = cb if paired else counts(nv)
    total, weight = np.zeros(b), 0.0
    for w, base, var in parts:
        ci = counts(base.shape[1])
        n_img = base.shape[1]
        # mean over drawn runs and drawn images = (run counts) @ scores @ (image counts) / (runs * images)
        mb = ((cb @ base) * ci).sum(1) / (nb * n_img)
        mv = ((cv @ var) * ci).sum(1) / (nv * n_img)
        total += w * (mv - mb)
        weight += w
    stats_ = total / weight
    lo, hi = np.quantile(stats_, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


@dataclass
class Evidence:
    """A comparison at the level of training runs: the headline of every comparison in a report."""
    protocol: str
    metric: str
    paired: bool
    seeds: tuple[int, int]                  # runs of (base, variant) compared
    left_out: int = 0                       # runs without a seed pair, left out of a paired comparison
    images: int = 0                         # test images (per degradation)
    overall: Interval = None                # image-weighted mean gain over every image x degradation
    per_pair: list = field(default_factory=list)    # each seed pair's overall gain
    bootstrap: tuple = (math.nan, math.nan)
    by_set: dict = field(default_factory=dict)      # {set: Interval} image-weighted over its degradations
    by_degradation: dict = field(default_factory=dict)  # {degradation: Interval} image-weighted over the sets
    by_column: dict = field(default_factory=dict)   # {(set, degradation): Interval}
    holm: dict = field(default_factory=dict)        # {(set, degradation): rejected by Holm over the columns}
    column_mean: float = math.nan           # unweighted mean over the columns (how the paper's rows average)
    secondary: Paired | None = None         # per-image tests that hold the trained models fixed

    @property
    def above(self) -> int:
        return sum(iv.low > 0 for iv in self.by_column.values() if not math.isnan(iv.low))

    @property
    def below(self) -> int:
        return sum(iv.high < 0 for iv in self.by_column.values() if not math.isnan(iv.high))

    @property
    def holm_above(self) -> int:
        return sum(self.holm.get(c, False) and iv.mean > 0 for c, iv in self.by_column.items())

    @property
    def holm_below(self) -> int:
        return sum(self.holm.get(c, False) and iv.mean < 0 for c, iv in self.by_column.items())


def evidence(base: Setting, variant: Setting, cols, metric: str, protocol: str,
             b: int = BOOTSTRAP_B) -> Evidence:
    """Seed-level inference of `variant` - `base` over the columns `cols` (see `Evidence`)."""
    seeds = pairing(base.seeds, variant.seeds)
    paired_seeds = bool(seeds)
    left_out = 0
    if paired_seeds:
        left_out = base.n + variant.n - 2 * len(seeds)
        base, variant = (Setting([r for r in st.runs if r.seed in seeds], st.tag) for st in (base, variant))
    out = Evidence(protocol, metric, paired_seeds, (base.n, variant.n), left_out=left_out)
    scores = set_scores(base, variant, cols, metric, protocol)
    out.overall, out.per_pair = seed_level(scores, paired_seeds)
    out.images = sum(len(sc.images) for sc in scores.values())
    if not scores:
        return out
    out.bootstrap = bootstrap_ci(scores, paired_seeds, b=b)
    out.by_set = {s: seed_level(scores, paired_seeds, sets={s})[0] for s in scores}
    degs = [d for d in dict.fromkeys(d for sc in scores.values() for d in sc.degradations)]
    out.by_degradation = {d: seed_level(scores, paired_seeds, degs={d})[0] for d in degs}
    out.by_column = {(s, d): seed_level(scores, paired_seeds, sets={s}, degs={d})[0]
                     for s, sc in scores.items() for d in sc.degradations}
    keys = list(out.by_column)
    out.holm = dict(zip(keys, holm([out.by_column[k].p for k in keys])))
    out.column_mean = float(np.mean([iv.mean for iv in out.by_column.values()]))
    out.secondary = paired(base, variant, cols, metric, protocol)
    return out


@dataclass(frozen=True)
class PaperEffect:
    """Our gain beside the paper's, over the same columns, both averaged the way the paper's tables are (one
    value per column, columns weighted equally)."""
    columns: int
    ours: float
    paper: float
    median_ratio: float     # median over the columns of ours / paper


def paper_effect(ours: dict, paper: dict) -> PaperEffect | None:
    """`ours` {(set, degradation): gain}, `paper` {(set, degradation): the paper's gain}; None without a shared
    column. Columns where the paper's gain is 0 have no ratio."""
    cols = [c for c in ours if c in paper and not math.isnan(ours[c]) and not math.isnan(paper[c])]
    if not cols:
        return None
    ratios = [ours[c] / paper[c] for c in cols if paper[c] != 0]
    return PaperEffect(len(cols), float(np.mean([ours[c] for c in cols])), float(np.mean([paper[c] for c in cols])),
                       float(np.median(ratios)) if ratios else math.nan)
