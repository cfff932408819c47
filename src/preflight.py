"""Checks on a training config that run before anything trains: values the code would accept silently or explain
badly, keys added with `+` that nothing reads, and whether the model builds (cheaply, without weights or data).

`src.train` calls `check_values` at the start of every run; a multirun calls `check_job` on every job before its
first job trains, so an invalid combination fails in seconds, not after hours of other jobs.
"""
from __future__ import annotations

import difflib
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

# (key, smallest allowed value, what it means): integers that must be positive.
_POSITIVE = (("trainer.max_steps", "training steps; the run trains this many optimizer steps"),
             ("data.batch_size", "LR patches per step over all devices"),
             ("data.lr_patch_size", "side of an LR training patch in px (HR = lr_patch_size * scale)"))


def check_values(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Raise ValueError naming the key, the value and what is allowed, for values that would train nonsense."""
    for key, meaning in _POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            extra = " (-1 would mean 'train forever' to Lightning)" if key == "trainer.max_steps" else ""
            raise ValueError(f"{key}={value!r}: must be an integer >= 1 ({meaning}){extra}")
    check_training_crops(cfg)
    check_batch_split(cfg)
    check_added_keys(cfg, overrides)
    if "channels_last" in cfg:
        from src.utils import use_channels_last

        use_channels_last(cfg.channels_last, "cpu")  # raises naming the key and the allowed values


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch_split(cfg: DictConfig) -> None:
    """data.batch_size (global) splits evenly over trainer.devices x trainer.num_nodes, where both are known now
    (devices=-1 or auto is known only once Lightning has counted the GPUs; the datamodule checks again then)."""
    from src.data.datamodule import per_device_batch

    batch, devices = OmegaConf.select(cfg, "data.batch_size"), OmegaConf.select(cfg, "trainer.devices")
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    if _is_int(batch) and _is_int(devices) and devices > 0 and _is_int(nodes) and nodes > 0:
        per_device_batch(batch, devices * nodes)


def check_training_crops(cfg: DictConfig) -> None:
    """data.degrade_size: off (null/0) or an integer at least the HR patch, which is cut from the degraded crop.
    data.subimages: off (null) or {size, step, thresh_size}, its sub-images at least as large as a training crop."""
    from src.data.subimages import check_params

    size = OmegaConf.select(cfg, "data.degrade_size")
    patch, scale = OmegaConf.select(cfg, "data.lr_patch_size"), OmegaConf.select(cfg, "scale")
    hr_patch = patch * scale if _is_int(patch) and _is_int(scale) else None
    if size not in (None, 0) and (not _is_int(size) or size < 0 or (hr_patch and size < hr_patch)):
        need = f"at least the HR patch data.lr_patch_size x scale = {hr_patch}" if hr_patch else "a positive integer"
        raise ValueError(f"data.degrade_size={size!r}: must be null/0 (off: degrade the HR patch itself) or an integer "
                         f"{need} (the official recipe: 400)")
    node = OmegaConf.select(cfg, "data.subimages")
    sub = check_params(OmegaConf.to_container(node) if isinstance(node, DictConfig) else node)
    crop = size or hr_patch
    if sub and crop and sub[0] < crop:
        what = "data.degrade_size" if size else "the HR patch data.lr_patch_size x scale"
        raise ValueError(f"data.subimages.size={sub[0]}: must be at least {what} = {crop}, the crop cut from each "
                         f"sub-image (the official recipe: 480 for a 400 px crop)")


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Reject `+a.b=v` where `a` is a plain settings node: the key did not exist (else `+` fails in Hydra), and no
    code reads it, so `+dropout.prob=0.5` would train with the default dropout.p. Nodes with a `_target_` are
    passed to a constructor, which rejects unknown arguments itself; config groups (`+experiment=x`) are fine."""
    choices = set(OmegaConf.select(cfg, "hydra.runtime.choices", default={}) or {})
    for item in overrides:
        if not item.startswith("+") or item.startswith("++"):
            continue
        key = item[1:].partition("=")[0]
        if key in choices or "/" in key or key.startswith("hydra"):
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or "_target_" in parent:
            continue
        known = sorted(k for k in parent.keys() if k != leaf and k != "hydra")
        close = difflib.get_close_matches(leaf, known, n=1) or [k for k in known if leaf.startswith(k)][:1]
        hint = f"; did you mean {parent_key + '.' if parent_key else ''}{close[0]}=...?" if close else ""
        raise ValueError(f"{item}: {key!r} is not a setting (nothing reads it); the keys of "
                         f"{parent_key or 'the root config'} are: {', '.join(known)}{hint}")


def build_model_cheaply(cfg: DictConfig) -> None:
    """Build the job's backbone on PyTorch's meta device: every argument is checked (dropout position, window
    size, ...) but no weights are allocated, so checking a 48-job sweep of large models takes seconds."""
    import torch

    from src.models.loading import build_backbone

    module = OmegaConf.to_container(cfg.module, resolve=True)  # what SRModule passes: the backbone, scale, dropout
    with torch.device("meta"):
        build_backbone(module["backbone"], scale=module.get("scale"), dropout=module.get("dropout"))


def check_job(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Everything a job can get wrong before it reads data: values, added keys, the model with its dropout."""
    cfg = cfg.copy()
    check_values(cfg, overrides)
    build_model_cheaply(cfg)
