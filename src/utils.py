"""Small helpers shared by the entry points: atomic writes, building from config, devices."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    # A crash mid-write must never leave a truncated results file or checkpoint behind: write a
    # temporary file in the same folder (same filesystem), fsync it, then rename over the target.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results and images should not be
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# An object holding no object or list, as json.dumps(indent=...) lays it out over several lines. Inside JSON strings
# a newline is always escaped, so every newline the pattern meets is layout.
_LEAF_OBJECT = re.compile(r"\{\n\s+([^{}\[\]]*?)\n\s*\}")


def json_lines(obj: Any) -> str:
    """JSON indented by 2 with each innermost object on one line, newline-terminated.

    A results file holds one small object of scores per test image; one line each keeps the file readable and its
    diffs per image, at about three quarters of the size of a fully indented file.

    Example:
        >>> print(json_lines({"Set5": {"baby": {"psnr": 30.5, "ssim": 0.9}}}), end="")
        {
          "Set5": {
            "baby": {"psnr": 30.5, "ssim": 0.9}
          }
        }
    """
    text = json.dumps(obj, indent=2)
    return _LEAF_OBJECT.sub(lambda m: "{" + re.sub(r"\n\s+", " ", m.group(1)) + "}", text) + "\n"


def build(cfg: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but a config error surfaces as the original exception.

    Hydra wraps whatever the target raises in an InstantiationException whose message buries the cause; our
    constructors already raise clear errors (naming the key, the value and what is allowed), so pass them on.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, (ValueError, FileNotFoundError, TypeError)):
            raise cause from None
        raise


def resolve_device(device: str) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda`, `cuda:N`; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device=cpu or device=auto")
    return torch.device(device)


# Memory layout per device, measured (`make bench`): on CPU, channels_last runs the suite's convolutions 1.2-2x
# faster (oneDNN's NHWC kernels), for training and inference alike. On CUDA it is unmeasured here, so a GPU keeps
# the contiguous layout until `make gpu-check` shows otherwise.
CHANNELS_LAST_SETTINGS = ("auto", True, False)


def use_channels_last(setting: Any, device: torch.device | str) -> bool:
    """Whether a network on `device` runs in channels_last for the `channels_last` setting (auto, true, false).

    Example:
        >>> use_channels_last("auto", "cpu"), use_channels_last(False, "cpu"), use_channels_last(True, "cuda")
        (True, False, True)
    """
    if setting not in CHANNELS_LAST_SETTINGS:
        raise ValueError(f"channels_last={setting!r}: allowed auto (the faster layout for the device: channels_last "
                         f"on CPU), true or false")
    if setting == "auto":
        return torch.device(device).type == "cpu"
    return bool(setting)


def apply_memory_format(net: torch.nn.Module, setting: Any, device: torch.device | str) -> torch.nn.Module:
    """`net` with its 4-D weights in the layout `setting` chooses for `device` (in place; returns `net`).

    The weights' layout is enough: a convolution with channels_last weights returns channels_last features, so
    the whole network runs in it whatever layout the input has. State-dict values and file formats are unchanged.
    """
    fmt = torch.channels_last if use_channels_last(setting, device) else torch.contiguous_format
    return net.to(memory_format=fmt)


def portable_path(path: str | os.PathLike | None, folder: str | os.PathLike) -> str | None:
    """`path` as committed files hold it: relative to `folder` (POSIX, `.` for the folder itself) when inside it,
    else None (a path on the machine that wrote the file means nothing elsewhere and exposes its layout)."""
    if path is None:
        return None
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(folder))).as_posix() or "."
    except ValueError:
        return None


def portable_tree(tree: Any, folder: str | os.PathLike) -> Any:
    """A JSON/YAML tree with every absolute path made `portable_path`; entries whose path lies outside `folder`
    are left out."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            v2 = portable_tree(v, folder)
            if v2 is not None or v is None:
                out[k] = v2
        return out
    if isinstance(tree, list):
        return [v2 for v in tree if (v2 := portable_tree(v, folder)) is not None or v is None]
    if isinstance(tree, str) and os.path.isabs(tree):
        return portable_path(tree, folder)
    return tree


def job_threads(n_jobs: int, env: Any = None, cores: int | None = None) -> int | None:
    """Intra-op threads for each of `n_jobs` jobs that a launcher runs side by side on this machine, or None to
    leave the libraries' default (one thread per core).

    Each job's torch and OpenCV would otherwise start one thread per core, and n_jobs x cores threads on `cores`
    cores wait on each other at every parallel region. An explicit OMP_NUM_THREADS wins. `n_jobs` counts as joblib does: -1 is one job per core, -2 one fewer, and so on.

    Example:
        >>> job_threads(2, env={}, cores=16), job_threads(2, env={}, cores=2), job_threads(-1, env={}, cores=8)
        (8, 1, 1)
        >>> job_threads(2, env={"OMP_NUM_THREADS": "4"}, cores=16) is None, job_threads(1, env={}, cores=16) is None
        (True, True)
    """
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // jobs) if jobs > 1 else None


def set_threads(n: int) -> None:
    """`n` intra-op threads for both libraries that run parallel regions in a job: torch and OpenCV (the test
    degradations and the real JPEG codec), so neither starts one thread per core behind the other's back."""
    import cv2

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
