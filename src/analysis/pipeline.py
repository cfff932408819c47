"""Running the interpretation tools from an analyze.yaml config (all the `python -m src.analyze` entry point calls).

`run_config` loads the checkpoints and images a config names and runs src/analysis/tools.py's `analyze`; with
`groups` it hands over to src/analysis/seeds.py (mean +- std over the models of each setting), with
tool=released to src/analysis/released.py, with tool=merge to seeds.merge_groups. What lands in `out` is
described in tools.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from src.analysis.released import check_released
from src.analysis.seeds import analyze_group_models, group_labels, merge_groups, model_files
from src.analysis.tools import TOOLS, analyze, load_pairs, model_label
from src.utils import resolve_device

CLI_TOOLS = (*TOOLS, "released", "merge")  # released: src/analysis/released.py; merge: seeds.merge_groups
__all__ = ["CLI_TOOLS", "analyze", "run_config"]


def _as_list(value) -> list:
    return [] if value is None else list(value)


def _layers(value):
    """csm.layers from a config: null, `official`, one layer name, or a list."""
    if value is None or isinstance(value, str):
        return value
    return [str(v) for v in value]


def _models_from_config(cfg, load) -> tuple[dict[str, nn.Module], dict[str, tuple[str, Path]] | None]:
    """(models by label, {label: (group, path)} when `groups` is given, else None)."""
    groups = cfg.get("groups") or {}
    if groups:
        if cfg.ckpt or _as_list(cfg.ckpts):
            raise ValueError("give either groups={<setting>: [<ckpt>, ...]} or ckpt/ckpts, not both")
        resolved = {str(g): model_files(_as_list(v) if not isinstance(v, str) else v, f"group {str(g)!r}: ")
                    for g, v in groups.items()}
        labels = group_labels(resolved)
        return {lab: load(p) for lab, (_, p) in labels.items()}, labels
    specs = ([cfg.ckpt] if cfg.ckpt else []) + _as_list(cfg.ckpts)
    if not specs:
        raise ValueError("no model given: pass ckpt=<path>, ckpts=[<path>,<path>] or groups={<setting>: [...]}")
    paths = model_files([str(s) for s in specs])  # run folders and glob patterns work too
    names = _as_list(cfg.labels) or [model_label(p) for p in paths]
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f"labels={names}: need one distinct label per checkpoint ({len(paths)}: {paths})")
    return {lab: load(p) for lab, p in zip(names, paths)}, None


def run_config(cfg, out: str | Path | None = None) -> dict:
    """Load the checkpoints and inputs named by an analyze.yaml config and run `analyze` (with `groups`:
    `seeds.analyze_group_models`; tool=released: `released.check_released`); `out` overrides cfg.out."""
    from src.data.datasets import default_data_root, resolve_set
    from src.models.loading import load_for_tool, model_scale

    if cfg.tool not in CLI_TOOLS:
        raise ValueError(f"tool={cfg.tool!r}; allowed: {', '.join(CLI_TOOLS)}")
    if cfg.tool == "merge":  # pools earlier analyses' numbers: no model, data or device needed
        return merge_groups(list(cfg.sources), Path(out or cfg.out))
    device = resolve_device(str(cfg.device))
    backbone = cfg.get("backbone")  # a conf/backbone group choice, composed here (load_for_tool resolves it)
    root = Path(cfg.data.root) if cfg.data.root else default_data_root()
    out = Path(out or cfg.out)

    def load_model(path, backbone=backbone, map_location=device):
        return load_for_tool(path, backbone, map_location).model

    if cfg.tool == "released":
        return _run_released(cfg, out, root, device, backbone, load_model)
    models, group_of = _models_from_config(cfg, lambda p: load_model(p))
    scales = {lab: cfg.scale or model_scale(m) for lab, m in models.items()}
    if len(set(scales.values())) != 1:
        raise ValueError(f"the checkpoints have different scales {scales}; compare models of one scale")
    scale = next(iter(scales.values()))
    pairs = ddr_images = None
    if cfg.tool in ("csm", "ablation", "all"):
        pairs = _image_pairs(cfg, root, scale)
    if cfg.tool in ("ddr", "all"):
        from src.data.imageio import read_image

        ddr_images = [(p.stem, read_image(p)) for p in resolve_set(cfg.ddr.set, root)[:cfg.ddr.n_images]]
    options = dict(_tool_options(cfg), scale=scale, device=device, degradations=tuple(cfg.ddr.degradations),
                   input_size=cfg.ddr.input_size, perplexity=cfg.ddr.perplexity)
    if group_of is not None:
        result = analyze_group_models(models, group_of, cfg.tool, out, pairs, ddr_images, **options)
        shown = {g: {k: {"mean": v["mean"], "std": v["std"], "n": v["n"]} for k, v in by.items()}
                 for g, by in result["stats"].items()}
    else:
        result = shown = analyze(models, cfg.tool, out, pairs, ddr_images, **options)
    print(json.dumps(shown, indent=2, sort_keys=True))
    print(f"analysis written to {out.resolve()}")
    return result


def _image_pairs(cfg, root: Path, scale: int):
    from src.data.datasets import resolve_set

    images = [Path(cfg.image)] if cfg.image else resolve_set(cfg.data.set, root)[:cfg.n_images]
    return load_pairs(images, cfg.degradation, scale, cfg.crop, cfg.seed)


def _tool_options(cfg) -> dict:
    """The csm/ablation options of an analyze.yaml config, as `analyze` keywords."""
    return dict(layer=cfg.layer, batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress,
                max_channels=cfg.csm.max_channels, order=cfg.ablation.order, rescale=cfg.ablation.rescale,
                score=cfg.ablation.score, csm_norm=cfg.csm.norm, csm_layers=_layers(cfg.csm.layers))


def _run_released(cfg, out: Path, root: Path, device, backbone, load_model) -> dict:
    """tool=released: the paper's released models from `released.dir`, see src/analysis/released.py."""
    from src.data.datasets import resolve_set

    rc = cfg.released
    if not rc.dir:
        raise ValueError("tool=released needs released.dir=<folder holding the downloaded released models>")
    names = [rc.sets] if isinstance(rc.sets, str) else list(rc.sets)
    sets = {name: resolve_set(name, root) for name in names} if rc.evaluate else {}
    degradations = None if rc.degradations == "all" else (
        [rc.degradations] if isinstance(rc.degradations, str) else list(rc.degradations))
    families = dict(rc.backbones)

    def load(path: Path, release) -> nn.Module:
        spec = backbone if backbone is not None else families.get(release.backbone, release.backbone)
        return load_model(path, backbone=spec, map_location=device)

    interp = _tool_options(cfg)
    interp["csm_layers"] = interp["csm_layers"] or "official"  # the paper's figures read all 19 points
    extra = {"paper_file": rc.paper} if rc.get("paper") else {}
    result = check_released(rc.dir, out, sets, load, degradations, device=device,
                            interp_pairs=_image_pairs(cfg, root, 4) if rc.interpret else None,
                            interp_options=interp, evaluate_models=bool(rc.evaluate), **extra)
    print(f"released models checked; files in {out.resolve()}")
    return result
