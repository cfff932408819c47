"""Hydra plumbing shared by the entry points: run-folder naming and the sweep manifest."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src import runs


def write_sweep_report(config: DictConfig, sweep_dir: Path) -> None:
    """The paper-style tables of a finished sweep, in `<sweep>/report/`, and in W&B when the sweep logs there
    (a run of its own in the sweep's group, so the dashboard shows the comparison next to the jobs)."""
    from src.reports import build_report
    from src.reports.wandb_report import start_report_run

    wandb_cfg = (config.get("logger") or {}).get("wandb")
    run = None
    try:
        if wandb_cfg is not None:  # one report run per sweep folder, in its jobs' group; a rebuilt one replaces it
            from src.loggers import wandb_names

            runs_root = OmegaConf.select(config, "paths.runs", default=".")
            group = wandb_cfg.get("group") or wandb_names(sweep_dir, runs_root, in_sweep=False)[0]
            run = start_report_run({**OmegaConf.to_container(wandb_cfg), "group": group},
                                   config.get("name", "sweep"), sweep_dir)
        build_report([sweep_dir])
    except Exception as e:  # a report is a convenience: it must not turn a finished sweep into a failure
        print(f"[sweep] could not build the report for {sweep_dir}: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if run is not None:
            run.finish()


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_folder_name(task_overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """`sweep` plus the multirun's own command-line overrides, e.g. `sweep-dropout.p-0.1+0.5_seed-1`: the same
    command finds the same folder again (finished jobs are skipped, interrupted ones resume), and a different
    command gets a folder of its own."""
    kept = sorted(o for o in task_overrides
                  if runs.names_folder(o) and o.lstrip("+~").partition("=")[0] not in set(exclude_keys))
    return "sweep" + ("-" + runs.folder_name(kept) if kept else "")


def _quote_override(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_non_ascii(argv: Sequence[str]) -> list[str]:
    """Command-line overrides with a non-ASCII plain value quoted (`name=résumé` -> `name='résumé'`): Hydra's
    override grammar takes non-ASCII characters only inside quotes. Sweeps (`a,b`), lists and quoted values stay."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and not arg.startswith("-") and not value.isascii() and value[:1] not in "'\"[{(" \
                and not any(c in value for c in ",()"):
            arg = f"{key}={_quote_override(value)}"
        out.append(arg)
    return out


def expand_jobs(config: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in launch order, as Hydra's basic sweeper will expand them (None for other
    sweepers, which choose their jobs as they go)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def shared_keys(jobs: list[list[str]]) -> list[str]:
    """Keys that every job sets to the same value (the multirun's constant overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, values = OverridesParser.create(), {}
    for job in jobs:
        for o in parser.parse_overrides(job):
            values.setdefault(o.key_or_group, []).append(o.input_line.partition("=")[2])
    return sorted(k for k, v in values.items() if len(v) == len(jobs) and len(set(v)) == 1)


def preflight(config: DictConfig, jobs: list[list[str]]) -> dict[str, list[str]]:
    """Compose every job's config and build its model (no weights, no data); returns {job folder: overrides}.

    All invalid jobs are reported together, and the sweep stops before any job trains."""
    from hydra.core.global_hydra import GlobalHydra

    from src.preflight import check_job

    loader = GlobalHydra.instance().config_loader()
    planned, errors = {}, []
    for overrides in jobs:
        try:
            job_cfg = loader.load_sweep_config(config, list(overrides))
            planned[runs.run_id(job_cfg.hydra.job.override_dirname)] = list(overrides)
            check_job(job_cfg, list(job_cfg.hydra.overrides.task))
        except Exception as e:  # noqa: BLE001 - every kind of bad job is reported, not just the first
            errors.append(f"  {' '.join(overrides)}\n      {type(e).__name__}: {e}")
    if errors:
        print(f"[sweep] preflight: {len(errors)} of {len(jobs)} jobs cannot run; nothing was trained:\n"
              + "\n".join(errors) + "\n[sweep] fix: change or drop the values named above (each message says what "
              "is allowed, e.g. a dropout position that the backbone has, or backbone=srresnet for b8..b16) and "
              "run the command again", file=sys.stderr)
        sys.exit(2)
    return planned


def _exit_unless_writable(config: DictConfig) -> None:
    # Before Hydra creates the run folder and its log file there, which fails with a message about logging
    # handlers. SystemExit, because Hydra turns a callback's exceptions into warnings.
    try:
        runs.check_name(config.get("name"))
        runs.check_writable(config.paths.runs)
    except (PermissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


class ManifestCallback(Callback):
    """Gives each multirun its own sweep folder, checks every job before the first one trains, records the
    sweep's jobs in `manifest.json` at its start and their outcome at its end (from each job's `job.json`), and
    exits non-zero if any of them failed (failed jobs do not stop the others: src.train records them)."""

    def __init__(self) -> None:
        self.planned: dict[str, list[str]] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config)
        # A single run is checked as a sweep's jobs are, and before Hydra makes its folder: a run that cannot
        # start leaves nothing behind. Its data and device too, which a sweep checks on the machine that trains.
        from src.cli import exit_with
        from src.preflight import check_device, check_inputs, check_job

        try:
            check_job(config, list(config.hydra.overrides.task))
            check_device(config)
            check_inputs(config)
        except Exception as e:  # noqa: BLE001 - every kind of invalid run gets its one-line message
            exit_with(e)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config)
        # Every launcher composes each job again from the master config's hydra overrides, so what must hold for
        # all jobs (their sweep folder, how their folders are named) is added there.
        added = []
        exclude = list(config.hydra.job.config.override_dirname.exclude_keys)
        if not any(o.startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra):
            sweep_dir = str(Path(config.hydra.sweep.dir) / sweep_folder_name(config.hydra.overrides.task, exclude))
            added.append(("hydra.sweep.dir", sweep_dir, _quote_override(sweep_dir)))
        jobs = expand_jobs(config)
        if jobs is not None:
            # The sweep folder's name holds what all jobs share; a job folder is named by what varies.
            shared = [k for k in shared_keys(jobs) if k not in exclude and runs.names_folder(k)]
            if shared:
                keys = exclude + shared
                added.append(("hydra.job.config.override_dirname.exclude_keys", keys,
                              "[" + ",".join(_quote_override(k) for k in keys) + "]"))
        with read_write(config), open_dict(config):
            for key, value, text in added:
                OmegaConf.update(config, key, value, merge=False)
                config.hydra.overrides.hydra.append(f"{key}={text}")
        sweep_dir = Path(config.hydra.sweep.dir)
        shutil.rmtree(sweep_dir / runs.REFUSED, ignore_errors=True)  # refusals of an earlier run of this sweep
        if jobs is None:
            return
        self.planned = preflight(config, jobs)
        print(f"[sweep] {len(jobs)} jobs, checked; sweep folder {sweep_dir}", flush=True)
        runs.write_manifest(sweep_dir, config.get("name"),
                            {d: {"overrides": o, "dir": d, "status": "pending"} for d, o in self.planned.items()})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if self.planned is not None:
            names = sorted(self.planned)
        else:  # a sweeper that chose its own jobs: every job folder of this sweep
            names = sorted(p.parent.name for p in sweep_dir.glob(f"*/{runs.JOB}"))
        jobs = {}
        for name in names:
            job = runs.read_refusal(sweep_dir, name) or runs.read_job(sweep_dir / name)
            if job is None:
                job = {"overrides": (self.planned or {}).get(name, []), "dir": name, "status": "failed",
                       "error": "the job did not run (its process died before it could record a status)"}
            elif job.get("status") == "running":
                job = {**job, "status": "failed", "error": "the job stopped without recording an outcome"}
            jobs[name] = job
        failed = sorted(k for k, v in jobs.items() if v.get("status") != "completed")
        manifest = runs.write_manifest(sweep_dir, config.get("name"), jobs)
        report = sweep_dir / "report"
        if len(jobs) - len(failed) > 0:
            write_sweep_report(config, sweep_dir)
        print(f"[sweep] {len(jobs) - len(failed)} of {len(jobs)} jobs completed in {sweep_dir}\n"
              f"[sweep]   manifest: {manifest}" + (f"\n[sweep]   report:   {report / 'report.md'}"
                                                    if (report / "report.md").is_file() else "")
              + _wandb_line(sweep_dir), flush=True)
        if failed:
            for name in failed:
                print(f"[sweep] FAILED {name}: {jobs[name].get('error')}", file=sys.stderr)
            print(f"[sweep] {len(failed)} of {len(jobs)} jobs failed (see {manifest})", file=sys.stderr)
            sys.exit(1)


def _wandb_line(sweep_dir: Path) -> str:
    # Offline W&B runs: one per job (<job>/wandb) and one for the report (<sweep>/wandb); `wandb sync` uploads them.
    jobs = sorted(sweep_dir.glob("*/wandb/offline-run-*"))
    if not jobs and not (sweep_dir / "wandb").is_dir():
        return ""
    return (f"\n[sweep]   W&B:      {sweep_dir}/*/wandb ({len(jobs)} offline runs) and {sweep_dir / 'wandb'} (report); "
            f"upload with: wandb sync {sweep_dir}/*/wandb/offline-run-* {sweep_dir}/wandb/offline-run-*")
