"""What a run folder is: its files, its name, whether it is complete, its status, the config that ran, finding runs.

A run folder (one training job) holds:

    config.yaml              the config this run actually used (resolved, size=cpu narrowing included)
    .hydra/config.yaml       Hydra's composition, saved as the run took its folder (same values, interpolations kept)
    checkpoints/last.ckpt    the latest full training state (resuming starts here)
    train_done.json          training reached trainer.max_steps (global_step, fit seconds)
    results.json / .csv      scores under the literature protocol; results_official.json / .csv: the paper's own
    job.json                 the command-line overrides, status (running / completed / failed / interrupted), error,
                             git commit
    identity.json            the fingerprint of what the run learns from and how it is scored
    metrics.csv              training curves (CSV logger)
    visualization/           labelled LR / SR / HR validation crops, one image per validation
    .lock                    held by the one process writing the folder (PID and command inside)

A sweep folder holds one folder per job and `manifest.json` (the sweep's jobs and their status).

Folder names are made of the overrides with `-` between key and value and `_` between overrides
(`dropout.p=0.7 seed=1` -> `dropout.p-0.7_seed-1`): no `=`, `,`, brackets or quotes, so every path the suite
prints can be passed back to any tool unquoted. The exact overrides are kept in job.json.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from src.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

CKPT = Path("checkpoints") / "last.ckpt"
WEIGHTS = "weights.safetensors"  # a published run's final weights, exported from its checkpoint
CONFIG = "config.yaml"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
DONE = "train_done.json"
JOB = "job.json"
IDENTITY = "identity.json"
MANIFEST = "manifest.json"
METRICS = "metrics.csv"
LOCK = ".lock"
RESULTS = {"literature": "results.json", "official": "results_official.json"}

_MARKERS = (JOB, CONFIG, str(HYDRA_CONFIG), str(CKPT))


# --- names ---------------------------------------------------------------------------------------------------
def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets and quotes (list values such as `[clean,noise]` stay whole)."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p]


def _slug(text: str) -> str:
    # Only characters that every shell and Hydra's override grammar take unquoted.
    text = text.replace("/", ".").replace(",", "+").replace("=", "-").replace("~", "no-")
    return re.sub(r"[^A-Za-z0-9._+\-]", "", text)


def folder_name(overrides: Iterable[str], empty: str = "default", max_len: int = 120) -> str:
    """A folder name from `key=value` overrides: `dropout.p=0.7 seed=1` -> `dropout.p-0.7_seed-1`.

    List values keep their items joined by `+` (`eval.degradations=[clean,noise]` -> `...-clean+noise`). Names
    longer than `max_len` are cut and end in a hash of the full text, so they stay unique and stable.
    """
    parts = []
    for item in overrides:
        key, _, value = item.partition("=")
        parts.append(_slug(key) + ("-" + _slug(value) if _ else ""))
    name = "_".join(p for p in parts if p) or empty
    if len(name) > max_len:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:max_len - 9]}-{digest}"
    return name


def run_id(override_dirname: str) -> str:
    """The job folder name from Hydra's `job.override_dirname` (overrides joined by `,`, key and value by `=`),
    less the overrides that do not name a folder (names_folder)."""
    return folder_name([o for o in _split_top(override_dirname) if names_folder(o)])


# --- paths ---------------------------------------------------------------------------------------------------
def checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CKPT


def step_weights(run_dir: str | os.PathLike, step: int) -> Path:
    """The weights kept at an intermediate step (`ckpt_keep_steps`): `checkpoints/step-000250.safetensors`."""
    return Path(run_dir) / CKPT.parent / f"step-{int(step):06d}.safetensors"


def final_weights(run_dir: str | os.PathLike) -> Path:
    """A published run's final weights (`publish` exports them from checkpoints/last.ckpt)."""
    return Path(run_dir) / WEIGHTS


def results_file(run_dir: str | os.PathLike, protocol: str = "literature") -> Path:
    if protocol not in RESULTS:
        raise ValueError(f"protocol={protocol!r}; allowed: {', '.join(RESULTS)}")
    return Path(run_dir) / RESULTS[protocol]


def is_run_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return any((path / m).is_file() for m in _MARKERS)


def run_of_checkpoint(path: str | os.PathLike) -> Path | None:
    """The run folder a run's weights file belongs to (`<run>/checkpoints/*`, a published `<run>/weights.safetensors`),
    else None. Turning what a user names into weights files is `src.models.loading.weights_file`'s."""
    path = Path(path)
    if path.parent.name == CKPT.parent.name:
        return path.parent.parent
    return path.parent if path.name == WEIGHTS else None


def check_writable(folder: str | os.PathLike, key: str = "paths.runs") -> Path:
    """Create `folder` if needed and prove a file can be written there; else a clear error naming the key."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{key}={folder} is not a writable folder ({e.strerror or e}); runs are written "
                              f"there: set {key}=<folder> or the SR_RUNS_DIR environment variable to a folder you "
                              f"can write") from None
    return folder


NAME_MAX_BYTES = 255  # what Linux filesystems allow for one folder name


def check_name(name: Any) -> None:
    """`name=` becomes a folder (or folders, split at /): each part at most NAME_MAX_BYTES bytes, else a ValueError
    naming the key, before Hydra tries to create it."""
    too_long = [part for part in str(name).split("/") if len(part.encode()) > NAME_MAX_BYTES]
    if too_long:
        raise ValueError(f"name={str(name)[:40]}... is {len(too_long[0].encode())} bytes long; a run's name becomes a "
                         f"folder name, at most {NAME_MAX_BYTES} bytes: choose a shorter name=")


# --- state files ---------------------------------------------------------------------------------------------
def read_state(path: str | os.PathLike) -> Any | None:
    """A JSON state file (results, completion marker, job, manifest), or None when absent.

    A corrupt one (a crash of another tool, a hand edit) is moved aside to `<name>.corrupt-<time>` with a warning
    naming it, and reads as absent: the run continues from what is valid instead of failing for good.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        warnings.warn(f"{path} was unreadable ({type(e).__name__}: {e}); moved it to {aside.name} and carried on "
                      f"without it", RuntimeWarning, stacklevel=2)
        return None


def training_done(run_dir: str | os.PathLike) -> dict | None:
    return read_state(Path(run_dir) / DONE)


def mark_trained(run_dir: str | os.PathLike, global_step: int, fit_seconds: float, **facts: Any) -> Path:
    """`train_done.json`: the step reached and the fit time, plus `facts` about how it trained (the batch split)."""
    return atomic_write_json(Path(run_dir) / DONE, {"global_step": int(global_step),
                                                     "fit_seconds": round(float(fit_seconds), 1), **facts})


def invalidate(run_dir: str | os.PathLike, checkpoint: bool = False) -> list[Path]:
    """Remove the completion marker and results (and the checkpoint): they describe weights about to be replaced.

    Called before a forced (or non-resuming) retrain touches the checkpoint, so an interrupted retrain can never
    leave old results next to new weights, nor old weights under a new identity.
    """
    run_dir, removed = Path(run_dir), []
    names = [DONE] + [n for r in RESULTS.values() for n in (r, r.replace(".json", ".csv"))]
    names += [str(CKPT)] if checkpoint else []
    for name in names:  # completion marker first: without it the run is incomplete whatever else remains
        path = run_dir / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def is_complete(run_dir: str | os.PathLike, max_steps: int, test_sets: Sequence[str],
                degradations: Sequence[str]) -> bool:
    """Training reached `max_steps` and results.json scores every set under every degradation."""
    done = training_done(run_dir)
    if not done or done.get("global_step", -1) < max_steps:
        return False
    have = read_state(results_file(run_dir)) or {}
    return all(d in have.get(s, {}) for s in test_sets for d in degradations)


# --- the roles of config keys ------------------------------------------------------------------------------
class Role(NamedTuple):
    """Where a config key counts. Each list the suite needs (what a run is, how its folder is named, which runs are
    seeds of one setting) is derived from KEY_ROLES, so they cannot drift apart."""
    result: bool  # changes what a run learns or how it is scored: part of the run's identity
    folder: bool  # part of the run folder's name (a key out of the identity must be out of the name too)
    seeds: bool   # runs differing in it are different settings in reports (False: averaged as seeds of one)


_BOOK = Role(result=False, folder=False, seeds=False)
_SEED = Role(result=True, folder=True, seeds=False)
# Keys (and, through prefixes, everything under them: `logger.wandb.entity` is a `logger` key) that do not have
# all three roles; any other key has them all. Bookkeeping changes neither what a run learns nor how it is scored:
# where files go, logging, hardware placement, speed options, and evaluation settings that results files keep
# apart (degradations and protocols are keys in them; tiling overlaps enough to be seamless; the validation metric
# is logged under its own name). data.root is replaced in the identity by the content of the image lists.
KEY_ROLES: dict[str, Role] = {
    **dict.fromkeys(("name", "paths", "logger", "callbacks", "resume", "force", "ckpt_every_n_steps",
                     "ckpt_keep_steps", "channels_last", "compile", "preemption", "hydra", "data.root",
                     "data.num_workers", "data.cache_dir", "trainer.devices", "trainer.accelerator",
                     "trainer.strategy", "trainer.num_nodes", "trainer.enable_progress_bar",
                     "trainer.log_every_n_steps", "trainer.enable_model_summary", "eval.degradations", "eval.tile",
                     "eval.protocol", "eval.reference", "module.val_metric"), _BOOK),
    **dict.fromkeys(("seed", "data.seed", "module.seed"), _SEED),
    # a shrinkage control's source run and its chosen blend weight differ from seed to seed of one control
    **dict.fromkeys(("control.of", "control.a"), _SEED),
    "eval": _SEED,  # the rest of the test protocol (its seed, Y rounding): results of other settings stay apart
}
# Config groups chosen on the command line whose choice is left out of the folder name: the values they set are
# in the config, so the identity still tells them apart (an experiment also sets `name`, the folder above).
# Only the choice itself: `trainer.max_steps=...` is a key, and names the folder.
UNNAMED_GROUPS = ("trainer", "experiment")


def role(key: str) -> Role:
    """The role of a config key or command-line override key (`+logger.wandb.offline`, `~callbacks.rich`,
    `hydra/launcher`): that of its longest listed prefix, else all three roles."""
    key = key.lstrip("+~").replace("/", ".")
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = KEY_ROLES.get(".".join(parts[:n]))
        if found is not None:
            return found
    return Role(True, True, True)


def names_folder(override: str) -> bool:
    """Whether a command-line override (`key=value`) is part of the run folder's name."""
    key = override.partition("=")[0]
    return role(key).folder and key.lstrip("+~") not in UNNAMED_GROUPS


def keys_without(field: str) -> tuple[str, ...]:
    """The listed keys that lack a role ("result", "folder" or "seeds"), for removing them from a config."""
    return tuple(k for k, r in KEY_ROLES.items() if not getattr(r, field))


def drop_keys(cfg, keys: Iterable[str]):
    """A copy of an OmegaConf config without `keys` (dotted; a key takes everything under it), unresolved:
    some of them interpolate Hydra's runtime, which is gone when a run folder is read back."""
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        for key in keys:
            *parents, last = key.split(".")
            node = OmegaConf.select(cfg, ".".join(parents)) if parents else cfg
            if node is not None and last in node:
                del node[last]
    return cfg


# --- identity ----------------------------------------------------------------------------------------------
BOOKKEEPING = keys_without("result")
_HEAD_BYTES = 1 << 16


def images_digest(paths: Sequence[os.PathLike]) -> dict:
    """{n, sha1} over the images' names, sizes and first 64 KiB: cheap at start even for DIV2K (800 files), and
    a different photo, a re-encoded one or a changed list all change it."""
    h = hashlib.sha1()
    for p in sorted(map(Path, paths), key=lambda q: (q.parent.parent.name, q.name)):
        h.update(f"{p.parent.parent.name}/{p.name}:{p.stat().st_size}:".encode())
        with open(p, "rb") as f:
            h.update(f.read(_HEAD_BYTES))
    return {"n": len(paths), "sha1": h.hexdigest()}


def fingerprint(cfg, data_root: os.PathLike | None = None,
                data: Mapping[str, Sequence[os.PathLike]] | None = None) -> dict:
    """What a run is: the resolved config minus BOOKKEEPING, plus the digest of each image list it reads."""
    from omegaconf import OmegaConf

    ident = {"config": OmegaConf.to_container(drop_keys(cfg, BOOKKEEPING), resolve=True)}
    if data is not None:
        ident["data"] = {split: images_digest(paths) for split, paths in data.items()}
        ident["data_root"] = str(data_root)  # informative; the digests are what is compared
    return ident


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def identity_difference(old: Mapping, new: Mapping) -> list[str]:
    """`key: old -> new` lines for what differs (the informative data_root is shown only beside a data change)."""
    a, b = _flatten({k: v for k, v in old.items() if k != "data_root"}), \
        _flatten({k: v for k, v in new.items() if k != "data_root"})
    lines = [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    if any(line.startswith("data.") for line in lines) and old.get("data_root") != new.get("data_root"):
        lines.append(f"data root: {old.get('data_root')} -> {new.get('data_root')}")
    return lines


class RunIdentityError(ValueError):
    pass


def published_difference(published: str | os.PathLike, run_dir: str | os.PathLike) -> list[str]:
    """`identity_difference` between a published run and a run folder (say, a retraining of it): both identities
    as published (`portable_file`), less the keys that have become bookkeeping since. Empty when the run folder
    trained what the published run did, on the same images. A missing identity file is a FileNotFoundError."""
    recorded = []
    for folder in (Path(published), Path(run_dir)):
        path = folder / IDENTITY
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; which run this folder holds cannot be told")
        recorded.append(_as_recorded_now(json.loads(portable_file(path, folder))))
    return identity_difference(*recorded)


def _as_recorded_now(ident: dict) -> dict:
    """A recorded identity less the keys that have become bookkeeping since it was written, so that adding a key
    to KEY_ROLES never refuses a run recorded before (its folder name already left the key out)."""
    from omegaconf import OmegaConf

    if not isinstance(ident.get("config"), dict):
        return ident
    config = OmegaConf.to_container(drop_keys(OmegaConf.create(ident["config"]), BOOKKEEPING), resolve=False)
    return {**ident, "config": config}


def claim_identity(run_dir: str | os.PathLike, ident: Mapping, force: bool = False) -> None:
    """Record the run's identity, refusing a folder that holds a different run unless `force` (which retrains it
    from scratch: completion, results and checkpoint are removed first)."""
    run_dir = Path(run_dir)
    try:
        old = json.loads((run_dir / IDENTITY).read_text())
    except FileNotFoundError:
        old = None
    except (OSError, ValueError) as e:  # never moved aside like other state files: that would skip the check
        if not force:
            raise RunIdentityError(
                f"{run_dir / IDENTITY} is unreadable ({type(e).__name__}: {e}), so whether this folder holds the same "
                f"run cannot be told; it was left as it was. Run under another name=<new name>, or retrain this "
                f"folder from scratch with force=true (deleting its checkpoint and results).") from None
        old = {}
    if old:
        old = _as_recorded_now(old)
    if old is not None and old != json.loads(json.dumps(ident)):
        diff = identity_difference(old, ident)
        if diff and not force:
            raise RunIdentityError(
                f"{run_dir} holds a different run, left as it was; what differs (recorded -> now):\n  "
                + "\n  ".join(diff) + "\nTo keep both, give this run its own folder: name=<new name> (or another "
                "paths.runs). force=true instead retrains this folder from scratch, deleting its checkpoint and "
                "results.")
        if diff:
            invalidate(run_dir, checkpoint=True)
    atomic_write_json(run_dir / IDENTITY, ident)


# --- one writer per run folder ------------------------------------------------------------------------------
class RunFolderBusy(RuntimeError):
    pass


# The holder of a lock touches it every LOCK_LEASE_S / 10 seconds from a background thread. A lock not touched for
# LOCK_LEASE_S is stale whatever host wrote it: a job killed on one node can then be rerun on another. Ten missed
# renewals leave room for a slow shared filesystem; on the holder's own host a dead PID is stale at once.
LOCK_LEASE_S = 300.0


def _command_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def _slurm_incarnation() -> tuple[str | None, int]:
    # A requeued SLURM job keeps its id and counts up SLURM_RESTART_COUNT: the same id with a higher count is
    # this job started again, so its earlier incarnation (whatever node it ran on) is gone.
    if "SLURM_JOB_ID" not in os.environ and "SLURM_ARRAY_JOB_ID" not in os.environ:
        return None, 0  # not a SLURM job: no need to import Lightning for src.cluster
    from src.cluster import slurm_job_id

    return slurm_job_id(), int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)


def _lock_state(path: Path) -> tuple[dict | None, float]:
    """(holder record, seconds since its last renewal); the record is {} when unreadable, None when there is no
    lock. A lock that is a folder is a clear error (nothing in the suite makes one)."""
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None, 0.0
    except IsADirectoryError:
        raise RunFolderBusy(f"{path} is a folder, not a lock file; remove it (rm -r {path}) and run again") from None
    except (OSError, ValueError):
        return {}, age
    return (holder if isinstance(holder, dict) else {}), age


def _lease(holder: Mapping) -> float:
    lease = holder.get("lease_s")
    return float(lease) if isinstance(lease, (int, float)) and lease > 0 else LOCK_LEASE_S


def _why_stale(holder: Mapping, age: float) -> str | None:
    """Why the lock of `holder`, renewed `age` seconds ago, no longer holds; None while it holds. An unreadable
    lock ({}) is judged by its lease alone: its writer may be alive."""
    lease = _lease(holder)
    if age > lease:
        return f"not renewed for {age:.0f} s (lease {lease:.0f} s)"
    if not holder:
        return None
    job, restart = _slurm_incarnation()
    if job and holder.get("slurm_job") == job and int(holder.get("slurm_restart", 0)) < restart:
        return f"its SLURM job {job} was requeued"
    if holder.get("host") != socket.gethostname():
        return None  # another machine's processes cannot be looked at: the lease decides
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "no longer running"
    except PermissionError:
        return None
    # A live PID that runs another command is a recycled PID, not the holder.
    current = _command_of(pid)
    return None if current is None or holder.get("command") in (None, current) else "its PID now runs another command"


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """The process holding `run_dir`'s lock (pid, host, command, since), or None when it is free or stale."""
    holder, age = _lock_state(Path(run_dir) / LOCK)
    return holder if holder and _why_stale(holder, age) is None else None


@contextmanager
def _breaking(run_dir: Path) -> Iterator[None]:
    # Judging a lock and removing it (a takeover, or the holder's release) is one step under flock on the run
    # folder: two processes that both found a stale lock would otherwise each remove it, the second removing the
    # first one's fresh lock. The kernel drops flock with its process, so a crash here leaves nothing behind.
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without flock: the lease and the atomic link still hold
        yield
    finally:
        os.close(fd)


def _create_lock(path: Path, record: dict) -> bool:
    """Put `record` in place as `path` complete or not at all (written to a temporary file, then hard-linked, which
    fails when `path` exists); False when another lock is there."""
    tmp = temporary_name(path)
    try:
        atomic_write_json(tmp, record)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EOPNOTSUPP):
                raise
            # No hard links here (some network/FUSE filesystems): exclusive create under the breaking lock, which
            # readers judging the lock also take, so none reads it half-written.
            with _breaking(path.parent):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    json.dump(record, f)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _renew(path: Path, token: str, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            holder, _ = _lock_state(path)
            if holder and holder.get("token") == token:
                os.utime(path)
        except (OSError, RunFolderBusy):
            pass  # a missed renewal costs nothing until the lease runs out; the next one may succeed


@contextmanager
def lock(run_dir: str | os.PathLike, lease_s: float = LOCK_LEASE_S) -> Iterator[Path]:
    """Hold `<run>/.lock` while writing the folder.

    The lock file appears complete (PID, host, command, SLURM job) or not at all, and a background thread renews it
    every `lease_s / 10` seconds. A second process gets RunFolderBusy naming the holder; a lock is taken over (with
    a warning saying why) when it was not renewed for `lease_s`, when its PID on this host is gone or runs another
    command, or when its SLURM job is this job requeued. An unreadable lock whose lease is fresh is never taken.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    job, restart = _slurm_incarnation()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_of(os.getpid()) or " ".join(sys.argv),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "lease_s": float(lease_s), "token": uuid.uuid4().hex,
          "slurm_job": job, "slurm_restart": restart}
    while not _create_lock(path, me):
        with _breaking(run_dir):
            holder, age = _lock_state(path)
            if holder is None:
                continue  # released meanwhile: try again
            why = _why_stale(holder, age)
            if why is None:
                who = (f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}: "
                       f"{holder.get('command')}" if holder else "a process whose lock file is unreadable")
                raise RunFolderBusy(
                    f"{run_dir} is in use by {who} (lock renewed {age:.0f} s ago)\nWait for it to finish (or stop it); "
                    f"a lock not renewed for {_lease(holder):.0f} s is taken over by itself.")
            warnings.warn(f"{path}: taking over the lock of PID {holder.get('pid')} on {holder.get('host')} "
                          f"({holder.get('command')}): {why}", RuntimeWarning, stacklevel=3)
            path.unlink()
    stop = threading.Event()
    beat = threading.Thread(target=_renew, args=(path, me["token"], float(lease_s) / 10, stop), daemon=True,
                            name=f"lock-renewal {run_dir.name}")
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        with _breaking(run_dir):
            try:
                holder, _ = _lock_state(path)
                if holder and holder.get("token") == me["token"]:
                    path.unlink()
            except (OSError, RunFolderBusy):
                pass


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden sibling name no other process or call uses, for writing `path` and renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


# --- job status and manifests -------------------------------------------------------------------------------
_GIT: dict | None = None


def git_state() -> dict | None:
    """{commit, dirty} of the checkout the suite runs from (dirty: tracked files differ from the commit), or None
    outside a git checkout; asked once per process."""
    global _GIT
    if _GIT is None:
        import subprocess

        repo = Path(__file__).resolve().parents[1]
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            changes = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            _GIT = {"commit": commit, "dirty": bool(changes)}
        except (OSError, subprocess.SubprocessError):
            _GIT = {}
    return _GIT or None


# interrupted: stopped on a signal after writing its checkpoint; the same command resumes it.
JOB_STATUSES = ("running", "completed", "failed", "interrupted")

def write_job_status(run_dir: str | os.PathLike, overrides: Sequence[str], status: str = "completed",
                     error: BaseException | str | None = None) -> Path:
    """`job.json`: the run's overrides and status (and error). One file per job, so parallel launchers never
    race on a shared file."""
    if status not in JOB_STATUSES:
        raise ValueError(f"status={status!r}; allowed: {', '.join(JOB_STATUSES)}")
    entry = {"overrides": list(overrides), "dir": Path(run_dir).name, "status": status,
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": git_state()}
    if status == "running":
        entry["pid"] = os.getpid()
    if error is not None:
        entry["error"] = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return atomic_write_json(Path(run_dir) / JOB, entry)


def read_job(run_dir: str | os.PathLike) -> dict | None:
    return read_state(Path(run_dir) / JOB)


# A sweep job refused by its folder (it holds another run) is noted beside the jobs, never in the refused folder:
# the run there stays exactly as it was, job.json included.
REFUSED = ".refused"


def record_refusal(run_dir: str | os.PathLike, overrides: Sequence[str], error: BaseException,
                   status: str = "refused") -> Path:
    """A sweep job's outcome kept beside its folder, not in it: the folder belongs to the run it already holds
    (refused for another run's folder, or failed before it was admitted there); the sweep's manifest reads it."""
    run_dir = Path(run_dir)
    return atomic_write_json(run_dir.parent / REFUSED / f"{run_dir.name}.json",
                             {"overrides": list(overrides), "dir": run_dir.name, "status": status,
                              "error": f"{type(error).__name__}: {error}"})


def read_refusal(sweep_dir: str | os.PathLike, name: str) -> dict | None:
    return read_state(Path(sweep_dir) / REFUSED / f"{name}.json")


def write_manifest(sweep_dir: str | os.PathLike, name: str | None, jobs: dict[str, dict]) -> Path:
    """`manifest.json`: {name, jobs: {folder: job.json content}, failed: [folders not completed]}."""
    failed = sorted(k for k, v in jobs.items() if v.get("status") != "completed")
    return atomic_write_json(Path(sweep_dir) / MANIFEST, {"name": name, "jobs": jobs, "failed": failed})


def read_manifest(sweep_dir: str | os.PathLike) -> dict | None:
    return read_state(Path(sweep_dir) / MANIFEST)


# --- the config that ran -------------------------------------------------------------------------------------
def save_run_config(run_dir: str | os.PathLike, cfg) -> Path:
    from omegaconf import OmegaConf

    return atomic_write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def save_launch_record(run_dir: str | os.PathLike, cfg, hydra_cfg) -> Path:
    """Hydra's record of a launch, as Hydra writes it at the start of a job (`.hydra/config.yaml`: the composed
    config, interpolations kept; `hydra.yaml`; `overrides.yaml`), but written by src.train once the run holds its
    folder (Hydra's own writing is off: hydra.output_subdir is null), so a refused launch leaves the folder as it
    was. `hydra_cfg` is the root node holding `hydra`, as `HydraConfig.instance().cfg`."""
    from omegaconf import OmegaConf

    folder = Path(run_dir) / HYDRA_CONFIG.parent
    for name, node in ((HYDRA_CONFIG.name, cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        atomic_write_text(folder / name, OmegaConf.to_yaml(node))
    return folder


def run_config_path(run_dir: str | os.PathLike) -> Path | None:
    """The file of the config the run actually used: `config.yaml`, else (older runs) `.hydra/config.yaml`."""
    run_dir = Path(run_dir)
    return next((p for p in (run_dir / CONFIG, run_dir / HYDRA_CONFIG) if p.is_file()), None)


def load_run_config(run_dir: str | os.PathLike):
    """The config the run actually used (see `run_config_path`)."""
    from omegaconf import OmegaConf

    path = run_config_path(run_dir)
    if path is not None:
        return OmegaConf.load(path)
    raise FileNotFoundError(f"{run_dir}: neither {CONFIG} nor {HYDRA_CONFIG}; cannot tell what this run trained")


# --- publishing results ----------------------------------------------------------------------------------------
# What a report needs from a run, and nothing that is large or machine-specific (checkpoints, W&B folders, logs).
PUBLISHED = (CONFIG, JOB, DONE, IDENTITY, METRICS, RESULTS["literature"], "results.csv", RESULTS["official"],
             "results_official.csv")
PUBLISH_MAX_BYTES = 500_000
# A published run's final weights (WEIGHTS, exported from its checkpoint) and the intermediate ones it kept
# (`ckpt_keep_steps`): the reduced-scale SRResNets are 0.6 MB (4 blocks) and 1.6 MB (16 blocks), so 2 MB per file
# admits them and refuses a full model; the reduced RRDB (3.0 MB in float32) publishes at half precision (1.5 MB).
WEIGHTS_MAX_BYTES = 2_000_000


class PublishError(ValueError):
    pass


def _plain_name(name: Any, where: Any) -> str:
    """`name` when it is one folder name (no separator, not `.` or `..`), else a PublishError naming `where`."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise PublishError(f"{where}: {name!r} is not a folder name (no /, not . or ..); a crafted or damaged "
                           f"manifest? Nothing was published from it")
    return name


def export_weights(export: Callable[[Path, Path], Path], source: Path, out: Path,
                   convert: Callable[[Path], bytes] | None = None, doing: str = "publishing",
                   advice: str = "") -> Path:
    """`export` the weights of `source` to `out`, rewritten by `convert` when given, and hold them to
    WEIGHTS_MAX_BYTES: over it, or on any error, `out` is removed, and over it a PublishError names `source`, the
    size and `advice`."""
    weights = export(source, out)
    try:
        if convert is not None:
            atomic_write_bytes(weights, convert(weights))
        size = weights.stat().st_size
        if size > WEIGHTS_MAX_BYTES:
            raise PublishError(f"not {doing} {source}: its weights are {size:,} bytes, over {WEIGHTS_MAX_BYTES:,}"
                               + (f"; {advice}" if advice else ""))
    except BaseException:
        weights.unlink(missing_ok=True)  # neither an over-cap file nor the unconverted export is what was asked for
        raise
    return weights


def published_name(run_dir: Path) -> str:
    """The folder a run is published under: the name of all its job's overrides, the multirun's constant ones
    included (its job folder leaves those to the sweep folder's name: `-m dropout.p=0,0.5 seed=2` names its jobs
    `dropout.p-0.0`, a one-job multirun `default`), so that the runs of two multiruns that differ in a constant
    (seed=1, then seed=2) never land in, and overwrite, one published folder. The name is the one a job folder
    gets (`run_id`, Hydra's sorted overrides); a run outside a sweep keeps its folder name."""
    job = ((read_manifest(run_dir.parent) or {}).get("jobs") or {}).get(run_dir.name)
    overrides = job.get("overrides") if isinstance(job, dict) else None
    if not overrides or not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return run_dir.name
    return run_id(",".join(sorted(overrides)))


def publishable_files(run_dir: Path) -> list[Path]:
    """The files of PUBLISHED that `run_dir` holds, checked before anything is copied: each a regular file of the
    run folder itself (a symlink could carry any file of the machine into a folder meant for git), at most
    PUBLISH_MAX_BYTES, and each JSON file parses (a corrupt results file would be published as a result)."""
    if run_dir.is_symlink():
        raise PublishError(f"{run_dir} is a symlink; only run folders themselves are published")
    files = []
    for name in PUBLISHED:
        path = run_dir / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise PublishError(f"{path} is not a regular file (a symlink or a folder); only a run's own files are "
                               f"published")
        if info.st_size > PUBLISH_MAX_BYTES:
            raise PublishError(f"{path} ({info.st_size:,} bytes) is over the {PUBLISH_MAX_BYTES:,}-byte cap on "
                               f"published files; nothing of {run_dir.name} was published")
        if path.suffix == ".json":
            try:
                json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError) as e:
                raise PublishError(f"{path} does not parse ({e}); nothing of {run_dir.name} was published: rerun "
                                   f"its evaluation or remove the run") from None
        files.append(path)
    return files


def publish(target: str | os.PathLike, dest: str | os.PathLike,
            export: Callable[[Path, Path], Path] | None = None,
            convert: Callable[[Path], bytes] | None = None) -> list[Path]:
    """Copy the small result files of every finished run in `target` (a run or sweep folder, see `find_runs`) to
    `dest/<published_name>/`, so results can be committed and reports rebuilt without the runs.

    With `export` (`src.models.loading.export_safetensors`), the run's final weights go along as `WEIGHTS`,
    exported from its checkpoint, and so do the safetensors it kept at chosen steps (checkpoints/step-*.safetensors):
    a published run can be re-scored and analysed without the machine that trained it. With `convert`
    (`src.models.loading.half_precision`) each of these weights files is published as `convert` rewrites it.

    A run without results.json, or one whose process still holds its folder (it may be writing the other protocol's
    results and its job.json still says running), is left out with a warning naming it. A result file over 500 KB,
    a weights file over 2 MB (as published, after `convert`), a symlink, a JSON file that does not parse or a
    manifest entry that is not a folder name stops the publish with a PublishError naming it, before anything of
    that run is copied. Files are written atomically; copying again replaces them; config.yaml and identity.json
    carry no path of this machine (`portable_file`). Returns the published folders."""
    out = []
    advice = "publish its results alone (src.report weights=false)" if convert else (
        "publish it at half precision (src.report weights=half) or its results alone (weights=false)")
    for run_dir in find_runs(target):
        if not (run_dir / RESULTS["literature"]).is_file() and not (run_dir / RESULTS["official"]).is_file():
            warnings.warn(f"{run_dir}: no results file yet (unfinished or failed run), not published")
            continue
        holder = lock_holder(run_dir)
        if holder:
            warnings.warn(f"{run_dir}: still running (PID {holder.get('pid')} holds {LOCK}), not published; publish "
                          "again when it has finished")
            continue
        files = publishable_files(run_dir)
        steps = {}
        for f in sorted((run_dir / CKPT.parent).glob("step-*.safetensors")) if export is not None else []:
            data = None if f.is_symlink() else convert(f) if convert else f.read_bytes()
            if data is None or len(data) > WEIGHTS_MAX_BYTES:
                size = f.lstat().st_size if data is None else len(data)  # as it would be published
                raise PublishError(f"{f} ({size:,} bytes) is a symlink or over the "
                                   f"{WEIGHTS_MAX_BYTES:,}-byte cap on published weights; nothing of "
                                   f"{run_dir.name} was published; {advice}")
            steps[f.name] = data
        folder = Path(dest) / _plain_name(published_name(run_dir), run_dir)
        if export is not None and checkpoint(run_dir).is_file():
            export_weights(export, checkpoint(run_dir), final_weights(folder), convert, advice=advice)
        for f in files:
            atomic_write_bytes(folder / f.name, portable_file(f, run_dir))
        for name, data in steps.items():
            atomic_write_bytes(folder / CKPT.parent / name, data)
        out.append(folder)
    return out


def portable_file(path: Path, run_dir: Path) -> bytes:
    """A run's file as it is published: config.yaml and identity.json with the run's own paths (the loggers'
    save_dir) relative to the run folder and the machine's other paths (data root, cache, runs folder) left out;
    other files as they are."""
    from src.utils import portable_tree

    if path.name == CONFIG:
        import yaml
        from omegaconf import OmegaConf

        tree = portable_tree(yaml.safe_load(path.read_text()), run_dir)
        return OmegaConf.to_yaml(OmegaConf.create(tree)).encode()
    if path.name == IDENTITY:
        return (json.dumps(portable_tree(json.loads(path.read_text()), run_dir), indent=2) + "\n").encode()
    return path.read_bytes()


# --- finding runs --------------------------------------------------------------------------------------------
def find_runs(target: str | os.PathLike) -> list[Path]:
    """The run folders `target` names: itself if it is a run folder; a sweep's jobs as its manifest lists them;
    else every run folder below it (outermost only: a run's own subfolders are not runs).

    Sorted by path. Raises FileNotFoundError naming the path when it does not exist or holds no run.
    """
    target = Path(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no such folder")
    if is_run_folder(target):
        return [target]
    manifest = read_manifest(target)
    if manifest and manifest.get("jobs"):
        return sorted(target / _plain_name(job.get("dir", key) if isinstance(job, dict) else key, target / MANIFEST)
                      for key, job in manifest["jobs"].items())
    found = set()
    for marker in _MARKERS:
        depth = len(Path(marker).parts)
        for hit in target.rglob(marker):
            found.add(hit.parents[depth - 1])
    runs = sorted(p for p in found if not any(a in found for a in p.parents))
    if not runs:
        raise FileNotFoundError(f"{target}: no run folder in it or below it (a run folder holds {JOB}, {CONFIG} "
                                f"or {CKPT})")
    return runs
