"""Evaluate one checkpoint, or every run of a sweep, on the benchmark sets under the test degradations.

    python -m src.eval ckpt=runs/train/default sets=[Set5,Set14,BSD100,Urban100] degradations=all
    python -m src.eval ckpt=runs/positions            # every folder below holding checkpoints/last.ckpt
    python -m src.eval ckpt=RRDB.pth backbone=rrdb out_dir=results/rrdb
    python -m src.eval ckpt=runs/train/default protocol=both   # also the paper's official protocol
    python -m src.eval ckpt=bicubic protocol=both out_dir=docs/results/bicubic   # the bicubic reference row

`protocol=literature` (default) writes results.json/.csv, `protocol=official` results_official.json/.csv.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from src.data.datasets import default_data_root, resolve_set
from src.data.testsets import ALL_TEST_DEGRADATIONS, GIVEN, TEST_DEGRADATIONS, UNSEEN_DEGRADATIONS
from src.evaluation import (BicubicUpsampler, evaluate, format_table, load_results, merge_results,
                            resolve_protocols, write_results)
from src.utils import resolve_device


def resolve_degradations(value) -> list[str]:
    if value is None or value == "all":
        return list(TEST_DEGRADATIONS)
    if value == "unseen":
        return list(UNSEEN_DEGRADATIONS)
    names = [value] if isinstance(value, str) else list(value)
    allowed = ALL_TEST_DEGRADATIONS + (GIVEN,)
    bad = [d for d in names if d not in allowed]
    if bad:
        raise ValueError(f"degradations={names}: unknown {bad}; allowed: all, unseen, or any of {', '.join(allowed)}")
    return names


def given_lr_dirs(cfg: DictConfig, names: list[str], root: Path, degradations: list[str]) -> dict[str, Path]:
    """The folder of given LR images of each set: `lr_dirs.<set>`, else `<root>/<set>/LR` when it exists. With
    the degradation `given`, a set without one is a FileNotFoundError naming where it was looked for."""
    configured = {str(k): Path(v) for k, v in (cfg.get("lr_dirs") or {}).items()}
    dirs = {n: configured.get(n, root / n / "LR") for n in names}
    if GIVEN in degradations:
        missing = [f"{n}: {d}" for n, d in dirs.items() if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"degradations include {GIVEN!r} but these sets have no LR folder ("
                                    f"{'; '.join(missing)}); put the LR images there or set +lr_dirs.<set>=<folder>")
    return {n: d for n, d in dirs.items() if d.is_dir()}


def run_eval(cfg: DictConfig) -> dict[Path, dict]:
    """Evaluate every run `cfg.ckpt` names under `cfg.protocol`; returns {run folder: {protocol: results dict}}
    and writes each run's files."""
    from src.models.loading import load_for_tool, weights_files

    if cfg.get("ckpt") in (None, "", "???"):
        raise ValueError("ckpt=... is required: a checkpoint file, a run folder or a sweep folder")
    bicubic = str(cfg.ckpt) == "bicubic"
    if bicubic and not cfg.get("out_dir"):
        raise ValueError("ckpt=bicubic (the bicubic reference) needs out_dir=... for its results files")
    if bicubic:
        runs = [("bicubic", Path(cfg.out_dir))]
    elif cfg.get("out_dir") and Path(cfg.ckpt).is_file():
        runs = [(Path(cfg.ckpt), Path(cfg.out_dir))]
    else:  # each model's results go beside it: into its run folder
        runs = weights_files(cfg.ckpt)
    root = Path(cfg.data.root) if cfg.data.get("root") else default_data_root()
    names = [cfg.sets] if isinstance(cfg.sets, str) else list(cfg.sets)
    # Resolve every set before loading any model: a missing folder should fail in a second, not after a sweep.
    sets = {name: resolve_set(name, root) for name in names}
    degradations = resolve_degradations(cfg.degradations)
    protocols = resolve_protocols(cfg.get("protocol", "literature"))
    given_lr = given_lr_dirs(cfg, names, root, degradations)
    device = resolve_device(str(cfg.device))
    out, failed, scored = {}, [], {}
    for i, (ckpt, run_dir) in enumerate(runs, 1):
        print(f"[eval] ({i}/{len(runs)}) {ckpt}")
        try:
            if bicubic:
                model, scale = None, int(cfg.scale or 4)
            else:
                loaded = load_for_tool(ckpt, cfg.get("backbone"), device)
                if cfg.get("scale") and int(cfg.scale) != loaded.scale:
                    raise ValueError(f"scale={cfg.scale} but {ckpt} is a x{loaded.scale} model; drop scale= or set "
                                     f"scale={loaded.scale}")
                model, scale = loaded.model, loaded.scale
            for protocol in protocols:
                existing = {} if cfg.force else load_results(run_dir, protocol)
                net = BicubicUpsampler(scale, protocol) if bicubic else model
                new = evaluate(net, sets, degradations, scale=scale, seed=cfg.seed, device=device, tile=cfg.tile,
                               cache_dir=cfg.get("cache_dir"), overlap=cfg.overlap, done=existing,
                               protocol=protocol, round_y=cfg.get("round_y", True), given_lr=given_lr)
                merged = merge_results(existing, new)
                json_path, csv_path = write_results(run_dir, merged, protocol)
                print(format_table(new))
                print(f"[eval] wrote {json_path} and {csv_path.name}")
                out.setdefault(run_dir, {})[protocol] = new
                scored.setdefault(protocol, {})[run_dir] = merged
        except Exception as e:  # noqa: BLE001 - any per-run failure (corrupt file, wrong weights, OOM)
            if len(runs) == 1:
                raise
            # One broken checkpoint must not cost the rest of a sweep its evaluation.
            print(f"[eval] FAILED {ckpt}: {type(e).__name__}: {e}")
            failed.append(f"{ckpt}: {e}")
            continue
    if len(runs) > 1:  # many models: one table to compare them, each row a model's set
        for protocol, per_run in scored.items():
            print(f"[eval] all {len(per_run)} models, {protocol} protocol:")
            print(format_table(combined_rows(per_run)))
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs could not be evaluated:\n" + "\n".join(failed))
    return out


def combined_rows(per_run: dict[Path, dict]) -> dict[str, dict]:
    """The results of several runs as the rows of one table: `<run folder name> <set>` (the path below their
    common folder when two runs share a name)."""
    folders = list(per_run)
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        common = Path(os.path.commonpath([str(f) for f in folders]))
        names = [f.relative_to(common).as_posix() for f in folders]
    return {f"{name} {set_name}": row for name, results in zip(names, per_run.values())
            for set_name, row in results.items()}


if __name__ == "__main__":
    import hydra

    from src.cli import one_line_errors, run

    @hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
    @one_line_errors("eval")
    def _entry(cfg: DictConfig) -> None:
        run_eval(cfg)

    run(_entry, "eval")  # errors as one line naming the key (the traceback with HYDRA_FULL_ERROR=1)
