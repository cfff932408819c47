"""One path from a weights file to a ready model: `load(path) -> LoadedModel`; and from whatever a user hands a
tool (a file, a run folder, a published run, a sweep, a glob) to weights files: `weights_file`, `weights_files`,
`load_for_tool`.

Accepted files: this suite's Lightning checkpoints (`.ckpt`, carrying their backbone config), BasicSR `.pth`
files (`params_ema` preferred over `params`, as BasicSR's own loader does) and `.safetensors` files (the backbone
config as JSON in the metadata under "backbone", as `src.export` writes them). The file is read once.

Weights are data: whatever class a file names, the network is built only from this suite's own backbone
classes (`BACKBONES`), with every argument checked against the constructor's signature and plain types. A file
naming any other `_target_` is refused, so loading a downloaded file never calls code that file chooses.

A loaded model also knows its SR factor (`scale`) and the multiple its input sides must have (`pad_multiple`:
SwinIR's attention window, 1 for the convolutional backbones); tiling, evaluation, inference and export read
them from here rather than probing the model.
"""
from __future__ import annotations

import contextlib
import glob
import inspect
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from src import runs as run_folders
from src.models.rrdb import RRDBNet
from src.models.srresnet import MSRResNet
from src.models.swinir import SwinIR
from src.utils import apply_memory_format, atomic_write_bytes

BACKBONE_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"

# The allowlist: the only classes a weights file or a config can make this module build.
BACKBONES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (MSRResNet, RRDBNet, SwinIR)}
# Arguments that are not architecture: the SR factor and the dropout node are passed in by the caller.
DROPOUT_ARGS = ("dropout_position", "dropout_dim", "dropout_p")
NO_DROPOUT = {"position": "none", "dim": "channel", "p": 0.0}


@dataclass
class LoadedModel:
    """A backbone in eval mode with the facts its callers need."""

    model: nn.Module
    scale: int                      # SR factor: output sides are `scale` times the input's
    pad_multiple: int               # input sides must be a multiple of this (1 = any size)
    config: dict                    # architecture arguments with `_target_` (no scale, no dropout)
    path: Path | None = None
    layout: str = "basicsr"         # the key layout the file was stored in (see `LAYOUTS`)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- classes


def backbone_class(target: Any, source: str = "backbone config") -> type[nn.Module]:
    """The allowlisted class a `_target_` names (full path `src.models.srresnet.MSRResNet` or bare `MSRResNet`)."""
    if isinstance(target, str):
        name = target.rsplit(".", 1)[-1]
        cls = BACKBONES.get(name)
        if cls is not None and target in (name, f"{cls.__module__}.{name}"):
            return cls
    allowed = ", ".join(f"{c.__module__}.{n}" for n, c in BACKBONES.items())
    raise ValueError(f"{source}: _target_={target!r} is not one of this suite's backbones; refusing to build it "
                     f"(allowed: {allowed})")


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value)


def _check_type(name: str, value: Any, default: Any, source: str) -> None:
    """Values must have the default's kind: an int for an int, a number for a float, a list for a sequence."""
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            # SwinIR's img_size may be (h, w)
            name == "img_size" and isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ValueError(f"{source}: {name}={value!r} has the wrong type; expected {type(default).__name__} "
                         f"like the default {default!r}")


def validated_args(cls: type[nn.Module], args: Mapping[str, Any], source: str) -> dict:
    """`args` checked against `cls.__init__`: known names, plain values of the defaults' types."""
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"{source}: {cls.__name__} takes no argument(s) {unknown}; allowed: {', '.join(params)}")
    for name, value in args.items():
        if not _plain(value):
            raise ValueError(f"{source}: {name}={value!r} is not a plain value (number, string or list of them)")
        _check_type(name, value, params[name].default, source)
    return dict(args)


def _normalise(cfg: Mapping[str, Any], source: str) -> dict:
    """A plain dict; the pre-`scale` key `upscale` (older checkpoints and configs) read as `scale`."""
    cfg = dict(cfg)
    if "_target_" in cfg:  # the class first: a file naming anything else is refused for that, whatever else it holds
        backbone_class(cfg["_target_"], source)
    if "upscale" in cfg:
        value = cfg.pop("upscale")
        cfg.setdefault("scale", value)
    for key in [k for k in cfg if k.startswith("_") and k != "_target_"]:
        raise ValueError(f"{source}: key {key!r} is not allowed in a backbone config (only _target_ and the "
                         f"backbone's arguments)")
    return cfg


def backbone_config(spec: str | Mapping[str, Any], source: str | None = None) -> dict:
    """Architecture arguments with `_target_`, from a dict or a `conf/backbone/<name>.yaml` name.

    The result holds no SR factor and no dropout: those are passed to `build_backbone` by the caller (a
    stored config that holds them keeps them, and an explicit argument wins).
    """
    from omegaconf import OmegaConf

    if isinstance(spec, str):
        path = BACKBONE_CONF_DIR / f"{spec}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in BACKBONE_CONF_DIR.glob("*.yaml"))
            raise ValueError(f"backbone={spec!r}: no {path}; allowed names: {', '.join(names)}")
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        source = source or f"backbone={spec}"
    elif isinstance(spec, Mapping):
        cfg = OmegaConf.to_container(OmegaConf.create(dict(spec)), resolve=True) if not isinstance(spec, dict) \
            else dict(spec)
    else:
        raise ValueError(f"{source or 'backbone'}: expected a backbone name or a dict with _target_, got "
                         f"{type(spec).__name__}")
    cfg = _normalise(cfg, source or "backbone config")
    if "_target_" not in cfg:
        raise ValueError(f"{source or 'backbone config'}: {cfg} has no _target_ naming the backbone class")
    return cfg


def build_backbone(cfg: Mapping[str, Any], scale: int | None = None, dropout: Mapping[str, Any] | None = None,
                   source: str = "backbone config") -> nn.Module:
    """An allowlisted backbone from its config, with the SR factor and the dropout node passed in.

    Args:
        cfg: `_target_` plus architecture arguments (a conf/backbone YAML, or a config stored in a file).
        scale: the SR factor; None keeps the config's own (or the class default).
        dropout: `{position, dim, p}`; None keeps the config's own (or none).
        source: names the config in error messages (e.g. the file it came from).
    """
    cfg = _normalise(cfg, source)
    cls = backbone_class(cfg.pop("_target_", None), source)
    if scale is not None:
        cfg["scale"] = scale
    if dropout is not None:
        dropout = dict(dropout)
        cfg.update({f"dropout_{k}": dropout[k] for k in ("position", "dim", "p") if k in dropout})
    return cls(**validated_args(cls, cfg, source))


# Sizes read from a file are bounded before anything is built: a crafted file declaring millions of blocks would
# otherwise allocate until the machine runs out of memory. Every integer size is 1..MAX_SIZE, a list (SwinIR's
# depths, heads) at most MAX_LIST items summing to at most MAX_SIZE, and the network, counted on the meta device
# (no memory), holds at most MAX_PARAMS parameters: twelve times the largest of the paper (RRDB, 16.7M).
MAX_SIZE, MAX_LIST, MAX_PARAMS = 1024, 16, 200_000_000
_INITS = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "trunc_normal_", "zeros_", "ones_",
          "constant_", "xavier_normal_", "xavier_uniform_")


@contextlib.contextmanager
def _skip_init():
    # Random initialisation on the meta device goes through PyTorch's reference kernels (seconds per block) and
    # means nothing there: counting needs the shapes only.
    saved = {name: getattr(nn.init, name) for name in _INITS}
    for name in _INITS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def check_sizes(cls: type[nn.Module], args: Mapping[str, Any], source: str) -> int:
    """The parameter count of `cls(**args)`, after checking every size is within bounds (see MAX_SIZE); a
    ValueError naming `source` and the argument otherwise. Nothing is allocated."""
    for name, value in args.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, bool) or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            continue
        if isinstance(value, (list, tuple)) and (len(value) > MAX_LIST or sum(value) > MAX_SIZE):
            raise ValueError(f"{source}: {name}={list(value)[:MAX_LIST + 1]} is too long or too large (at most "
                             f"{MAX_LIST} items summing to at most {MAX_SIZE}); refusing to build it")
        if not all(1 <= v <= MAX_SIZE for v in items):
            raise ValueError(f"{source}: {name}={value!r} is out of bounds: sizes are integers from 1 to {MAX_SIZE}")
    with torch.device("meta"), _skip_init():
        n = sum(p.numel() for p in cls(**args).parameters())
    if n > MAX_PARAMS:
        raise ValueError(f"{source}: the architecture it declares has {n:,} parameters, over the budget of "
                         f"{MAX_PARAMS:,}; refusing to build it")
    return n


def model_scale(model: nn.Module) -> int:
    """The SR factor of a backbone: its `scale` attribute, else a probe forward pass on a 16x16 input."""
    value = getattr(model, "scale", None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    p = next(model.parameters(), None)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 16, 16, device=p.device if p is not None else "cpu"))
    return out.shape[-1] // 16


def pad_multiple(model: nn.Module) -> int:
    """The multiple input sides must have: the backbone's `pad_multiple` (SwinIR: its window; RRDBNet at x2/x1:
    its pixel-unshuffle factor), else 1."""
    value = getattr(model, "pad_multiple", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


# ---------------------------------------------------------------------------------------------------- files


def _unreadable(path: Path, e: BaseException) -> ValueError:
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
        # PyTorch's own message goes on to advise weights_only=False, which would run whatever code the file holds
        return ValueError(
            f"{path}: holds pickled Python objects other than tensors and plain config, which are never unpickled "
            f"here (unpickling can run any code the file carries); refused. Use a .safetensors file or a state dict "
            f"of tensors; convert this one only where its origin is trusted.")
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ValueError(
        f"{path}: not a readable checkpoint ({reason}). The file is probably truncated or corrupt (an interrupted "
        f"download, copy or save): download or copy it again; for a run's checkpoints/last.ckpt, rerun the "
        f"training command (force=true) to write a new one. A file that pickles Python objects other than "
        f"tensors and plain config is refused on purpose.")


def read_weights(path: str | os.PathLike, key: str | None = None) -> tuple[dict, dict | None, int | None]:
    """(state dict, stored backbone config or None, stored SR factor or None), reading the file once.

    `key` picks an entry of a BasicSR file (`params`, `params_ema`); by default `params_ema` is preferred.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a weights file: pass a .ckpt, .pth or .safetensors file "
                                f"(a run's weights are its checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise _unreadable(path, e) from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    cfg = scale = None
    if isinstance(obj.get("hyper_parameters"), Mapping):
        hp = obj["hyper_parameters"]
        cfg = hp.get("backbone")
        scale = hp.get("scale")
    if key is not None:
        if key not in obj:
            raise ValueError(f"{path}: no '{key}' entry; found {sorted(map(str, obj))[:10]}")
        state = obj[key]
    elif isinstance(obj.get("params_ema"), Mapping):  # the weight average, when a run kept one (ema.decay > 0)
        state = obj["params_ema"]
    elif isinstance(obj.get("state_dict"), Mapping):  # a Lightning checkpoint: the backbone lives under `net.`
        state = {k[len("net."):]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
    else:
        state = next((obj[k] for k in ("params_ema", "params") if isinstance(obj.get(k), Mapping)), obj)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
    if bad:
        raise ValueError(f"{path}: entries {bad} are not tensors; not a state dict (pass key=params or "
                         f"key=params_ema for a BasicSR file)")
    return dict(state), (dict(cfg) if isinstance(cfg, Mapping) else None), scale


def _safetensors_contents(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; an unreadable one is `_unreadable`'s error."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, e) from e


def _read_safetensors(path: Path) -> tuple[dict, dict | None, int | None]:
    state, meta = _safetensors_contents(path)
    cfg = scale = None
    if "backbone" in meta:
        try:
            cfg = json.loads(meta["backbone"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: metadata 'backbone' is not JSON ({e})") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: metadata 'backbone' is {type(cfg).__name__}, expected a JSON object")
    if "scale" in meta:
        try:
            scale = int(meta["scale"])
        except ValueError as e:
            raise ValueError(f"{path}: metadata scale={meta['scale']!r} is not an integer") from e
    return state, cfg, scale


def save_safetensors(model: nn.Module, cfg: Mapping[str, Any] | None, out: str | os.PathLike,
                     extra_metadata: Mapping[str, str] | None = None, scale: int | None = None) -> Path:
    """Write `model`'s state dict as safetensors (no pickle), atomically, with the backbone config (JSON, under
    "backbone") and the SR factor ("scale") in the metadata, so `load(out)` rebuilds the model by itself."""
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage; contiguous: the file has no notion of strides
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", **(extra_metadata or {})}
    if cfg is not None:
        metadata["backbone"] = json.dumps(dict(cfg), sort_keys=True)
    if scale is not None:
        metadata["scale"] = str(int(scale))
    return atomic_write_bytes(out, save(tensors, metadata=metadata))


def half_precision(path: str | os.PathLike) -> bytes:
    """A safetensors file with its floating-point tensors rounded to float16, metadata kept (plus `"dtype":
    "float16"`): how a model whose float32 weights are over the cap on committed weights is published at half the
    size. `load` casts them back into a float32 model, whose per-image scores move by a few thousandths of a dB at
    most (`src.reports.rescore.HALF_TOLERANCE`)."""
    from safetensors.torch import save

    tensors, metadata = _safetensors_contents(Path(path))
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    return save(half, metadata={**metadata, "dtype": "float16"})


def export_safetensors(path: str | os.PathLike, out: str | os.PathLike, backbone: str | Mapping | None = None,
                       extra_metadata: Mapping[str, str] | None = None) -> Path:
    """The weights a tool would load from `path` (anything `load_for_tool` takes: for a suite checkpoint, the
    evaluated ones) as a self-describing safetensors file: what a published run commits instead of its checkpoint,
    and what `python -m src.export format=safetensors` writes."""
    loaded = load_for_tool(path, backbone, channels_last=False)  # the file stores plain tensors either way
    return save_safetensors(loaded.model, loaded.config, out, extra_metadata, scale=loaded.scale)


# ---------------------------------------------------------------------------------------------------- key layouts
# The suite's keys are BasicSR's (and official SwinIR's). Other layouts of the same weights are renamings:
# `to_ours` maps a file's keys to ours, `from_ours` back (for writing files in that layout and for tests).

_SPLIT_BODY = re.compile(r"body(\d+)\.(\d+)\.(.*)")


def _split_body_to_ours(state: Mapping[str, Any]) -> dict:
    """`body<g>.<i>.*` (consecutive trunk groups, g from 1) -> `body.<n>.*`, numbering blocks group by group."""
    blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in state if (m := _SPLIT_BODY.fullmatch(k))})
    index = {gi: n for n, gi in enumerate(blocks)}
    out = {}
    for k, v in state.items():
        m = _SPLIT_BODY.fullmatch(k)
        out[f"body.{index[int(m.group(1)), int(m.group(2))]}.{m.group(3)}" if m else k] = v
    return out


def _body_to_groups(state: Mapping[str, Any], sizes: list[int]) -> dict:
    """Inverse of `_split_body_to_ours` for trunk groups of the given sizes."""
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"body\.(\d+)\.(.*)", k)
        if m:
            n = int(m.group(1))
            g = max(i for i, s in enumerate(starts) if s <= n)
            k = f"body{g + 1}.{n - starts[g]}.{m.group(2)}"
        out[k] = v
    return out


def _n_blocks(state: Mapping[str, Any]) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(r"body\.(\d+)\..*", k))})


def _renamer(pairs: list[tuple[str, str]]) -> tuple[Callable[[Mapping], dict], Callable[[Mapping], dict]]:
    """(theirs -> ours, ours -> theirs) for prefix/infix renamings given as regex pairs (theirs, ours)."""
    def apply(state, rules):
        out = {}
        for k, v in state.items():
            for pattern, repl in rules:
                k = re.sub(pattern, repl, k)
            out[k] = v
        return out

    fwd = [(rf"(^|\.){re.escape(t)}(?=\.)", rf"\g<1>{o}") for t, o in pairs]
    back = [(rf"(^|\.){re.escape(o)}(?=\.)", rf"\g<1>{t}") for t, o in pairs]
    return (lambda state: apply(state, fwd)), (lambda state: apply(state, back))


@dataclass(frozen=True)
class Layout:
    """A key layout that weights of one of our backbones are published in."""

    name: str
    backbone: str                               # class name in BACKBONES
    origin: str                                 # where files in this layout come from
    to_ours: Callable[[Mapping], dict]
    from_ours: Callable[[Mapping], dict]


def _identity(state: Mapping) -> dict:
    return dict(state)


_MMSR = _renamer([("recon_trunk", "body"), ("HRconv", "conv_hr")])
_ESRGAN = _renamer([("RRDB_trunk", "body"), ("RDB1", "rdb1"), ("RDB2", "rdb2"), ("RDB3", "rdb3"),
                    ("trunk_conv", "conv_body"), ("upconv1", "conv_up1"), ("upconv2", "conv_up2"),
                    ("HRconv", "conv_hr")])

LAYOUTS: list[Layout] = [
    Layout("basicsr", "MSRResNet", "BasicSR MSRResNet and this suite (body.<i>)", _identity, _identity),
    Layout("official-details", "MSRResNet",
           "the paper's released Real-SRResNet models (MSRResNet_details*, MSRResNet_wGR_details: the trunk "
           "unrolled into body1..body16 of one block each)",
           _split_body_to_ours, lambda st: _body_to_groups(st, [1] * _n_blocks(st))),
    Layout("official-split", "MSRResNet",
           "the paper's repository, MSRResNet_dropoutquater_*: the trunk as body1 (3/4 of the blocks) + body2 "
           "(the last 1/4)",
           _split_body_to_ours,
           lambda st: _body_to_groups(st, [_n_blocks(st) * 3 // 4, _n_blocks(st) - _n_blocks(st) * 3 // 4])),
    Layout("mmsr", "MSRResNet", "mmsr-era MSRResNet (recon_trunk, HRconv), kept in the paper's srresnet_arch.py",
           *_MMSR),
    Layout("basicsr", "RRDBNet", "BasicSR RRDBNet, Real-ESRGAN and the paper's released Real-RRDB models",
           _identity, _identity),
    Layout("esrgan", "RRDBNet", "the original ESRGAN repository (RRDB_trunk, RDB1..3, trunk_conv, HRconv)",
           *_ESRGAN),
    Layout("official", "SwinIR", "the official SwinIR repository and this suite", _identity, _identity),
]


def _strip_module_prefix(state: Mapping[str, Any]) -> dict:
    """Weights saved from a DataParallel/DDP wrapper carry `module.` on every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _layout_label(layout: Layout, state: Mapping) -> str:
    if layout.name == "official-split":
        sizes = {}
        for k in state:
            if m := _SPLIT_BODY.fullmatch(k):
                sizes.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        return f"official-split ({', '.join(f'body{g}: {len(s)} block(s)' for g, s in sorted(sizes.items()))})"
    return layout.name


def match_layout(state: Mapping[str, Any], expected: set[str], backbone: str, source: str) -> tuple[dict, str]:
    """(state dict in our keys, the layout's name) for the layout whose renaming gives exactly `expected`.

    No layout fits: a ValueError naming the closest layout with a few of its missing and unexpected keys.
    """
    state = _strip_module_prefix(state)
    candidates = [lay for lay in LAYOUTS if lay.backbone == backbone]
    tried, seen = [], set()
    for layout in candidates:
        if layout.to_ours in seen:  # details and split share one renaming; the label tells them apart
            continue
        seen.add(layout.to_ours)
        mapped = layout.to_ours(state)
        keys = set(mapped)
        if keys == expected:
            if layout.to_ours is _split_body_to_ours and not _is_details(state):
                return mapped, _layout_label(next(lay for lay in candidates if lay.name == "official-split"), state)
            return mapped, layout.name
        tried.append((len(expected - keys) + len(keys - expected), layout, sorted(expected - keys),
                      sorted(keys - expected)))
    _, layout, missing, unexpected = min(tried, key=lambda t: t[0])
    names = ", ".join(dict.fromkeys(lay.name for lay in candidates))
    try:
        other, _ = infer_config(state, source)
        args = {k: v for k, v in other.items() if k != "_target_"}
        hint = f" The keys look like {other['_target_'].rsplit('.', 1)[-1]} {args}."
    except ValueError:
        hint = ""

    def few(keys):
        return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

    raise ValueError(
        f"{source}: its {len(state)} weights fit no known key layout of {backbone} ({names}) with this "
        f"architecture. Closest: {layout.name} ({layout.origin}), missing {len(missing)} key(s)"
        + (f" [{few(missing)}]" if missing else "") + f", unexpected {len(unexpected)}"
        + (f" [{few(unexpected)}]" if unexpected else "")
        + f".{hint} Check backbone= (and e.g. backbone.num_block / num_feat) against the file.")


def _is_details(state: Mapping) -> bool:
    """Every trunk group holds one block: body1.0, body2.0, ... (the paper's `_details` models)."""
    return all(m.group(2) == "0" for k in state if (m := _SPLIT_BODY.fullmatch(k)))


def infer_scale(cls: type[nn.Module], state: Mapping[str, torch.Tensor]) -> int | None:
    """The SR factor implied by the weights' shapes (in this suite's key layout), or None if unclear."""
    try:
        if cls is MSRResNet:
            if "upconv2.weight" in state:
                return 4
            return math.isqrt(state["upconv1.weight"].shape[0] // state["conv_first.weight"].shape[0])
        if cls is RRDBNet:
            unshuffle = math.isqrt(state["conv_first.weight"].shape[1] // state["conv_last.weight"].shape[0])
            return {1: 4, 2: 2, 4: 1}.get(unshuffle)
        if cls is SwinIR:
            convs = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"upsample\.(\d+)\.weight", k)))
            if len(convs) == 1 and state[f"upsample.{convs[0]}.weight"].shape[0] == 9 * state[
                    "conv_last.weight"].shape[1]:
                return 3
            return 2 ** len(convs) if convs else None
    except (KeyError, IndexError, ZeroDivisionError):
        return None
    return None


def _load_strict(model: nn.Module, state: Mapping[str, Any], source: str) -> str:
    """Load `state` (any known layout) into `model` with strict keys and shapes; returns the layout's name."""
    expected = model.state_dict()
    mapped, layout = match_layout(state, set(expected), type(model).__name__, source)
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items()
              if v.shape != expected[k].shape]
    if shapes:  # same keys, other widths or SR factor
        raise ValueError(f"{source}: weights do not fit the {type(model).__name__} built here: {len(shapes)} shape "
                         f"mismatch(es), e.g. {'; '.join(shapes[:3])} (file vs model); check backbone= and its "
                         f"widths (backbone.num_feat, ...) and the SR factor")
    model.load_state_dict(mapped, strict=True)
    return layout


def infer_config(state: Mapping[str, Any], source: str) -> tuple[dict, str]:
    """(architecture config with `_target_`, layout name) read off a state dict's keys and shapes.

    For files that carry no config (BasicSR `.pth`, the paper's released models): the class from the key
    names, the widths and depths from the shapes. Raises a ValueError asking for `backbone=` if unsure.
    """
    state = _strip_module_prefix(state)
    for layout in LAYOUTS:
        st = layout.to_ours(state)
        try:
            keys = st.keys()
            if layout.backbone == "MSRResNet" and {"body.0.conv1.weight", "upconv1.weight", "conv_hr.weight"} <= keys:
                cfg = {"num_in_ch": st["conv_first.weight"].shape[1], "num_out_ch": st["conv_last.weight"].shape[0],
                       "num_feat": st["conv_first.weight"].shape[0], "num_block": _n_blocks(st)}
            elif layout.backbone == "RRDBNet" and {"body.0.rdb1.conv1.weight", "conv_body.weight"} <= keys:
                out_ch = st["conv_last.weight"].shape[0]
                cfg = {"num_in_ch": out_ch, "num_out_ch": out_ch, "num_feat": st["conv_first.weight"].shape[0],
                       "num_block": _n_blocks(st), "num_grow_ch": st["body.0.rdb1.conv1.weight"].shape[0]}
            elif layout.backbone == "SwinIR" and "layers.0.residual_group.blocks.0.attn.qkv.weight" in st:
                cfg = _swinir_config(st)
            else:
                continue
        except (KeyError, IndexError, ValueError):
            continue
        return {"_target_": f"{BACKBONES[layout.backbone].__module__}.{layout.backbone}", **cfg}, layout.name
    raise ValueError(f"{source} holds no backbone config and its keys match none of this suite's backbones "
                     f"({', '.join(BACKBONES)}): pass backbone=<"
                     f"{'|'.join(sorted(p.stem for p in BACKBONE_CONF_DIR.glob('*.yaml')))}> or a dict with _target_")


def _swinir_config(st: Mapping[str, torch.Tensor]) -> dict:
    layers = sorted({int(m.group(1)) for k in st if (m := re.match(r"layers\.(\d+)\.", k))})
    depths = [len({m.group(1) for k in st if (m := re.match(rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.", k))})
              for i in layers]
    table = [st[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"] for i in layers]
    side = math.isqrt(table[0].shape[0])
    if side * side != table[0].shape[0]:
        raise ValueError("relative position table is not square")
    window = (side + 1) // 2
    embed = st["conv_first.weight"].shape[0]
    cfg = {"in_chans": st["conv_first.weight"].shape[1], "embed_dim": embed, "depths": depths,
           "num_heads": [int(t.shape[1]) for t in table], "window_size": window,
           "mlp_ratio": st["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0] / embed}
    mask = st.get("layers.0.residual_group.blocks.1.attn_mask")
    if mask is not None:  # (windows per patch, ws^2, ws^2): the training patch was sqrt(windows) windows wide
        cfg["img_size"] = math.isqrt(mask.shape[0]) * window
    return cfg


def load(path: str | os.PathLike, backbone: str | Mapping | None = None, device: torch.device | str = "cpu",
         key: str | None = None, scale: int | None = None, channels_last: Any = "auto") -> LoadedModel:
    """A ready model (eval mode, on `device`, no dropout) from any weights file this suite knows.

    Args:
        path: a suite `.ckpt`, a BasicSR `.pth` (also in the paper's released key layouts, see `LAYOUTS`), or a
            `.safetensors` file.
        backbone: the architecture (a conf/backbone name or a dict with `_target_`); overrides a stored config.
            Default: the file's own config, else one read off the weights' keys and shapes.
        device: where the model goes.
        key: entry of a BasicSR file to load (default: `params_ema`, else `params`, else the file itself).
        scale: SR factor; default: the file's own, else the one the weights' shapes imply.
        channels_last: the memory layout (`auto`: the faster one for `device`, see `src.utils.use_channels_last`).

    Loading is strict: a key or shape mismatch means the wrong architecture, which must not pass silently.
    """
    path = Path(path)
    source = str(path)
    state, stored, stored_scale = read_weights(path, key)
    notes = []
    if backbone is not None:
        cfg = backbone_config(backbone)
    elif stored is not None:
        cfg = backbone_config(stored, source=source)
    else:
        cfg, found = infer_config(state, source)
        notes.append(f"architecture read off the weights ({found} keys): {cfg}")
    cls = backbone_class(cfg.get("_target_"), source)
    arch = {k: v for k, v in cfg.items() if k not in DROPOUT_ARGS and k != "scale"}
    # The shapes decide the factor of a file without one; a config's value is checked by the strict load.
    scale = scale or cfg.get("scale") or stored_scale or infer_scale(cls, match_layout_quiet(state, cls)) or 4
    if not isinstance(scale, int) or isinstance(scale, bool):
        raise ValueError(f"{source}: scale={scale!r} is not an integer SR factor")
    # Dropout has no weights, and a loaded model is for inference: build it without dropout.
    args = validated_args(cls, {**{k: v for k, v in arch.items() if k != "_target_"}, "scale": scale}, source)
    check_sizes(cls, args, source)
    model = build_backbone(arch, scale=scale, dropout=NO_DROPOUT, source=source)
    layout = _load_strict(model, state, source)
    if layout != "basicsr" and layout != "official":
        notes.append(f"key layout: {layout}")
    stored_dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    if stored_dtypes and stored_dtypes != ["float32"]:  # load_state_dict casts them into the float32 model
        notes.append(f"weights stored as {', '.join(stored_dtypes)}; the model computes in float32")
    model = apply_memory_format(model.to(device).eval(), channels_last, device)
    return LoadedModel(model=model, scale=model_scale(model), pad_multiple=pad_multiple(model), config=arch,
                       path=path, layout=layout, notes=notes)


def match_layout_quiet(state: Mapping[str, Any], cls: type[nn.Module]) -> dict:
    """The state dict renamed by the first layout of `cls` that produces our trunk keys (for shape probes)."""
    state = _strip_module_prefix(state)
    for layout in LAYOUTS:
        if layout.backbone == cls.__name__:
            mapped = layout.to_ours(state)
            if "conv_first.weight" in mapped and any(k.startswith(("body.", "layers.")) for k in mapped):
                return mapped
    return state


def init_weights(model: nn.Module, path: str | os.PathLike, key: str | None = None) -> str:
    """Copy the weights of `path` into `model` (fine-tuning: the model's own architecture and dropout stay).

    Any file `load` reads works (a suite checkpoint, a BasicSR `.pth` in any known layout, safetensors); the
    key check is strict and a mismatch names the closest layout and a few keys. Returns the layout found.
    """
    path = Path(path)
    state, _, _ = read_weights(path, key)
    return _load_strict(model, state, str(path))


def load_model(path: str | os.PathLike, backbone: str | Mapping | None = None, map_location="cpu",
               key: str | None = None) -> nn.Module:
    """Just the model of `load(...)`."""
    return load(path, backbone=backbone, device=map_location, key=key).model


# ---------------------------------------------------------------------------------------------------- paths
# What a user may hand any tool (eval, infer, analyze, export, the report's rescore/blend/figures) for a model, and
# the one place that turns it into a weights file. The folder layouts themselves are `src.runs`'s.
ACCEPTED = (f"a weights file (.ckpt, .pth, .safetensors), a run or sweep-job folder (its {run_folders.CKPT}) or a "
            f"published run folder (its {run_folders.WEIGHTS})")


def weights_file(path: str | os.PathLike) -> Path:
    """The one weights file `path` stands for: a file as it is; a run folder (a training run or one job of a
    sweep) its checkpoint; a published run folder its exported final weights. Anything else is a
    FileNotFoundError naming what was looked for."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder; pass {ACCEPTED}")
    candidates = (run_folders.checkpoint(path), run_folders.final_weights(path))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = "" if run_folders.is_run_folder(path) else (
        "; for a sweep or a folder of runs, pass one of its run folders (eval and analyze take the whole folder)")
    raise FileNotFoundError(f"{path}: no weights in this folder (looked for {' and '.join(map(str, candidates))}: "
                            f"a run writes the first once it has trained, publishing the second){hint}")


def weights_files(spec: str | os.PathLike | Sequence[str | os.PathLike], where: str = ""
                  ) -> list[tuple[Path, Path]]:
    """(weights file, the folder its results belong in) for every model `spec` names: anything `weights_file`
    takes, a folder of runs (a sweep: each run below it; one without weights, a job that failed before saving, is
    skipped with a line naming it), a glob pattern, or a list of these. A model named twice counts once. A spec
    that names no model is a FileNotFoundError (prefixed by `where`) saying what was looked for."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: dict[Path, Path] = {}
    for item in items:
        text = str(item)
        pattern = glob.has_magic(text)
        matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))] if pattern else [Path(text)]
        named, skipped = [], []
        for path in matches:
            if path.is_file():
                named.append((path, run_folders.run_of_checkpoint(path) or path.parent))
                continue
            if not path.is_dir():
                continue
            one_run = run_folders.is_run_folder(path) or run_folders.final_weights(path).is_file()
            if one_run and not pattern:  # exactly this run was named: its missing weights are the error
                named.append((weights_file(path), path))
                continue
            try:
                runs = [path] if one_run else run_folders.find_runs(path)
            except FileNotFoundError:
                continue
            for run in runs:
                try:
                    named.append((weights_file(run), run))
                except FileNotFoundError:
                    skipped.append(run)
                    print(f"[load] skipped {run}: no {run_folders.CKPT} or {run_folders.WEIGHTS} (training failed "
                          f"or has not saved one yet)")
        if not named:
            also = f"; {len(skipped)} run folder(s) below it hold neither" if skipped else ""
            raise FileNotFoundError(f"{where}{text!r} names no model: looked for {ACCEPTED}, a folder of such runs, "
                                    f"or a glob pattern matching them{also}")
        for path, run in named:
            found.setdefault(path, run)
    return list(found.items())


def load_for_tool(path: str | os.PathLike, backbone: Any = None, device: torch.device | str = "cpu",
                  **kwargs: Any) -> LoadedModel:
    """`load` as every tool calls it: `path` as a user gives it (`weights_file`), `backbone` as the tool's config
    composed it (a DictConfig is resolved against its whole config, `${...}` included), and what the loader noticed
    (a paper key layout, an architecture read off the weights) printed. `kwargs` go to `load`."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(backbone, DictConfig):
        backbone = OmegaConf.to_container(backbone, resolve=True)
    loaded = load(weights_file(path), backbone=backbone, device=device, **kwargs)
    for note in loaded.notes:
        print(f"[load] {loaded.path.name}: {note}")
    return loaded
