"""Export a trained backbone: `python -m src.export ckpt=<path> format=safetensors|onnx [out=<file>]`.

- safetensors: the backbone state dict (BasicSR key names, no pickle) with the backbone config as JSON in the
  metadata under "backbone" and the SR factor under "scale", so `src.models.loading.load(file)` rebuilds the
  model without further arguments.
- onnx: the model in eval mode (dropout is an identity there) with input "lr" (B, 3, H, W) in [0, 1] and output
  "sr" (B, 3, sH, sW), unclamped; batch, height and width are dynamic.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn


FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}


def export_onnx(model: nn.Module, out: str | os.PathLike, opset: int = 18, exporter: str = "auto") -> Path:
    """ONNX with dynamic batch/height/width, written atomically to a single file (weights embedded).

    exporter: "dynamo" (torch.export based, the default since torch 2.9), "legacy" (TorchScript based,
    deprecated) or "auto" (legacy for window-attention models such as SwinIR, whose shape arithmetic
    torch.export cannot keep symbolic; dynamo for the rest, falling back to legacy if it fails).
    The graph is checked with onnxruntime at another batch and size before the file is written.
    """
    import logging
    import tempfile
    import warnings

    # torch's exporter warns about every torchvision op it cannot register; that is noise for SR models.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if opset < 17:
        raise ValueError(f"opset={opset}: needs 17 or newer")
    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter={exporter!r}; allowed: auto, dynamo, legacy")
    model = model.cpu().eval()
    from src.models.loading import pad_multiple

    graph = model
    if pad_multiple(model) > 1 and exporter == "auto":
        exporter = "legacy"
    # Batch 2 and unequal sides: torch.export specialises sizes of 1 and may tie equal sizes together.
    # Both sides are multiples of 8 so window-attention models (SwinIR) accept the example.
    example = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = dict(input_names=["lr"], output_names=["sr"], opset_version=opset)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".onnx-export-") as tmp:
        tmp_file = str(Path(tmp) / out.name)
        done = False
        if exporter in ("auto", "dynamo"):
            from torch.export import Dim

            dims = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    torch.onnx.export(graph, (example,), tmp_file, dynamo=True, dynamic_shapes=(dims,),
                                      external_data=False, verbose=False, **names)
                done = True
            except Exception as e:  # noqa: BLE001 - any tracing failure is worth the legacy attempt
                if exporter == "dynamo":
                    raise
                warnings.warn(f"dynamo ONNX export failed ({type(e).__name__}: {e}); using the legacy exporter")
        if not done:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the frozen shapes are checked below
                torch.onnx.export(graph, (example,), tmp_file, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"},
                                                "sr": {0: "batch", 2: "out_height", 3: "out_width"}}, **names)
        verify_onnx(model, tmp_file)
        os.replace(tmp_file, out)
    return out


def verify_onnx(model: nn.Module, path: str | os.PathLike, atol: float = 1e-3) -> None:
    """Run the graph at a batch and size other than the export example; raise if it fails or disagrees.

    A tracer can bake the example's shape into reshapes without complaint, giving a file that only works at
    that size; catching it here beats a user finding out in production.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        import warnings

        warnings.warn("onnxruntime is not installed: the exported graph was not verified")
        return
    h, w = 19, 23  # odd, and not multiples of any window size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    try:
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"lr": x.numpy()})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"the exported ONNX graph fails on a (1, 3, {h}, {w}) input, so its batch/height/width are "
                         f"not dynamic (the model's forward computes shapes the tracer froze): {e}") from e
    with torch.no_grad():
        ref = model(x).numpy()
    err = float(abs(y - ref).max()) if y.shape == ref.shape else float("inf")
    if err > atol:
        raise ValueError(f"the exported ONNX graph disagrees with PyTorch on a (1, 3, {h}, {w}) input "
                         f"(max abs diff {err:.3g}, shapes {y.shape} vs {ref.shape})")


def default_out(ckpt: str | os.PathLike, fmt: str) -> Path:
    return Path(ckpt).with_suffix(FORMATS[fmt])


def export(ckpt: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
           backbone: str | Mapping | None = None, opset: int = 18, exporter: str = "auto") -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    from src.models.loading import export_safetensors, load_for_tool, weights_file

    ckpt = weights_file(ckpt)
    out = Path(out) if out else default_out(ckpt, fmt)
    if out.resolve() == ckpt.resolve():
        raise ValueError(f"out={out} is the checkpoint itself; choose another file")
    if fmt == "safetensors":
        return export_safetensors(ckpt, out, backbone, {"source": ckpt.name})
    # Contiguous: ONNX tracing needs no NHWC strides.
    return export_onnx(load_for_tool(ckpt, backbone, channels_last=False).model, out, opset, exporter)


def main(cfg) -> Path:
    from hydra.utils import to_absolute_path

    if cfg.get("ckpt") in (None, "", "???"):
        raise ValueError("ckpt=... is required: python -m src.export ckpt=<path> format=safetensors|onnx")
    out = to_absolute_path(cfg.out) if cfg.out else None
    path = export(to_absolute_path(cfg.ckpt), str(cfg.format), out, cfg.get("backbone"), int(cfg.opset),
                  str(cfg.exporter))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


if __name__ == "__main__":
    import hydra

    from src.cli import one_line_errors, run

    @hydra.main(config_path="../conf", config_name="export", version_base="1.3")
    @one_line_errors("export")
    def _entry(cfg) -> None:
        main(cfg)

    run(_entry, "export")  # errors as one line naming the key (the traceback with HYDRA_FULL_ERROR=1)
