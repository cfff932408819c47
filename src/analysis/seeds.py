"""Interpretation statistics over several models per setting (e.g. p=0 and p=0.7, several seeds each).

`analyze_groups` runs the tools once on every model of every group (per-model files as `analyze` writes them,
labels `<group>/<model>`), then reduces each model's headline numbers (summary.json) to mean +- std per group:
- groups.csv: one row per (group, statistic): mean, std (sample, ddof=1; empty for one model), n, min, max and
  the per-model values;
- groups.json: the same, plus the per-model numbers, the options and the definition of every statistic;
- groups_stats.png: the main statistics per group, a marker at the mean with +- std bars, one dot per model;
- groups_ablation_curve.png: the cumulative ablation curve (Fig. 8), mean +- std band per group.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from src.analysis.common import pyplot, save_figure, write_csv
from src.analysis.tools import DEFINITIONS, analyze, model_label
from src.utils import atomic_write_text, portable_path

# Statistics shown in groups_stats.png and groups.md (all numeric ones are in groups.csv/json).
MAIN_STATS = ("ablation.baseline_psnr", "ablation.max_drop", "ablation.mean_drop", "ablation.psnr_half_ablated",
              "csm.saliency_cv", "csm.top_channel_share", "ddr.chi")
GROUP_DEFINITIONS = {
    "mean": "mean over the models of the group",
    "std": "sample standard deviation over the models of the group (ddof=1); null for a single model",
    "n": "number of models in the group",
}


def model_files(spec: str | Path | Sequence[str | Path], where: str = "") -> list[Path]:
    """The weights files `spec` names (anything `src.models.loading.weights_files` takes: a file, a run or
    published run folder, a folder of runs, a glob pattern, or a list of these), each once."""
    from src.models.loading import weights_files

    return [path for path, _ in weights_files(spec, where)]


def group_labels(groups: Mapping[str, Sequence[Path]]) -> dict[str, tuple[str, Path]]:
    """{`<group>/<model>`: (group, path)}, <model> being the run folder's (or file's) name, or the file's folder
    when files of one group share a name (seed0/model.pth, seed1/model.pth); any clash left gets `-2`, `-3`."""
    labels: dict[str, tuple[str, Path]] = {}
    for group, paths in groups.items():
        names = [model_label(p) for p in paths]
        if len(set(names)) < len(names):
            names = [Path(p).parent.name or n for p, n in zip(paths, names)]
        for p, name in zip(paths, names):
            base = f"{group}/{name}"
            label, k = base, 2
            while label in labels:
                label, k = f"{base}-{k}", k + 1
            labels[label] = (group, Path(p))
    return labels


def flatten(summary: Mapping, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of one model's summary as {`tool.key[.sub]`: value}; None (non-finite) stays NaN."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = math.nan if value is None else float(value)
    return out


def group_stats(per_model: Mapping[str, Mapping[str, float]], members: Mapping[str, Sequence[str]]
                ) -> dict[str, dict[str, dict]]:
    """{group: {statistic: {mean, std, n, min, max, values: {model: value}}}} over the finite values."""
    out: dict[str, dict[str, dict]] = {}
    for group, labels in members.items():
        names = sorted({k for lab in labels for k in per_model[lab]})
        out[group] = {}
        for name in names:
            values = {lab: per_model[lab].get(name, math.nan) for lab in labels}
            finite = np.array([v for v in values.values() if math.isfinite(v)], dtype=np.float64)
            n = len(finite)
            out[group][name] = {
                "mean": float(finite.mean()) if n else None,
                "std": float(finite.std(ddof=1)) if n > 1 else None,
                "n": n,
                "min": float(finite.min()) if n else None,
                "max": float(finite.max()) if n else None,
                "values": {lab: (v if math.isfinite(v) else None) for lab, v in values.items()},
            }
    return out


def _fmt(v) -> str | float:
    return "" if v is None else v


def write_group_files(out: Path, stats: dict, per_model: dict, labels: dict[str, tuple[str, Path]],
                      options: dict) -> None:
    rows = []
    for group, by_stat in stats.items():
        for name, s in by_stat.items():
            values = ";".join("" if v is None else f"{v:.6g}" for v in s["values"].values())
            rows.append([group, name, _fmt(s["mean"]), _fmt(s["std"]), s["n"], _fmt(s["min"]), _fmt(s["max"]),
                         values])
    write_csv(out / "groups.csv", ["group", "statistic", "mean", "std", "n", "min", "max", "values"], rows)
    # Checkpoints relative to `out` when inside it; elsewhere left out: these files are meant for committing, and
    # a path of the machine that ran the analysis means nothing on another.
    where = {lab: portable_path(p, out) for lab, (_, p) in labels.items()}
    write_csv(out / "groups_models.csv", ["group", "model", "checkpoint", "statistic", "value"],
              [[g, lab, where[lab] or "", name, v] for lab, (g, p) in labels.items()
               for name, v in sorted(per_model[lab].items())])
    doc = {"groups": {g: [lab for lab, (gg, _) in labels.items() if gg == g] for g in stats},
           "checkpoints": where,
           "stats": stats, "options": options,
           "definitions": {**DEFINITIONS, **GROUP_DEFINITIONS}}
    atomic_write_text(out / "groups.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "groups.md", groups_md(stats))


# How groups.md prints each of MAIN_STATS: its label and digits.
STAT_FORMAT = {"ablation.baseline_psnr": ("PSNR, every channel intact (dB)", 2),
               "ablation.max_drop": ("largest single-channel drop (dB)", 3),
               "ablation.mean_drop": ("mean single-channel drop (dB)", 4),
               "ablation.psnr_half_ablated": ("PSNR with half of the channels ablated (dB)", 2),
               "csm.saliency_cv": ("saliency spread over channels (std / mean)", 2),
               "csm.top_channel_share": ("share of saliency in the top channel", 3),
               "ddr.chi": ("DDR Calinski-Harabasz index", 2)}


def groups_md(stats: dict) -> str:
    """The main statistics (MAIN_STATS) per group as a Markdown table: mean +- sample std over the group's models, [min, max]
    when it has several, and the number of models in the header."""
    groups = list(stats)

    def cell(s, digits):
        if s is None or s["mean"] is None:
            return "-"
        text = f"{s['mean']:.{digits}f}"
        if s["n"] > 1:
            text += f" +- {s['std']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
        return text

    def count(g):
        return max((s["n"] for s in stats[g].values()), default=0)

    lines = ["<!-- written by src.analysis.seeds.groups_md from groups.csv; edit the code, not this text -->",
             "| statistic | " + " | ".join(f"{g} ({count(g)} models)" for g in groups) + " |",
             "|---|" + "---:|" * len(groups)]
    for name in MAIN_STATS:
        label, digits = STAT_FORMAT[name]
        if any(name in stats[g] for g in groups):
            lines.append(f"| {label} | " + " | ".join(cell(stats[g].get(name), digits) for g in groups) + " |")
    return "\n".join(lines) + "\n\nmean +- sample std [min, max] over the models of each group.\n"


def plot_group_stats(stats: dict, path, names: Sequence[str] = MAIN_STATS):
    """One panel per statistic: per group a marker at the mean, +- std error bar, one dot per model."""
    names = [n for n in names if any(n in by for by in stats.values())]
    if not names:
        return None
    plt = pyplot()
    groups = list(stats)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.5, 3.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes[0], names):
        for k, g in enumerate(groups):
            s = stats[g].get(name)
            if s is None or s["mean"] is None:
                continue
            # Markers, not bars: a PSNR bar from 0 would hide differences of a tenth of a dB.
            ax.errorbar(k, s["mean"], yerr=s["std"] or 0.0, fmt="s", color=colours(k % 10), capsize=6,
                        markersize=7)
            vals = [v for v in s["values"].values() if v is not None]
            ax.plot(np.full(len(vals), k + 0.2), vals, "k.", markersize=5)
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("mean +- std over the models of each group (dots: models)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_group_curves(curves: dict[str, list[np.ndarray]], path, ylabel: str = "PSNR (dB)", title: str = ""):
    """Fig. 8 with seeds: the cumulative ablation curve of each group, mean line and +- std band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, cs in curves.items():
        arr = np.stack(cs)
        x = np.arange(arr.shape[1])
        mean = arr.mean(axis=0)
        std = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros_like(mean)
        (line,) = ax.plot(x, mean, label=f"{g} (n={len(arr)})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("number of channels ablated")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Channel ablation, mean +- std over models", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def _curves_from_csv(path: Path, labels: dict[str, tuple[str, Path]]) -> tuple[dict[str, list[np.ndarray]], str]:
    import csv

    by_model: dict[str, list[float]] = {}
    score = ""
    with open(path) as f:
        for row in csv.DictReader(f):
            by_model.setdefault(row["model"], []).append(float(row["psnr"]))
            score = row.get("score", score)
    curves: dict[str, list[np.ndarray]] = {}
    for lab, (g, _) in labels.items():
        if lab in by_model:
            curves.setdefault(g, []).append(np.asarray(by_model[lab]))
    return curves, score


def analyze_groups(groups: Mapping[str, Sequence[str | Path]], tool: str, out: str | Path, load,
                   pairs=None, ddr_images=None, **options) -> dict:
    """Run `tool` on every checkpoint of every group and reduce the numbers to mean +- std per group.

    `groups` maps a setting's name to its checkpoints (anything `model_files` takes); `load(path)` turns
    one into a model. `options` go to `analyze`. Returns the groups.json document.
    """
    if not groups:
        raise ValueError("groups is empty: give {<setting>: [<checkpoint>, ...], ...}")
    resolved = {str(g): model_files(spec, f"group {str(g)!r}: ") for g, spec in groups.items()}
    labels = group_labels(resolved)
    models: dict[str, nn.Module] = {lab: load(p) for lab, (_, p) in labels.items()}
    return analyze_group_models(models, labels, tool, out, pairs, ddr_images, **options)


def analyze_group_models(models: Mapping[str, nn.Module], labels: Mapping[str, tuple[str, Path]], tool: str,
                         out: str | Path, pairs=None, ddr_images=None, **options) -> dict:
    """`analyze_groups` for models already in memory; `labels` = {label: (group, checkpoint path)}."""
    out = Path(out)
    summary = analyze(dict(models), tool, out, pairs, ddr_images, **options)
    meta = json.loads((out / "analysis.json").read_text())
    return _reduce_groups(out, summary, dict(labels), meta["options"], (out / "ablation_curve.csv").exists())


def _reduce_groups(out: Path, summary: Mapping, labels: dict[str, tuple[str, Path]], options: dict,
                   curves: bool) -> dict:
    """The per-model numbers of `summary` reduced to mean +- std per group: groups.csv/json and groups_stats.png,
    and with `curves` groups_ablation_curve.png from out/ablation_curve.csv. Returns the groups.json document."""
    per_model = {lab: flatten(summary[lab]) for lab in labels}
    members: dict[str, list[str]] = {}
    for lab, (g, _) in labels.items():
        members.setdefault(g, []).append(lab)
    stats = group_stats(per_model, members)
    write_group_files(out, stats, per_model, labels, options)
    plot_group_stats(stats, out / "groups_stats.png")
    if curves:
        curves_by_group, score = _curves_from_csv(out / "ablation_curve.csv", labels)
        rescale = options["ablation"]["rescale"]
        plot_group_curves(curves_by_group, out / "groups_ablation_curve.png", f"PSNR (dB, {score})",
                          f"Channel ablation (rescale {rescale}, score {score}), mean +- std over models")
    return json.loads((out / "groups.json").read_text())


# Per-model tables `analyze` writes (one row per model and item, the model's label first): a merge concatenates them.
PER_MODEL_CSVS = ("ablation_channels.csv", "ablation_curve.csv", "csm_scores.csv", "ddr_chi.csv", "ddr_embedding.csv")


def merge_groups(sources: Sequence[str | Path], out: str | Path) -> dict:
    """Group statistics over models analysed in separate runs of `analyze_groups` (seeds trained, and analysed,
    in different sittings): the per-model numbers of every source (summary.json, groups.json and the per-model
    CSVs) are pooled and reduced again, so a campaign's interpretation grows with its seeds without keeping every
    checkpoint. The sources must share their analysis options; a model named in two sources is refused. Writes the
    group files and figures and the concatenated per-model CSVs to `out` (per-model figures stay in the sources).
    Returns the merged groups.json document."""
    import csv

    if not sources:
        raise ValueError("merge needs sources=[<analysis folder>, ...] (folders written by analyze with groups=)")
    out = Path(out)
    summary: dict = {}
    labels: dict[str, tuple[str, Path]] = {}
    options = first = None
    tables: dict[str, tuple[list[str], list[list[str]]]] = {}
    for src in map(Path, sources):
        missing = [n for n in ("summary.json", "groups.json", "analysis.json") if not (src / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{src}: no {', '.join(missing)}; merge reads folders written by "
                                    "`python -m src.analyze <tool> groups=...`")
        doc = json.loads((src / "groups.json").read_text())
        opts = json.loads((src / "analysis.json").read_text())["options"]
        if options is None:
            options, first = opts, src
        elif opts != options:
            keys = sorted(k for k in set(opts) | set(options) if opts.get(k) != options.get(k))
            raise ValueError(f"{src}: analysed with other options than {first} ({', '.join(keys)} differ); "
                             "only numbers measured the same way can be pooled")
        for group, members in doc["groups"].items():
            for lab in members:
                if lab in labels:
                    raise ValueError(f"{src}: model {lab!r} is also in an earlier source; each model once")
                where = doc["checkpoints"].get(lab)
                labels[lab] = (group, src / where if where else None)
        summary.update({lab: v for lab, v in json.loads((src / "summary.json").read_text()).items()
                        if lab in labels})
        for name in PER_MODEL_CSVS:
            if not (src / name).is_file():
                continue
            with open(src / name, newline="") as f:
                header, *rows = list(csv.reader(f))
            seen = tables.setdefault(name, (header, []))
            if seen[0] != header:
                raise ValueError(f"{src / name}: columns {header} differ from the earlier source's {seen[0]}")
            seen[1].extend(rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, (header, rows) in tables.items():
        write_csv(out / name, header, rows)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "analysis.json", json.dumps(
        {"models": list(labels), "options": options, "definitions": DEFINITIONS,
         "merged_from": [str(s) for s in sources]}, indent=2) + "\n")
    return _reduce_groups(out, summary, labels, options, "ablation_curve.csv" in tables)
