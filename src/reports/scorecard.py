"""The reproduction scorecard: each finding of the paper beside what this suite measured at reduced scale, with a
seed-level 95% interval and a verdict computed from that interval.

Every number comes from committed files under the results root (docs/results): the run folders of a study
(config.yaml + results files), the pooled interpretation (`interp_seeds/groups_models.csv`) and the training-length
table (`training_length/gain_vs_steps.csv`). A claim is tested by one or more contrasts (variant minus base); each
contrast gives one number per seed, and `stats.seed_difference` turns them into an interval, paired by seed or
not as `stats.pairing` decides for every comparison of the suite.

Verdict rules, per contrast (`verdict`):
- the paper says the variant is better (direction +1) or lower (-1):
  reproduced when the 95% interval excludes zero in the paper's direction, contradicted when it excludes zero in
  the opposite direction, inconclusive when it contains zero;
- the paper says the variant does no harm (direction 0, e.g. `last` dropout in the bicubic setting): reproduced
  when the interval's lower end is at or above -MARGIN_DB (no harm larger than the margin), contradicted when its
  upper end is below -MARGIN_DB (a harm surely larger than the margin), inconclusive otherwise;
- fewer than 2 seed pairs (or 2 seeds a side when unpaired): inconclusive, because no seed-level interval exists;
- no committed result: not run, with the command that runs it.
Per claim (`combine`): not run when no contrast ran; reproduced when every contrast that ran is reproduced;
contradicted when at least one is contradicted and none is reproduced; inconclusive otherwise (the parts are named).
A claim some of whose contrasts did not run says so beside its verdict. Descriptive lines (`Claim.extras`: the
gain's trend over p for Table A.2, Table B.3's positions side by side, the paper's "red text" SRResNet-with-dropout against RRDB-without for Table 1)
are printed beside a claim's contrasts and take no part in its verdict.

    python -m src.report scorecard docs/results       # writes docs/results/scorecard.md and scorecard.csv
    python -m src.report scorecard docs/results readme=README.md   # and the verdict counts in README's block
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src import runs as run_folders
from src.models.dropout import POSITIONS
from src.reports.collect import Run, load_runs, protocol_metric, size_text
from src.reports.paper import paper_setting, published, row_values
from src.reports.render import write_readme_block
from src.reports.stats import Interval, pairing, seed_difference, t_interval
from src.reports.tables import rank
from src.utils import atomic_write_text

MARGIN_DB = 0.05        # the largest harm a "does not affect" claim tolerates (dB)
LEVEL = 0.95
PROTOCOL_ORDER = ("official", "literature")   # the paper's own protocol first; the literature one if it is all
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
EIGHT = ("clean", "blur", "noise", "jpeg", "b+n", "b+j", "n+j", "b+n+j")
README_BEGIN = "<!-- scorecard:begin -->"
README_END = "<!-- scorecard:end -->"
INTERP_MODELS = "groups_models.csv"
LENGTH_TABLE = "gain_vs_steps.csv"


@dataclass(frozen=True)
class Contrast:
    """Variant minus base. For results files, a side is (position, dim, p) with position `none` for p = 0; for the
    interpretation, a side is a group name and `statistic` the per-model number."""
    label: str
    variant: tuple
    base: tuple
    direction: int                      # +1 the paper finds the variant higher, -1 lower, 0 no harm
    degradations: tuple = EIGHT         # the test columns averaged (every set the runs scored)
    statistic: str = ""                 # interpretation statistic (`ablation.max_drop`); "" = PSNR
    command: str = ""                   # how to produce it when the claim's command does not
    unit: str = "dB"
    studies: tuple = ()                 # where its runs are, when not the claim's folders


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    where: str
    setting: str                        # "bicubic" or "Real"
    studies: tuple                      # folders under the results root, searched in order
    sweep: str                          # the sweep file or tool that tests it
    command: str                        # what produces the committed study
    backbone: str = "SRResNet"
    source: str = "results"             # results | interp | length
    here: str = ""                      # what was measured, where no run folder says it
    contrasts: tuple = ()
    cost: str = ""                      # a `src.bench` report (under the results root) pricing a study not run
    extras: tuple = ()                  # descriptive lines beside the verdict (keys of EXTRAS)
    left: str = ""                      # key of LEFT: the jobs still to run, from what is committed


@dataclass
class Outcome:
    contrast: str
    verdict: str
    interval: Interval | None = None
    reason: str = ""
    unit: str = "dB"
    seeds: list = field(default_factory=list)
    detail: str = ""


SEEDS = (0, 1, 2)      # the seeds a study's command trains


def _make_sweep(sweep: str, args: str, seeds=SEEDS) -> str:
    """Train a sweep file with `args` over `seeds`."""
    return f"make sweep SWEEP={sweep} ARGS=\"{args + ' ' if args else ''}seed={','.join(map(str, seeds))}\""


def _publish(study: str) -> str:
    """Publish a study's finished runs to docs/results/<study> and rebuild the report there."""
    return f"python -m src.report runs/{study} publish=docs/results/{study} out=docs/results"


def _sweep_command(sweep: str) -> str:
    """Train a sweep file over SEEDS, then publish its finished runs."""
    return f"{_make_sweep(sweep, '')} && {_publish(sweep)}"


_UNSEEN_EVAL = ("for r in docs/results/repro_small/*/; do python -m src.eval ckpt=$r/checkpoints/step-002000.safetensors "
                "out_dir=$r degradations=unseen protocol=both; done")
_LAST = ("last", "channel")
# The reduced subset of the Fig. 4 grid that sweeps/repro_bicubic.yaml names, as its three commands.
_BICUBIC = " && ".join(
    [_make_sweep("repro_bicubic", a) for a in (
        "dropout.position=last,all dropout.dim=channel,element dropout.p=0.1",
        "dropout.position=b8 dropout.dim=channel dropout.p=0.1",
        "dropout.position=last dropout.dim=channel dropout.p=0.0,0.7")]
    + [_publish("repro_bicubic")])
# Table B.3's dropout at every position: channel-wise, p = 0.7.
_POSITIONS_SETTING = ("channel", 0.7)
_INTERP_MODELS = ("the Table 1 pairs' models (SRResNet: interp_seeds/analysis.json; RRDB: "
                  "interp_rrdb_seeds/analysis.json)")
# One seed pair S of the RRDB pair per folder; `make report` pools the folders into interp_rrdb_seeds.
_INTERP_RRDB_COMMAND = ("python -m src.analyze all groups=\"{p0:'docs/results/repro_rrdb/dropout.p-0.0_seed-S',"
                        "p0.5:'docs/results/repro_rrdb/dropout.p-0.5_seed-S'}\" out=docs/results/interp_rrdb/seed-S "
                        "&& make report")

CLAIMS = (
    Claim(1, "naive channel-wise dropout after every block (`all`) harms SR", "Fig. 2a", "bicubic",
          ("repro_bicubic",), "sweeps/repro_bicubic.yaml", _BICUBIC,
          contrasts=(Contrast("all channel p=0.1 - none, clean", ("all", "channel", 0.1), ("none",), -1, ("clean",)),)),
    Claim(2, "channel-wise dropout before the last conv (`last`) does not affect SR", "Fig. 2b", "bicubic",
          ("repro_bicubic",), "sweeps/repro_bicubic.yaml", _BICUBIC,
          contrasts=(Contrast("last p=0.1 - none, clean", (*_LAST, 0.1), ("none",), 0, ("clean",)),
                     Contrast("last p=0.7 - none, clean", (*_LAST, 0.7), ("none",), 0, ("clean",)))),
    Claim(3, "one layer is better nearer the output, more layers hurt more, `last` is best, element-wise is worse "
             "than channel-wise, larger p hurts", "Fig. 4, Sec. 5.2", "bicubic", ("repro_bicubic",),
          "sweeps/repro_bicubic.yaml", _BICUBIC,
          contrasts=(Contrast("last - b8 (channel p=0.1), clean", (*_LAST, 0.1), ("b8", "channel", 0.1), 1, ("clean",)),
                     Contrast("b8 - all (channel p=0.1), clean", ("b8", "channel", 0.1), ("all", "channel", 0.1), 1,
                              ("clean",)),
                     Contrast("channel - element at last (p=0.1), clean", (*_LAST, 0.1), ("last", "element", 0.1), 1,
                              ("clean",)),
                     Contrast("channel - element at all (p=0.1), clean", ("all", "channel", 0.1),
                              ("all", "element", 0.1), 1, ("clean",)),
                     Contrast("last p=0.1 - p=0.7, clean", (*_LAST, 0.1), (*_LAST, 0.7), 1, ("clean",)))),
    Claim(4, "with Real-ESRGAN training, dropout helps on seen (bicubic) and unseen (nearest-neighbour) "
             "downsampling", "Fig. 2c, 2d", "Real", ("repro_small", "repro_small_kornia"), "sweeps/repro_small.yaml",
          "make repro",
          contrasts=(Contrast("p=0.7 - p=0, clean (bicubic x4)", (*_LAST, 0.7), ("none",), 1, ("clean",)),
                     Contrast("p=0.7 - p=0, nearest x4", (*_LAST, 0.7), ("none",), 1, ("nearest",),
                              command=_UNSEEN_EVAL))),
    Claim(5, "Real-SRResNet p=0.7 and Real-RRDB p=0.5 improve almost every test column", "Table 1", "Real",
          ("repro_small", "repro_small_kornia"), "sweeps/repro_small.yaml, sweeps/repro_rrdb.yaml", "make repro",
          extras=("versus_rrdb",),
          contrasts=(Contrast("SRResNet p=0.7 - p=0, mean of the 8 columns", (*_LAST, 0.7), ("none",), 1),
                     Contrast("RRDB p=0.5 - p=0, mean of the 8 columns", (*_LAST, 0.5), ("none",), 1,
                              studies=("repro_rrdb",), command=_sweep_command("repro_rrdb")))),
    Claim(6, "dropout helps on unseen degradations (synthetic here: motion blur, JPEG q15, salt-and-pepper; the "
             "paper's NTIRE 2018 tracks run as `degradations=[given]`)", "Table 2", "Real",
          ("repro_small", "repro_small_kornia"), "sweeps/repro_small.yaml + src.eval degradations=unseen", "make repro",
          contrasts=tuple(Contrast(f"p=0.7 - p=0, {d}", (*_LAST, 0.7), ("none",), 1, (d,), command=_UNSEEN_EVAL)
                          for d in ("motion", "jpeg15", "impulse"))),
    Claim(7, "every p from 0.1 to 0.9 improves on p=0", "Table A.2", "Real",
          ("repro_probabilities", "repro_small", "repro_small_kornia"), "sweeps/repro_probabilities.yaml",
          _sweep_command("repro_probabilities"), extras=("trend",),
          contrasts=tuple(Contrast(f"p={p} - p=0, mean of the 8 columns", (*_LAST, p), ("none",), 1)
                          for p in (0.1, 0.3, 0.5, 0.9))),
    Claim(8, "most positions improve except `half` and `all` (and `quarter`, by the table's own numbers); `last` "
             "gives most of the best results", "Table B.3",
          "Real", ("repro_positions",), "sweeps/repro_positions.yaml",
          _sweep_command("repro_positions"), extras=("positions",), left="positions",
          # each direction is the sign of Table B.3's own gain over p=0 (mean of the 8 columns): the text names
          # half and all as the exceptions, but the table has quarter below p=0 too, on every set
          contrasts=tuple(Contrast(f"{pos} p=0.7 - none, mean of the 8 columns", (pos, *_POSITIONS_SETTING),
                                   ("none",), direction)
                          for pos, direction in (("last", 1), ("b4", 1), ("b8", 1), ("b12", 1), ("b16", 1),
                                                 ("quarter", -1), ("half", -1), ("all", -1)))),
    Claim(9, "dropout also helps SwinIR", "Table A.1", "Real", ("repro_swinir",), "conf/backbone/swinir_small.yaml",
          "python -m src.train -m experiment=repro_small backbone=swinir_small name=repro_swinir dropout.p=0,0.5 "
          f"seed={','.join(map(str, SEEDS))} eval.protocol=both && {_publish('repro_swinir')}", backbone="SwinIR",
          cost="bench/swinir_small.json",
          contrasts=(Contrast("SwinIR p=0.5 - p=0, mean of the 8 columns", (*_LAST, 0.5), ("none",), 1),)),
    Claim(10, "dropout does not change convergence; the dropout model is ahead throughout training",
          "Fig. C.1-C.3", "Real", ("training_length",), "kept step weights, src.reports.training_length",
          "python -m src.reports.training_length docs/results/repro_small out=docs/results/training_length",
          source="length", here="the Table 1 pair's weights at each kept step"),
    Claim(11, "dropout equalises channel saliency; the output depends less on single channels", "Fig. 6-8", "Real",
          ("interp_seeds", "interp_rrdb_seeds"), "src.analyze all groups=... (+ merge)",
          "make repro (its interpretation step)", source="interp", here=_INTERP_MODELS,
          contrasts=(Contrast("largest single-channel ablation drop, p=0.7 - p=0", ("p0.7",), ("p0",), -1,
                              statistic="ablation.max_drop", studies=("interp_seeds",)),
                     Contrast("saliency spread over channels (std/mean), p=0.7 - p=0", ("p0.7",), ("p0",), -1,
                              statistic="csm.saliency_cv", unit="", studies=("interp_seeds",)),
                     Contrast("RRDB: largest single-channel ablation drop, p=0.5 - p=0", ("p0.5",), ("p0",), -1,
                              statistic="ablation.max_drop", studies=("interp_rrdb_seeds",),
                              command=_INTERP_RRDB_COMMAND),
                     Contrast("RRDB: saliency spread over channels (std/mean), p=0.5 - p=0", ("p0.5",), ("p0",), -1,
                              statistic="csm.saliency_cv", unit="", studies=("interp_rrdb_seeds",),
                              command=_INTERP_RRDB_COMMAND))),
    Claim(12, "dropout weakens degradation clustering: lower DDR Calinski-Harabasz index", "Fig. 9", "Real",
          ("interp_seeds", "interp_rrdb_seeds"), "src.analyze all groups=... (+ merge)",
          "make repro (its interpretation step)", source="interp", here=_INTERP_MODELS,
          contrasts=(Contrast("DDR CHI, p=0.7 - p=0", ("p0.7",), ("p0",), -1, statistic="ddr.chi", unit="",
                              studies=("interp_seeds",)),
                     Contrast("RRDB: DDR CHI, p=0.5 - p=0", ("p0.5",), ("p0",), -1, statistic="ddr.chi", unit="",
                              studies=("interp_rrdb_seeds",), command=_INTERP_RRDB_COMMAND))),
)


# --- rules -----------------------------------------------------------------------------------------------------
def verdict(iv: Interval | None, direction: int, margin: float = MARGIN_DB) -> tuple[str, str]:
    """(verdict, reason) of one contrast from its interval, by the rules of the module docstring."""
    if iv is None:
        return "not run", "no committed result"
    if iv.kind == "" or math.isnan(iv.low):
        return "inconclusive", f"{iv.n} seed pair(s): at least 2 are needed for a seed-level interval"
    if direction == 0:
        if iv.low >= -margin:
            return "reproduced", f"no harm beyond {margin:g}: the interval's lower end is {iv.low:+.3f}"
        if iv.high < -margin:
            return "contradicted", f"harm beyond {margin:g}: the interval's upper end is {iv.high:+.3f}"
        return "inconclusive", f"the interval reaches below -{margin:g} but not wholly"
    if not iv.excludes_zero:
        return "inconclusive", "the interval contains zero"
    if (iv.mean > 0) == (direction > 0):
        return "reproduced", "the interval excludes zero in the paper's direction"
    return "contradicted", "the interval excludes zero against the paper's direction"


def combine(outcomes: list[Outcome]) -> tuple[str, str]:
    """(verdict, note) of a claim from its contrasts' verdicts."""
    ran = [o for o in outcomes if o.verdict != "not run"]
    missing = len(outcomes) - len(ran)
    partial = f"; {missing} of {len(outcomes)} parts not run" if missing and ran else ""
    if not ran:
        return "not run", ""
    kinds = [o.verdict for o in ran]
    if all(k == "reproduced" for k in kinds):
        return "reproduced", partial.lstrip("; ")
    if "contradicted" in kinds and "reproduced" not in kinds:
        return "contradicted", partial.lstrip("; ")
    parts = ", ".join(f"{k} {kinds.count(k)}" for k in VERDICTS if k in kinds)
    return "inconclusive", f"parts: {parts}{partial}"


# --- measuring --------------------------------------------------------------------------------------------------
def base_fingerprint(run: Run, leave_out: tuple = ("dropout",)) -> str:
    """The run's experiment without its dropout (and any other `leave_out` key, at the top and under `module`):
    runs equal here differ only in those keys and the seed, so they pair."""
    cfg = json.loads(run.fingerprint)
    for k in leave_out:
        cfg.pop(k, None)
    if isinstance(cfg.get("module"), dict):
        cfg["module"] = {k: v for k, v in cfg["module"].items() if k not in leave_out}
    return json.dumps(cfg, sort_keys=True)


def _side_text(side: tuple) -> str:
    """A contrast side as the not-run reasons name it: "p=0" or "all element p=0.1"."""
    return "p=0" if side[0] == "none" else f"{side[0]} {side[1]} p={side[2]:g}"


def _matches(run: Run, side: tuple) -> bool:
    if side[0] == "none":
        return run.baseline
    position, dim, p = side
    return not run.baseline and run.position == position and run.dim == dim and abs(run.p - p) < 1e-6


def _run_mean(run: Run, cols, metric: str, protocol: str) -> float:
    return float(np.mean([run.value(s, d, metric, protocol) for s, d in cols]))


def _load(root: Path, study: str) -> list[Run]:
    folder = root / study
    if not folder.is_dir():
        return []
    try:
        return load_runs([folder])[0]
    except (ValueError, FileNotFoundError):
        return []


def _columns(runs: list[Run], degradations=EIGHT) -> tuple[str, str, list] | None:
    """(protocol, metric, [(set, degradation)]) that every run scored, under the first protocol of PROTOCOL_ORDER
    with any such column; None when there is none."""
    for protocol in PROTOCOL_ORDER:
        metric = protocol_metric(protocol, "psnr")
        sets = set.intersection(*(set(r.results.get(protocol, {})) for r in runs))
        cols = [(s, d) for s in sorted(sets) for d in degradations
                if all(not math.isnan(r.value(s, d, metric, protocol)) for r in runs)]
        if cols:
            return protocol, metric, cols
    return None


def measure_results(root: Path, claim: Claim, contrast: Contrast) -> tuple[Outcome, list[Run]]:
    """The contrast over the first study folder holding its variant; bases may come from any of the claim's
    folders, paired by seed among runs of the same experiment (config without dropout)."""
    studies = contrast.studies or claim.studies
    loaded = {s: _load(root, s) for s in studies}
    everything = [r for rs in loaded.values() for r in rs]
    found = [(s, v) for s in studies if (v := [r for r in loaded[s] if _matches(r, contrast.variant)])]
    if not found:
        return Outcome(contrast.label, "not run", reason=f"no committed run of {_side_text(contrast.variant)}",
                       unit=contrast.unit), []
    # The study with the most seeds of the variant speaks loudest (a campaign accumulates seeds over sittings);
    # on a tie the first listed.
    study, variants = max(found, key=lambda f: len(f[1]))
    fp = base_fingerprint(variants[0])
    variants = [r for r in variants if base_fingerprint(r) == fp]
    bases = [r for r in everything if _matches(r, contrast.base) and base_fingerprint(r) == fp]
    if not bases:
        return Outcome(contrast.label, "not run", reason=f"no committed run of {_side_text(contrast.base)} "
                       f"from the experiment of {study}'s {_side_text(contrast.variant)}",
                       unit=contrast.unit), variants
    involved = variants + bases
    scored = _columns(involved, contrast.degradations)
    if scored is None:
        why = f"{study} has no score on {', '.join(contrast.degradations)}"
        return Outcome(contrast.label, "not run", reason=why, unit=contrast.unit), involved
    protocol, metric, cols = scored
    iv = seed_difference({r.seed: _run_mean(r, cols, metric, protocol) for r in bases},
                         {r.seed: _run_mean(r, cols, metric, protocol) for r in variants}, LEVEL)
    by_seed_v, by_seed_b = {r.seed: r for r in variants}, {r.seed: r for r in bases}
    seeds = pairing(by_seed_b, by_seed_v)
    if seeds is not None:
        col_gain = np.mean([[by_seed_v[s].value(c, d, metric, protocol) - by_seed_b[s].value(c, d, metric, protocol)
                             for c, d in cols] for s in seeds], axis=0) if seeds else np.array([])
    else:  # seeds that do not pair: independent samples
        seeds = sorted({r.seed for r in involved}, key=str)
        col_gain = np.array([np.mean([r.value(c, d, metric, protocol) for r in variants])
                             - np.mean([r.value(c, d, metric, protocol) for r in bases]) for c, d in cols])
    v, why = verdict(iv, contrast.direction)
    sets_txt = "+".join(sorted({s for s, _ in cols}))
    detail = f"{study}, {protocol} protocol, {metric}, {sets_txt}"
    if len(cols) > 1 and col_gain.size:
        detail += f"; {int((col_gain > 0).sum())} of {len(cols)} columns higher"
    return Outcome(contrast.label, v, iv, why, contrast.unit, seeds, detail), involved


def _by_fingerprint(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by experiment (base_fingerprint), the group with most runs first."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(base_fingerprint(r), []).append(r)
    return sorted(groups.values(), key=len, reverse=True)


def trend_over_p(root: Path, claim: Claim) -> list[str]:
    """The gain's trend over the dropout probability, per campaign: for each seed that ran every p that at least
    two seeds ran (p = 0 included, at least 3 such p), the least-squares slope of its mean PSNR over the 8 columns
    against p; a t interval over those seeds. Descriptive: the paper names no trend (Table A.2 finds every p above
    p = 0 and picks 0.7), so it takes no part in the verdict."""
    runs = [r for s in claim.studies for r in _load(root, s) if r.baseline or (r.position, r.dim) == _LAST]
    out = []
    for rs in _by_fingerprint(runs):
        at: dict[float, dict] = {}
        for r in rs:
            at.setdefault(0.0 if r.baseline else round(r.p, 6), {})[r.seed] = r
        ps = sorted(p for p, by_seed in at.items() if len(by_seed) >= 2)
        seeds = sorted(set.intersection(*(set(at[p]) for p in ps)), key=str) if ps else []
        if len(ps) < 3 or 0.0 not in ps or len(seeds) < 2:
            continue
        scored = _columns([at[p][s] for p in ps for s in seeds])
        if scored is None:
            continue
        protocol, metric, cols = scored
        means = {(p, s): _run_mean(at[p][s], cols, metric, protocol) for p in ps for s in seeds}
        slopes = [0.1 * np.polyfit(ps, [means[p, s] for p in ps], 1)[0] for s in seeds]
        iv = t_interval(slopes, LEVEL)
        gains = ", ".join(f"p={p:g} {np.mean([means[p, s] - means[0.0, s] for s in seeds]):+.3f}" for p in ps if p)
        where = "+".join(sorted({r.dir.parent.name for r in rs if not r.baseline}))
        out.append(f"trend over p (descriptive, not part of the verdict; {where}, p = "
                   f"{', '.join(f'{p:g}' for p in ps)}, seeds {', '.join(map(str, seeds))}, {protocol} protocol, "
                   f"{metric}): slope {iv.mean:+.3f} dB per +0.1 of p, 95% CI [{iv.low:+.3f}, {iv.high:+.3f}] "
                   f"(t over {iv.n} seeds); mean gain over p=0 by p: {gains}")
    return out


RRDB_STUDY = "repro_rrdb"


def _training_key(run: Run) -> str:
    """The run's training without its network and dropout: an SRResNet and an RRDB equal here saw the same data."""
    return base_fingerprint(run, ("dropout", "backbone"))


def versus_rrdb(root: Path, claim: Claim) -> list[str]:
    """The paper's red text in Table 1 (on half of the test sets the SRResNet with dropout, p=0.7, scores above
    the RRDB without it): per column, the SRResNet-with-dropout minus RRDB-p=0 difference over seeds (paired by
    seed: the two saw the same batches; Welch's interval when the seeds do not pair), counted by sign and by
    interval. Descriptive: the paper states it as an observation, so it takes no part in the verdict."""
    label = "SRResNet p=0.7 above RRDB p=0 (the paper's red text: half of Table 1's test sets)"
    rrdb = [r for r in _load(root, RRDB_STUDY) if r.baseline]
    srr = [r for s in claim.studies for r in _load(root, s) if _matches(r, (*_LAST, 0.7))]
    if not rrdb:
        return [f"{label}: not run (no committed {RRDB_STUDY} p=0 run)"] if srr else []
    keys = {_training_key(r) for r in rrdb}
    groups = [g for g in _by_fingerprint(srr) if _training_key(g[0]) in keys]
    if not groups:
        return [f"{label}: no SRResNet p=0.7 run trained as the committed {RRDB_STUDY} runs were"]
    srr = groups[0]
    rrdb = [r for r in rrdb if _training_key(r) == _training_key(srr[0])]
    scored = _columns(srr + rrdb)
    if scored is None:
        return [f"{label}: no test column scored by both"]
    protocol, metric, cols = scored
    by_v, by_b = {r.seed: r for r in srr}, {r.seed: r for r in rrdb}
    common = pairing(by_b, by_v)
    paired = common is not None
    higher = above = below = 0
    for s, d in cols:
        iv = seed_difference({k: r.value(s, d, metric, protocol) for k, r in by_b.items()},
                             {k: r.value(s, d, metric, protocol) for k, r in by_v.items()}, LEVEL)
        higher += iv.mean > 0
        above += bool(iv.kind) and iv.low > 0
        below += bool(iv.kind) and iv.high < 0
    n = f"{len(common)} seed pairs" if paired else f"{len(srr)} and {len(rrdb)} unpaired seeds"
    return [f"{label}: higher on {higher} of {len(cols)} columns; the 95% interval over seeds above zero on {above}"
            f", below zero on {below} ({protocol} protocol, {metric}, {n})"]


def paper_below(cols: list[tuple[str, str]]) -> list[str]:
    """The positions whose published Table B.3 row lies below its p=0 row on the mean of `cols` ((set, degradation)
    pairs; those the paper did not test are left out), in the table's order."""
    rows = {r["position"]: row_values(r) for r in published()["tables"]["table_b3"]["rows"]
            if not r.get("improvement")}
    base = rows.get("none", {})
    out = []
    for pos, values in rows.items():
        diffs = [values[s][d] - base[s][d] for s, d in cols if s in values and s in base]
        if pos != "none" and diffs and float(np.mean(diffs)) < 0:
            out.append(pos)
    return out


def by_position(root: Path, claim: Claim) -> list[str]:
    """Table B.3 read as the paper reads it: each position's gain over p=0 (mean over the 8 columns, t interval
    over seed pairs), which positions lie surely below p=0 beside those the paper's table and text put below, on
    how many columns each position scores highest, and on how many its lead over the next position survives the
    seeds (the rule of Table B.3's bold marks). Descriptive, beside the per-position verdicts."""
    runs = [r for s in claim.studies for r in _load(root, s)]
    groups = _by_fingerprint(runs)
    if not groups:
        return []
    runs = groups[0]
    base = {r.seed: r for r in runs if r.baseline}
    pos = {}
    for r in runs:
        if not r.baseline and _matches(r, (r.position, *_POSITIONS_SETTING)):
            pos.setdefault(r.position, {})[r.seed] = r
    if not base or len(pos) < 2:
        return []
    scored = _columns(list(base.values()) + [r for v in pos.values() for r in v.values()])
    if scored is None:
        return []
    protocol, metric, cols = scored
    order = sorted(pos, key=lambda k: POSITIONS.index(k) if k in POSITIONS else len(POSITIONS))
    parts, below, above = [], [], []
    for k in order:
        iv = seed_difference({s: _run_mean(r, cols, metric, protocol) for s, r in base.items()},
                             {s: _run_mean(r, cols, metric, protocol) for s, r in pos[k].items()}, LEVEL)
        ci = f" [{iv.low:+.3f}, {iv.high:+.3f}]" if iv.kind else ""
        parts.append(f"{k} {iv.mean:+.3f}{ci} (n={iv.n})")
        if iv.kind and iv.high < 0:
            below.append(k)
        if iv.kind and iv.low > 0:
            above.append(k)
    wins, sure = dict.fromkeys(order, 0), dict.fromkeys(order, 0)
    for s, d in cols:
        samples = [{seed: r.value(s, d, metric, protocol) for seed, r in pos[k].items()} for k in order]
        means = [float(np.mean(list(v.values()))) for v in samples]
        wins[order[int(np.argmax(means))]] += 1
        for i, mark in rank(means, samples).items():
            sure[order[i]] += mark == "best"

    def counts(c: dict) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(c.items(), key=lambda kv: -kv[1]) if n) or "none"

    # a raw column win may be seed noise; Table B.3's bold rule (a lead over the next outside seed noise) says
    # which wins hold, and needs three positions to rank
    held = (f"; ahead of the next position beyond seed noise (Table B.3's bold rule): {counts(sure)}"
            if len(order) >= 3 else "")
    return [f"by position, p=0.7 - p=0 over the 8 columns, dB, 95% CI over seed pairs ({protocol} protocol): "
            + "; ".join(parts),
            f"surely below p=0: {', '.join(below) or 'none'} (the paper's table: "
            f"{', '.join(paper_below(cols)) or 'none'}; its text: half, all); surely above: "
            f"{', '.join(above) or 'none'}; highest position per column (of {len(cols)}): {counts(wins)}{held}"]


EXTRAS = {"trend": trend_over_p, "versus_rrdb": versus_rrdb, "positions": by_position}


def positions_left(root: Path, claim: Claim) -> list[str]:
    """The one command that trains and publishes only the (position, seed) jobs of the positions study that are
    not committed (every position of POSITIONS at p=0.7 channel-wise, seeds SEEDS), positions that lack the same
    seeds sharing one multirun; [] when nothing is left."""
    study = claim.studies[0]
    runs = _load(root, study)
    groups: dict[tuple, list[str]] = {}
    for pos in POSITIONS:
        side = ("none",) if pos == "none" else (pos, *_POSITIONS_SETTING)
        have = {r.seed for r in runs if _matches(r, side)}
        missing = tuple(s for s in SEEDS if s not in have)
        if missing:
            groups.setdefault(missing, []).append(pos)
    if not groups:
        return []
    return [" && ".join([*(_make_sweep(study, f"dropout.position={','.join(g)}", m) for m, g in groups.items()),
                         _publish(study)])]


LEFT = {"positions": positions_left}


def _seed_of(model: str) -> str:
    m = re.search(r"seed-(\d+)", model)
    return m.group(1) if m else model


def measure_interp(root: Path, claim: Claim, contrast: Contrast) -> Outcome:
    """The contrast over the per-model numbers of the pooled interpretation, paired by the seed in each model's
    name."""
    path = next((root / s / INTERP_MODELS for s in contrast.studies or claim.studies
                 if (root / s / INTERP_MODELS).is_file()), None)
    if path is None:
        return Outcome(contrast.label, "not run", reason=f"no {INTERP_MODELS}", unit=contrast.unit)
    values: dict[str, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["statistic"] == contrast.statistic:
                values.setdefault(row["group"], {})[_seed_of(row["model"])] = float(row["value"])
    v, b = values.get(contrast.variant[0], {}), values.get(contrast.base[0], {})
    if not v or not b:
        return Outcome(contrast.label, "not run", reason=f"{path.name} lacks {contrast.statistic} for "
                       f"{contrast.variant[0]} or {contrast.base[0]}", unit=contrast.unit)
    common = pairing(b, v)
    iv, seeds = seed_difference(b, v, LEVEL), (sorted(set(v) | set(b)) if common is None else common)
    word, why = verdict(iv, contrast.direction)
    detail = f"{contrast.statistic}: {np.mean(list(b.values())):.4g} -> {np.mean(list(v.values())):.4g}"
    return Outcome(contrast.label, word, iv, why, contrast.unit, seeds, detail)


def read_length_table(path: Path) -> list[tuple[str, int, Interval]]:
    """[(dropout setting, step, interval of its gain)] of a training-length table (src.reports.training_length),
    the rows that average every set and degradation (`set=all`)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("set") != "all":
                continue
            fl = {k: float(row[k]) if row[k] not in ("", "nan") else math.nan for k in ("mean", "low", "high", "p")}
            out.append((row.get("setting", ""), int(row["step"]),
                        Interval(fl["mean"], fl["low"], fl["high"], fl["p"], int(row["n"]), row.get("kind", ""))))
    return sorted(out, key=lambda t: (t[0], t[1]))


def measure_length(root: Path, claim: Claim) -> list[Outcome]:
    path = next((root / s / LENGTH_TABLE for s in claim.studies if (root / s / LENGTH_TABLE).is_file()), None)
    if path is None:
        return [Outcome("gain at every kept step", "not run", reason=f"no {LENGTH_TABLE}")]
    out = []
    for setting, step, iv in read_length_table(path):
        word, why = verdict(iv, 1)
        label = f"{setting + ', ' if setting else ''}step {step:,}"
        out.append(Outcome(label, word, iv, why, "dB", list(range(iv.n)), f"all sets and degradations of {path.name}"))
    return out or [Outcome("gain at every kept step", "not run", reason=f"{path} has no rows")]


# --- the card ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    claim: Claim
    outcomes: list[Outcome]
    verdict: str
    note: str
    here: str
    paper: str
    extras: list = field(default_factory=list)     # descriptive lines, outside the verdict
    left: list | None = None                        # commands of the jobs still to run, where the claim knows them


def score(root: os.PathLike) -> list[Row]:
    """One row per claim of CLAIMS, measured from the committed files under `root`."""
    root = Path(root)
    rows = []
    for claim in CLAIMS:
        firsts: list[Run] = []  # the first run of each contrast: what its study trained
        if claim.source == "length":
            outcomes = measure_length(root, claim)
        elif claim.source == "interp":
            outcomes = [measure_interp(root, claim, c) for c in claim.contrasts]
        else:
            outcomes = []
            for c in claim.contrasts:
                o, involved = measure_results(root, claim, c)
                outcomes.append(o)
                firsts += involved[:1]
        word, note = combine(outcomes)
        # A claim whose contrasts train different models (Table 1's SRResNet and RRDB pairs) names each study's.
        sizes = {}
        for r in firsts:
            sizes.setdefault(size_text(r.size), r.dir.parent.name)
        here = ("<br>".join(f"`{study}`: {text}" for text, study in sizes.items()) if len(sizes) > 1
                else next(iter(sizes), claim.here))
        extras = [line for key in claim.extras for line in EXTRAS[key](root, claim)]
        left = LEFT[claim.left](root, claim) if claim.left else None
        rows.append(Row(claim, outcomes, word, note, here, paper_setting(claim.backbone), extras, left))
    return rows


# A study whose jobs would each take longer than this on one core of the 2-core machine is priced, not run.
JOB_BUDGET_H = 1.5
CAMPAIGN = "repro_small"


def cost_text(root: Path, claim: Claim) -> str:
    """What one job of the claim's study would cost here, from its `src.bench` report: the model's training step
    and evaluation forward against the campaign model's, measured in the same process (`quick=true` benchmarks the
    campaign's tiny SRResNet as its main model), times the fastest committed campaign fit. "" without a report."""
    path = root / claim.cost if claim.cost else None
    if path is None or not path.is_file():
        return ""
    report = json.loads(path.read_text())
    figures, label = report["figures"], report["model"]
    step = figures[f"compute_efficiency[{label}]"]["detail"]["train_step_ms"]
    base_step = figures["compute_efficiency"]["detail"]["train_step_ms"]
    fwd = figures[f"evaluation_efficiency[{label}]"]["detail"]["bare_forward_s"]
    base_fwd = figures["evaluation_efficiency"]["detail"]["bare_forward_s"]
    command = " ".join(["python -m src.bench", f"device={report['device']}", f"threads={report['threads']}",
                        *(["quick=true"] if report.get("quick") else []), *report.get("model_overrides", [])])
    text = (f"measured cost (`{command}`): training step "
            f"{step / 1e3:.2f} s, {step / base_step:.1f}x the campaign model's; evaluation forward "
            f"{fwd / base_fwd:.1f}x")
    fits = [run_folders.read_state(f)["fit_seconds"] for f in sorted((root / CAMPAIGN).glob(f"*/{run_folders.DONE}"))]
    if fits:
        hours = min(fits) * step / base_step / 3600
        text += (f"; training alone ~{hours:.1f} h per job (the fastest committed {CAMPAIGN} fit, {min(fits) / 60:.0f}"
                 f" min, scaled), {'over' if hours > JOB_BUDGET_H else 'within'} the {JOB_BUDGET_H:g} h per-job budget")
    return text


def _fmt(o: Outcome) -> str:
    if o.interval is None:
        return f"{o.contrast}: not run ({o.reason})"
    iv = o.interval
    unit = f" {o.unit}" if o.unit else ""
    ci = (f"[{iv.low:+.3f}, {iv.high:+.3f}]" if iv.kind else "no interval")
    return f"{o.contrast}: {iv.mean:+.3f}{unit}, 95% CI {ci} ({iv.kind or 'n = ' + str(iv.n)}); {o.verdict}" + \
        (f" ({o.detail})" if o.detail else "")


def _seeds_text(outcomes: list[Outcome]) -> str:
    ns = sorted({o.interval.n for o in outcomes if o.interval is not None})
    if not ns:
        return "-"
    return "/".join(map(str, ns)) + (" pair" if ns == [1] else " pairs")


def counts_text(rows: list[Row]) -> str:
    """How many claims got each verdict, e.g. `3 reproduced, 1 inconclusive, 8 not run (12 rows)`."""
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" ({len(rows)} rows)"


def render(rows: list[Row], root: os.PathLike) -> str:
    md = ["# Reproduction scorecard", "",
          f"Each finding of the paper beside what this suite measured at reduced scale (built by `make report` from "
          f"the committed files under `{root}`; `python -m src.report scorecard {root}`). "
          + counts_text(rows) + ".", "",
          "**Verdict rules.** Effects are variant minus base, one value per seed, paired by seed, with a "
          f"{LEVEL:.0%} Student t interval over the seed pairs (Welch's interval when the seeds do not pair). "
          "*reproduced*: the interval excludes zero in the paper's direction; *contradicted*: it excludes zero in "
          "the opposite direction; *inconclusive*: it contains zero, or fewer than 2 seed pairs. For a \"does not "
          f"affect\" claim: *reproduced* when the lower end is at or above -{MARGIN_DB:g} dB, *contradicted* when "
          f"the upper end is below -{MARGIN_DB:g} dB. A claim is reproduced when all its measured parts are, "
          "contradicted when some part is and none is reproduced, inconclusive otherwise; *not run* means nothing "
          "is committed, and the row gives the command that runs it. PSNR is the paper's protocol (RGB PSNR) where "
          "the runs were scored under it, else PSNR-Y (literature).", "",
          "| # | claim (paper) | setting | study (sweep) | here / paper | seeds | measured effect, 95% CI | verdict |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.claim
        if r.left is not None and r.verdict != "not run":
            cmds = r.left
        else:
            cmds = sorted({next((x.command for x in c.contrasts if x.label == o.contrast), "") or c.command
                           for o in r.outcomes if o.verdict == "not run"})
        if r.verdict == "not run":
            measured = "not run: " + "; ".join(f"`{x}`" for x in cmds)
            cost = cost_text(Path(root), c)
            measured += f"<br>{cost}" if cost else ""
        else:
            measured = "<br>".join(_fmt(o) for o in r.outcomes)
            if cmds:
                measured += "<br>to fill the rest: " + "; ".join(f"`{x}`" for x in cmds)
        measured += "".join(f"<br>{line}" for line in r.extras)
        named = dict.fromkeys([*c.studies[:1], *(s for x in c.contrasts for s in x.studies)])
        study = ", ".join(f"`{s}`" for s in named) + f" ({c.sweep})"
        size = f"{r.here or '-'} / {r.paper}"
        word = f"**{r.verdict}**" + (f" ({r.note})" if r.note else "")
        md.append(f"| {c.number} | {c.text} ({c.where}) | {c.setting} | {study} | {size} | {_seeds_text(r.outcomes)} "
                  f"| {measured} | {word} |")
    return "\n".join(md) + "\n"


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["claim", "contrast", "verdict", "mean", "low", "high", "p", "n", "kind", "reason", "claim_verdict"])
    for r in rows:
        for o in r.outcomes:
            iv = o.interval
            nums = [f"{x:.6g}" for x in (iv.mean, iv.low, iv.high, iv.p)] + [iv.n, iv.kind] if iv else [""] * 6
            w.writerow([r.claim.number, o.contrast, o.verdict, *nums, o.reason, r.verdict])
    return buf.getvalue()


def _brief(o: Outcome) -> str:
    """One contrast in a few words: its label up to the first comma, the effect and the interval (or why none)."""
    iv = o.interval
    unit = f" {o.unit}" if o.unit else ""
    if iv.kind:
        return f"{o.contrast} {iv.mean:+.3f}{unit} [{iv.low:+.3f}, {iv.high:+.3f}]"
    return f"{o.contrast} {iv.mean:+.3f}{unit} (one seed pair, no interval)"


def readme_md(rows: list[Row], out: Path, relative_to: Path) -> str:
    """The README's scorecard block: the verdict counts, one line per claim that ran (its verdict and each
    measured effect with its 95% interval over seeds), the claims not run, and a link to the card."""
    link = Path(os.path.relpath(out / "scorecard.md", relative_to)).as_posix()
    lines = ["<!-- written by `make report` (src.reports.scorecard.readme_md); edit the code, not this text -->",
             f"The paper's {len(rows)} findings, each with its seed-level 95% interval and a verdict computed from "
             f"it: {counts_text(rows)} ([{link}]({link}): each claim's study, its size beside the paper's and the "
             f"command that runs what is missing). Effect, 95% interval over seeds:"]
    for r in rows:
        ran = [o for o in r.outcomes if o.verdict != "not run"]
        if ran:
            lines.append(f"- {r.claim.number}. {r.claim.text} ({r.claim.where}): **{r.verdict}**; "
                         + "; ".join(_brief(o) for o in ran))
    idle = [str(r.claim.number) for r in rows if r.verdict == "not run"]
    if idle:
        lines.append(f"- not run: claims {', '.join(idle)}")
    return "\n".join(lines)


def write_scorecard(root: os.PathLike, out: os.PathLike | None = None, readme: os.PathLike | None = None
                    ) -> list[Path]:
    """Write <out>/scorecard.md and scorecard.csv (out defaults to root) and, with `readme`, the verdict counts
    between that file's scorecard markers; returns the paths written."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"scorecard: results root {root} is not a folder")
    out = Path(out) if out else root
    rows = score(root)
    written = [atomic_write_text(out / "scorecard.md", render(rows, root)),
               atomic_write_text(out / "scorecard.csv", to_csv(rows))]
    if readme is not None:
        written.append(write_readme_block(readme, readme_md(rows, out, Path(readme).parent), README_BEGIN,
                                          README_END))
    return written
