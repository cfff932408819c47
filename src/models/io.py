"""Build backbones from config dicts and load weights from this suite's or BasicSR's files."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

BACKBONE_CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def backbone_config(spec: str | Mapping[str, Any], **overrides) -> dict:
    """A backbone config dict from a dict, or from the name of a `conf/backbone/<name>.yaml` file.

    Interpolations such as `${upscale}` or `${dropout.p}` in the YAML are replaced by `overrides` or, if absent,
    by the defaults upscale=4 and no dropout (inference never needs dropout).
    """
    from omegaconf import OmegaConf

    if isinstance(spec, str):
        path = BACKBONE_CONF_DIR / f"{spec}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in BACKBONE_CONF_DIR.glob("*.yaml"))
            raise ValueError(f"backbone={spec!r}: no {path}; allowed names: {', '.join(names)}")
        root = OmegaConf.create({"upscale": 4, "dropout": {"position": "none", "dim": "channel", "p": 0.0},
                                 "backbone": OmegaConf.load(path)})
        cfg = OmegaConf.to_container(root, resolve=True)["backbone"]
    else:
        cfg = OmegaConf.to_container(OmegaConf.create(dict(spec)), resolve=True)
    cfg.update(overrides)
    if "_target_" not in cfg:
        raise ValueError(f"backbone config {cfg} has no _target_ naming the backbone class")
    return cfg


def build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
    from src.utils import build

    return build(dict(cfg), _convert_="all")


def _unwrap_state_dict(obj: Any, source: str, key: str | None = None) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise ValueError(f"{source}: no '{key}' entry; found {sorted(obj)[:10]}")
        return dict(obj[key])
    if "state_dict" in obj:  # a Lightning checkpoint of this suite: the backbone lives under `net.`
        return {k[len("net."):]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
    for k in ("params_ema", "params"):  # BasicSR prefers the EMA weights when both are saved
        if k in obj:
            return dict(obj[k])
    return dict(obj)


def load_state_dict_file(path: str | os.PathLike, key: str | None = None) -> tuple[dict, dict | None]:
    """(state dict, backbone config or None) from a .ckpt/.pth/.safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        cfg = json.loads(meta["backbone"]) if "backbone" in meta else None
        return load_file(str(path)), cfg
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable checkpoint (truncated, corrupt, or holds more than weights and "
                         f"plain config: {str(e).splitlines()[0]})") from e
    cfg = None
    if isinstance(obj, Mapping) and "hyper_parameters" in obj:
        cfg = obj["hyper_parameters"].get("backbone")
    return _unwrap_state_dict(obj, str(path), key), cfg


def load_model(path: str | os.PathLike, backbone: str | Mapping | None = None, map_location="cpu",
               key: str | None = None) -> nn.Module:
    """A backbone in eval mode with weights from `path`.

    This suite's checkpoints carry their backbone config; BasicSR `.pth` files do not, so `backbone` (a
    conf/backbone name or a dict with `_target_`) is required for them. Loading is strict: a key mismatch means
    the wrong architecture, which must not pass silently.
    """
    state, stored = load_state_dict_file(path, key)
    if backbone is not None:
        cfg = backbone_config(backbone)
    elif stored is not None:
        cfg = backbone_config(stored)
    else:
        raise ValueError(f"{path} holds no backbone config (a BasicSR .pth?): pass backbone=<srresnet|rrdb|swinir|"
                         f"tiny|...> or a dict with _target_")
    # Dropout has no weights, and a loaded model is for inference: build it without dropout.
    cfg.update({k: v for k, v in (("dropout_position", "none"), ("dropout_p", 0.0)) if k in cfg})
    model = build_backbone(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit backbone {cfg.get('_target_')}: {e}") from e
    return model.to(map_location).eval()
