"""Checks on a training config that run before anything trains: values the code would accept silently or explain
badly, keys added with `+` that nothing reads, and whether the model builds (cheaply, without weights or data).

`src.train` calls `check_values` at the start of every run; a multirun calls `check_job` on every job before its
first job trains, so an invalid combination fails in seconds, not after hours of other jobs.
"""
from __future__ import annotations

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
    check_constructor_args(cfg)
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


def config_keys(cfg) -> list[str]:
    """Every key of a config as a dotted path (nodes and leaves; Hydra's own node left out): what did-you-mean
    suggestions are chosen from."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    keys = []

    def walk(node, prefix):
        for k, v in node.items():
            if not prefix and k == "hydra":
                continue
            keys.append(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(tree, "")
    return keys


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions that turn a into b."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def suggest_key(key: str, known: Sequence[str], same_parent: bool = True) -> str | None:
    """The known key a mistyped `key` most likely means, or None. Keys of the same parent node come first (with
    `same_parent`); then an abbreviation of a key's last part (`dropout.pos` -> dropout.position, not dropout.p),
    a last part that holds the given one (`steps` -> trainer.max_steps), one held by it (`dropout.prob` ->
    dropout.p), the smallest edit distance; ties go to the nearest last part."""
    parent, _, leaf = key.rpartition(".")
    best, best_rank = None, None
    for candidate in known:
        c_parent, _, c_leaf = candidate.rpartition(".")
        if candidate == key or c_parent.startswith("hydra"):
            continue
        if c_leaf.startswith(leaf):
            tier = 0
        elif leaf in c_leaf:
            tier = 1
        elif c_leaf in leaf:  # a longer spelling of a key: `prob` -> p
            tier = 2
        elif _edits(key, candidate) <= max(2, len(key) // 4):
            tier = 3
        else:
            continue
        rank = (same_parent and c_parent != parent, tier, _edits(leaf, c_leaf), _edits(key, candidate), candidate)
        if best_rank is None or rank < best_rank:
            best, best_rank = candidate, rank
    return best


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Reject `+a.b=v` where `a` is a plain settings node: the key did not exist (else `+` fails in Hydra), and no
    code reads it, so `+dropout.prob=0.5` would train with the default dropout.p. Nodes with a `_target_` are
    passed to a constructor, which rejects unknown arguments itself; config groups (`+experiment=x`) are fine."""
    choices = set(OmegaConf.select(cfg, "hydra.runtime.choices", default={}) or {})
    for item in overrides:
        if not item.startswith("+") or item.startswith("++"):
            continue
        key, _, value = item[1:].partition("=")
        if key in choices or "/" in key or key.startswith("hydra"):
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or "_target_" in parent:
            continue
        close = suggest_key(key, [k for k in config_keys(cfg) if k != key])
        hint = f" Did you mean {close}={value}?" if close else ""
        known = sorted(k for k in parent.keys() if k != leaf and k != "hydra")
        raise ValueError(f"{item}: {key!r} is not a setting (nothing reads it).{hint} The keys of "
                         f"{parent_key or 'the root config'}: {', '.join(known)}")


def check_device(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one fails here with the fix, not in Lightning's accelerator lookup."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.accelerator={accelerator} but there is no GPU here (torch.cuda.is_available() "
                               f"is False); use trainer=cpu (a CPU trial of a GPU preset: add size=cpu)")


def check_inputs(cfg: DictConfig) -> None:
    """Every file a run reads exists, before a run folder is made for it: the train, validation and test sets
    where data.root says, and the init_from weights."""
    from pathlib import Path

    from src.data.datasets import default_data_root, resolve_set

    init_from = OmegaConf.select(cfg, "init_from")
    if init_from and not Path(str(init_from)).expanduser().is_file():
        raise FileNotFoundError(f"init_from={init_from}: no such file (a suite .ckpt, a BasicSR .pth or a .safetensors "
                                f"file, relative to the folder the command runs in)")
    root = OmegaConf.select(cfg, "data.root") or default_data_root()
    for key in ("train_sets", "val_sets", "test_sets"):
        for name in OmegaConf.select(cfg, f"data.{key}") or ():
            resolve_set(name, root)


def _targets(node, path: str = ""):
    """(dotted path, node) of every dict with a `_target_` below `node` (a plain container), Hydra's own left out."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield path, node
        for k, v in node.items():
            if not (path == "" and k == "hydra"):
                yield from _targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def check_constructor_args(cfg: DictConfig) -> None:
    """Every `_target_` node's keys must be arguments its target takes: an experiment that pins a key of one
    degradation (`degradation.jpeg`) composed with another (`degradation=bicubic`) fails here, naming the key, instead
    of as a TypeError once training starts. Targets taking **kwargs accept anything; unimportable ones are left to
    the build, which reports them."""
    import inspect

    from hydra.utils import get_object

    tree = OmegaConf.to_container(cfg, resolve=False)  # keys only: interpolations need not resolve here
    for path, node in _targets(tree):
        try:
            params = inspect.signature(get_object(node["_target_"])).parameters
        except Exception:  # noqa: BLE001 - not importable or no signature: the build itself will say why
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        unknown = [k for k in node if not str(k).startswith("_") and k not in params]
        if unknown:
            takes = ", ".join(k for k in params if k != "self")
            raise ValueError(f"{path}.{unknown[0]}: {node['_target_']} takes no argument {unknown[0]!r} (it takes: "
                             f"{takes}); remove the key, or pick the {path} option it belongs to")


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
