"""The paper's figures, drawn so that they do not exaggerate: dropout gains (Fig. 4) as differences to the
baseline on an axis that includes zero, with 95% seed-level intervals as error bars (none with one seed); training curves (Fig. C.1) naming their validation
set; the gain of each dropout setting per test column (with the paper's where the protocol matches); the visual
comparison (Fig. 5)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from src.reports.collect import (METRIC_LABEL, POSITION_LABEL, POSITION_ORDER, Setting, curve_key, protocol_metric,
                                 read_curve, sort_key)
from src.utils import atomic_write_bytes

# The smallest half-range of a gain axis (dB for PSNR): a 0.004 dB difference must look like nothing.
MIN_GAIN_RANGE = {"psnr": 0.1, "psnr_rgb": 0.1, "ssim": 0.002, "ssim_rgb": 0.002}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _plain(ax) -> None:
    """Tick labels as the values themselves (no `+2.64e1` offset above the axis)."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _gain_axis(ax, values, errors, metric: str) -> None:
    """A y-range that includes zero and at least +-MIN_GAIN_RANGE, so small gains look small."""
    v = np.asarray(values, dtype=float)
    e = np.nan_to_num(np.asarray(errors, dtype=float))
    lo = np.nanmin(np.concatenate([v - e, [0.0]])) if v.size else 0.0
    hi = np.nanmax(np.concatenate([v + e, [0.0]])) if v.size else 0.0
    r = MIN_GAIN_RANGE.get(metric, 0.1)
    pad = 0.1 * max(hi - lo, r)
    ax.set_ylim(min(lo - pad, -r), max(hi + pad, r))
    ax.axhline(0, color="k", lw=0.8)
    _plain(ax)


def gain_ci(base: Setting, variant: Setting, s: str, d: str, metric: str, protocol: str) -> tuple[float, float, float]:
    """(gain, error below, error above) of `variant` over `base` in one column: the seed-level gain and its 95%
    interval, as `stats.seed_difference` gives them (over the seed pairs when the seeds pair, else the difference
    of the seed means with Welch's interval); NaN errors with one seed."""
    from src.reports.stats import seed_difference
    from src.reports.tables import per_seed

    iv = seed_difference(per_seed(base, s, d, metric, protocol), per_seed(variant, s, d, metric, protocol))
    gain = iv.mean
    if math.isnan(gain):   # no seed pair and one seed on a side: the difference of the seed means, no error bar
        gain = variant.value(s, d, metric, protocol) - base.value(s, d, metric, protocol)
    return gain, gain - iv.low, iv.high - gain


def _ci_errors(lows, highs):
    """A (2, n) yerr of asymmetric intervals, or None (no bars at all) when no interval was measured. A setting
    with one seed keeps NaN, which matplotlib leaves undrawn: a zero-height cap would read as a measured, exact
    gain beside its neighbours' real intervals."""
    if all(math.isnan(x) for x in lows):
        return None
    return np.array([lows, highs], dtype=float)


CI_NOTE = "error bars: 95% CI over seeds"


def _ci_title(gains, errors) -> str:
    """The legend's title: what the error bars are, and that a drawn bar without one (NaN error) has a single
    seed."""
    unmeasured = [math.isnan(e) for g, e in zip(gains, errors) if not math.isnan(g)]
    if all(unmeasured):
        return "one seed: no error bars"
    return CI_NOTE + ("\n(none drawn: one seed)" if any(unmeasured) else "")


def axis_label(metric: str, run) -> str:
    """`PSNR-RGB (dB), 4 px border cropped`: the metric and the border the evaluation crops (its SR factor)."""
    cell = next((c for res in run.results.values() for degs in res.values() for c in degs.values()
                 if isinstance(c, dict) and "scale" in c), {})
    crop = f", {cell['scale']} px border cropped" if "scale" in cell else ""
    return f"{_unit(metric)}{crop}"


def _unit(metric: str) -> str:
    return METRIC_LABEL.get(metric, metric)


def fig_dropout_bars(settings: list[Setting], group: str, s: str, d: str, metric: str, path: Path,
                     protocol: str = "literature", base: Setting | None = None) -> Path | None:
    """Fig. 4: gain over the baseline per position x probability, one panel per dropout dimension sharing one
    zero-based axis; error bars the 95% seed-level interval of each gain. `base`: the baseline (default the
    group's first); only settings of its experiment are drawn."""
    m = protocol_metric(protocol, metric)
    rs = [r for r in settings if r.group == group]
    base = [base] if base is not None else [r for r in rs if r.baseline][:1]
    drop = [r for r in rs if r.dropout and base and r.family == base[0].family
            and not math.isnan(r.value(s, d, m, protocol))]
    if len({(r.position, r.dim, r.p) for r in drop}) < 2 or not base:  # one bar compares nothing
        return None
    b = base[0].value(s, d, m, protocol)
    plt = _plt()
    dims = [x for x in ("channel", "element") if any(r.dim == x for r in drop)]
    positions = [p for p in POSITION_ORDER if any(r.position == p for r in drop)]
    probs = sorted({r.p for r in drop})
    panel_w = max(4.5, 1.1 * len(positions) * len(probs) ** 0.5)
    fig, axes = plt.subplots(1, len(dims), figsize=(panel_w * len(dims), 3.6), squeeze=False, sharey=True)
    width = 0.8 / len(probs)
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(probs)))
    all_v, all_e = [], []
    for ax, dim in zip(axes[0], dims):
        for k, p in enumerate(probs):
            ys, lo, hi = [], [], []
            for pos in positions:
                match = [r for r in drop if r.dim == dim and r.position == pos and r.p == p]
                g, el, eh = gain_ci(base[0], match[0], s, d, m, protocol) if match else (np.nan,) * 3
                ys.append(g)
                lo.append(el)
                hi.append(eh)
            all_v += ys
            all_e += [max(a, b) for a, b in zip(lo, hi)]
            yerr = _ci_errors(lo, hi)
            ax.bar(np.arange(len(positions)) + (k - (len(probs) - 1) / 2) * width, ys, width, label=f"p={p:g}",
                   color=colors[k], yerr=yerr, capsize=2)
        ax.set_xticks(np.arange(len(positions)), [POSITION_LABEL.get(p, p) for p in positions], fontsize=9)
        ax.set_title(f"({'ab'[dims.index(dim)]}) {dim}-wise dropout", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    _gain_axis(axes[0][0], [v for v in all_v if not math.isnan(v)],
               [e for v, e in zip(all_v, all_e) if not math.isnan(v)], m)
    axes[0][0].set_ylabel(f"gain over p=0 on {s} ({d})\n{axis_label(m, base[0].runs[0])}\n{protocol} protocol",
                          fontsize=8)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
                       title=_ci_title(all_v, all_e), title_fontsize=7)
    fig.suptitle(f"{group}: gain of each dropout method and probability over p=0 (p=0 scores {b:.2f})",
                 fontsize=10)
    return _save(fig, path)


def fig_gains(settings: list[Setting], group: str, cols, metric: str, path: Path, protocol: str = "literature",
              paper: dict | None = None, base: Setting | None = None) -> Path | None:
    """The Improvement rows of Table 1 as bars per test column, error bars the 95% seed-level interval of each
    gain, the paper's published improvement as markers when given ({(set, deg): value})."""
    m = protocol_metric(protocol, metric)
    rs = sorted((r for r in settings if r.group == group), key=sort_key)
    base = base if base is not None else (rs[0] if rs and rs[0].baseline else None)
    variants = [r for r in rs if r.dropout and base is not None and r.family == base.family]
    if not variants:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.36 * len(cols) * len(variants) + 2), 4.2))
    width = 0.8 / len(variants)
    x = np.arange(len(cols))
    vals, errs = [], []
    for k, v in enumerate(variants):
        g = [gain_ci(base, v, s, d, m, protocol) for s, d in cols]
        ys = [x[0] for x in g]
        yerr = _ci_errors([x[1] for x in g], [x[2] for x in g])
        vals += ys
        errs += [max(x[1], x[2]) for x in g]
        ax.bar(x + (k - (len(variants) - 1) / 2) * width, ys, width, yerr=yerr, capsize=2,
               label=f"{v.label} - p=0")
    title = _ci_title(vals, errs)   # the dropout bars only, before the paper's markers join `vals`
    if paper:
        ys = [paper.get(c, np.nan) for c in cols]
        ax.plot(x, ys, "k_", ms=12, mew=2, label="paper (full size)")
        vals += [y for y in ys if not math.isnan(y)]
    ax.set_xticks(x, [f"{s} {d}" for s, d in cols], fontsize=8, rotation=90)
    ok = [(v, e) for v, e in zip(vals, errs + [0] * (len(vals) - len(errs))) if not math.isnan(v)]
    _gain_axis(ax, [v for v, _ in ok], [e for _, e in ok], m)
    ax.set_ylabel(f"gain over p=0\n{axis_label(m, base.runs[0])}", fontsize=9)
    ax.set_xlabel("test set and degradation", fontsize=9)
    ax.set_title(f"{group}: gain of dropout per test column, {protocol} protocol", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title=title, title_fontsize=7)
    return _save(fig, path)


def fig_control(comps, reference, cols, metric: str, path: Path, protocol: str = "literature") -> Path | None:
    """Per test column, dropout's gain over p=0 and over each blend toward bicubic (95% seed-level intervals)
    against how far p=0 sits from bicubic there: shrinkage alone would gain most where p=0 is below bicubic.
    `comps`: comparisons (src.reports.build.Comparison) of one dropout setting; None without a control."""
    variant = next((c.variant for c in comps if c.base.control), None)
    comps = [c for c in comps if c.variant is variant]
    base = next((c.base for c in comps if c.base.baseline), None)
    if base is None or reference is None or variant is None:
        return None
    keep = [(s, d) for s, d in cols if not math.isnan(reference.value(s, d, metric, protocol))]
    x = np.array([base.value(s, d, metric, protocol) - reference.value(s, d, metric, protocol) for s, d in keep])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = "osD^v"
    for k, c in enumerate(c for c in comps if c.variant.dropout):
        ivs = [c.evidence.by_column.get(col) for col in keep]
        y = np.array([iv.mean if iv else np.nan for iv in ivs])
        lo = np.array([iv.mean - iv.low if iv else np.nan for iv in ivs])
        hi = np.array([iv.high - iv.mean if iv else np.nan for iv in ivs])
        other = c.base.control or "p=0"
        ax.errorbar(x, y, yerr=_ci_errors(lo, hi), fmt=markers[k % len(markers)], ms=4, capsize=2, lw=0.8,
                    label=f"over {other}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.5, ls=":")
    unit = axis_label(metric, base.runs[0])
    ax.set_xlabel(f"p=0 minus bicubic, {unit}\n(left of the dotted line: p=0 below bicubic)", fontsize=9)
    ax.set_ylabel(f"gain of {comps[0].variant.label.split(' [')[0]}\n{unit}", fontsize=9)
    ax.set_title(f"Dropout against shrinkage toward bicubic, per test column, {protocol} protocol", fontsize=10)
    ax.tick_params(labelsize=8)
    _plain(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=CI_NOTE, title_fontsize=7)
    return _save(fig, path)


def fig_curves(settings: list[Setting], group: str, path: Path, val_set: str = "") -> Path | None:
    """Fig. C.1: validation PSNR against training step for every setting of a group (mean over seeds, the band
    spans the seeds)."""
    curves = []
    for st in sorted((r for r in settings if r.group == group), key=sort_key):
        key = curve_key(st.runs[0].dir)
        runs = [read_curve(r.dir, key) for r in st.runs] if key else []
        runs = [c for c in runs if c[0]]
        if runs:
            steps = sorted(set.intersection(*(set(c[0]) for c in runs)))
            ys = np.array([[dict(zip(*c))[s] for s in steps] for c in runs])
            curves.append((st, key, steps, ys))
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for st, key, steps, ys in curves:
        line, = ax.plot(steps, ys.mean(0), lw=1.4, ls="--" if st.baseline else "-", label=st.label)
        if len(ys) > 1:
            ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)
    key = curves[0][1]
    where = val_set or (key.split("/")[1] if key.count("/") >= 3 else "the validation set")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"validation PSNR (dB)\n{key}")
    _plain(ax)
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.set_title(f"Training curves of {group}: PSNR on {where}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="band: range over the seeds" if any(len(c[3]) > 1 for c in curves) else None,
              title_fontsize=7)
    return _save(fig, path)


def _texture_crop(hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the size x size window with the most gradient energy: a detailed region, picked without
    looking at any model output."""
    g = np.abs(np.diff(hr.mean(2), axis=0))[:, :-1] + np.abs(np.diff(hr.mean(2), axis=1))[:-1]
    ii = np.pad(g, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = g.shape
    s = min(size, h, w)
    win = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
    y, x = np.unravel_index(np.argmax(win), win.shape)
    return int(y), int(x)


def fig_visual(ckpt_without, ckpt_with, image, path: Path, degradations=("clean", "noise"), scale: int = 4,
               seed: int = 0, crop: int = 96, backbone=None, device="cpu") -> Path:
    """Fig. 5: rows = degradations; columns = HR (with crop box), LR, SR without / with dropout, HR crop.

    PSNR (Y, `scale` px border) in the titles is over the whole image, not the crop.
    """
    from src.data.imageio import read_image
    from src.data.testsets import degrade_test_image, modcrop
    from src.evaluation import super_resolve
    from src.metrics import psnr
    from src.models.loading import load_for_tool

    models = [load_for_tool(c, backbone, device).model for c in (ckpt_without, ckpt_with)]
    hr = modcrop(read_image(image), scale)
    y, x = _texture_crop(hr, crop)
    c = min(crop, *hr.shape[:2])
    plt = _plt()
    aspect = hr.shape[1] / hr.shape[0]
    fig, axes = plt.subplots(len(degradations), 5, figsize=(10 + 2.6 * aspect, 2.8 * len(degradations)),
                             squeeze=False, gridspec_kw={"width_ratios": [aspect, 1, 1, 1, 1]})
    for row, d in zip(axes, degradations):
        lr = degrade_test_image(hr, d, scale, seed)
        srs = [super_resolve(m, lr, scale, device) for m in models]
        lr_up = np.repeat(np.repeat(lr, scale, 0), scale, 1)  # nearest: shows the LR pixels as they are
        panels = [(hr, "HR"), (lr_up[y:y + c, x:x + c], f"LR ({d})")]
        panels += [(sr[y:y + c, x:x + c], f"{name}\n{psnr(sr, hr, scale):.2f} dB")
                   for sr, name in zip(srs, ("w/o dropout", "w/ dropout"))]
        panels.append((hr[y:y + c, x:x + c], "HR crop"))
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        row[0].add_patch(plt.Rectangle((x, y), c, c, fill=False, ec="red", lw=1.5))
    fig.suptitle(f"{Path(image).name}: PSNR-Y over the whole image", fontsize=10)
    return _save(fig, path)

