"""Every GPU-only path of the suite checked in one command, each against a stated bound, in one JSON file.

    python -m src.gpucheck [device=cuda|cpu] [size=full|tiny] [out=docs/results/gpu/<device>.json]  (--help)

GPU time is rare and short, so this is the one prepared command to run when a GPU is lent: it answers every open
question about the GPU paths at once, in under 8 minutes on one modern GPU (a time budget skips what is left).

  1 jpeg       the real JPEG codec (src/data/jpeg.py) on the device equals its CPU output (max |diff| <= 1 grey
               level, <= 0.1 % of values differing) and OpenCV's libjpeg (mean |PSNR difference| <= 0.02 dB at
               q 30/50/70/95)
  2 pipeline   the Real-ESRGAN pipeline with crop-degrade-crop (SRDataModule.degrade_batch) on the device vs the
               CPU with the CPU's random draws replayed on the device: LR mean |diff| <= 0.5 grey level, <= 1 % of
               values more than 1 level apart, GT within 1 level; the same seed twice on the device: identical
  3 step       one training step of the paper's SRResNet (batch 16, 32x32 LR) in fp32 / bf16-mixed / fp16-mixed x
               contiguous / channels_last x eager / compiled: loss and gradients against fp32 eager contiguous
               within per-precision tolerances, and each one's time; the fastest within tolerance is the GPU default
  4 resume     `python -m src.train` killed with SIGKILL at a random checkpoint and rerun: weights equal to an
               uninterrupted run's (deterministic algorithms on, on CUDA)
  5 bench      src.bench's figures: framework overhead <= 1.03, degradation <= 5 % of a step, compute
               efficiency >= 0.5 of the matmul peak, data loading >= 3x demand
  6 ddp        `trainer=ddp` on every GPU with NCCL, and the ranks' pools of degraded pairs all different
  7 tiled      tiled inference (src.tiling.upscale_image) of a 4000x3000 image: peak device memory above the weights
               <= the tile planner's estimate for one tile; tiled on the device vs tiled on the CPU and vs untiled
               within 1 grey level
  8 cost       hours of experiment=paper, experiment=official (500k iterations) and the RRDB pair (2 runs) on this
               device, from measured step times (degradation + step; EMA and pool where the recipe has them)

On a CPU (`device=cpu`, size=tiny) every check runs at a tiny size so that the script is tested and cannot rot;
where a check compares the device with the CPU it then compares the CPU with itself ("self-check on cpu"), and
bounds that only mean something on a GPU (speed, memory) are reported, not judged. Each check records its own
failure (with the message) without stopping the others. Exit status: 1 when any check fails, else 0.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from src.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SELF_CHECK = "self-check on cpu"
GPU_ONLY = "GPU bound: reported, not judged on cpu"


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Measure:
    """One number of a check and its bound: `op` is <=, >= or == against `limit`; judged=False reports it only."""

    name: str
    value: float | None
    op: str | None = None
    limit: float | None = None
    unit: str = ""
    note: str = ""
    judged: bool = True

    @property
    def passed(self) -> bool | None:
        if self.op is None or not self.judged:
            return None
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        return {"<=": self.value <= self.limit, ">=": self.value >= self.limit,
                "==": self.value == self.limit}[self.op]

    def as_dict(self) -> dict:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no inf/nan
        return {"name": self.name, "value": value, "bound": f"{self.op} {self.limit:g}" if self.op else None,
                "unit": self.unit, "pass": self.passed, "note": self.note}


@dataclass
class Result:
    measures: list[Measure] = field(default_factory=list)
    detail: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Measure:
        m = Measure(*args, **kwargs)
        self.measures.append(m)
        return m


def check_status(measures: Sequence[Measure]) -> str:
    """fail when any judged bound fails, else pass (a check with nothing judged passes by having run)."""
    return "fail" if any(m.passed is False for m in measures) else "pass"


# ------------------------------------------------------------------------------------------------ context
@dataclass
class Context:
    device: torch.device
    tiny: bool
    opts: dict
    workdir: Path
    started: float
    budget_s: float
    cfg: object = None  # the composed default train config

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def self_check(self, note: str = "") -> str:
        """The note of a device-vs-CPU figure: on a CPU it compares the CPU with itself."""
        return SELF_CHECK if self.on_cpu else note

    def size(self, full, tiny):
        return tiny if self.tiny else full


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose(overrides: Sequence[str] = ()):
    """The train config as `python -m src.train <overrides>` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from src.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=["logger=none", *overrides])


def photos(names: Sequence[str] | None = None, n: int = 3) -> dict[str, np.ndarray]:
    """The first n colour uint8 photos of the named sets under the data root when it has them, else of the bundled
    ones, by file name."""
    from src.data.datasets import SAMPLE_HOLDOUT, SAMPLE_TRAIN, default_data_root, sample_image_paths
    from src.data.imageio import read_image

    root = default_data_root()
    paths = [p for s in (names or ()) for p in sorted((root / s / "HR").glob("*.png"))]
    if not paths:
        paths = sample_image_paths(SAMPLE_TRAIN + SAMPLE_HOLDOUT)
    out = {}
    for p in paths:
        img = read_image(p)
        if img.ndim == 3 and img.shape[2] == 3:
            out[p.name] = np.ascontiguousarray(img)
        if len(out) == n:
            break
    return out


def fill(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """An h x w image made of `img` mirrored as often as needed (a large image that still looks like a photo)."""
    rows, cols = -(-h // img.shape[0]), -(-w // img.shape[1])
    row = np.concatenate([img if j % 2 == 0 else img[:, ::-1] for j in range(cols)], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(rows)], axis=0)
    return np.ascontiguousarray(full[:h, :w])


def to_batch(imgs: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255)


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in 8-bit grey levels, on the CPU in float64."""
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs() * 255


# -------------------------------------------------------------------------------------------- 1 jpeg
def check_jpeg(ctx: Context) -> Result:
    from src.data.jpeg import jpeg_real
    from src.data.testsets import jpeg_compress
    from src.metrics import psnr

    res = Result()
    # Whole photos even at the tiny size: at q 95 the gap is a few hundredths of a dB, and crops of a few blocks
    # move it by more than that.
    named = photos(None if ctx.tiny else ("Set5", "Set14"), ctx.size(8, 3))
    imgs = list(named.values())
    qualities = (30, 50, 70, 95)
    worst, differing, total = 0.0, 0, 0
    gaps = {q: [] for q in qualities}
    for img in imgs:
        x = to_batch([img])
        for q in qualities:
            cpu = jpeg_real(x, [q])
            dev = cpu if ctx.on_cpu else jpeg_real(x.to(ctx.device), torch.tensor([q], device=ctx.device)).cpu()
            d = levels(dev, cpu)
            worst, differing, total = max(worst, float(d.max())), differing + int((d > 0.5).sum()), total + d.numel()
            ours = (dev[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            gaps[q].append(psnr(ours, img, y_channel=False) - psnr(jpeg_compress(img, q), img, y_channel=False))
    res.add("device_vs_cpu_max", worst, "<=", 1, "grey levels", ctx.self_check())
    res.add("device_vs_cpu_differing", differing / total, "<=", 1e-3, "fraction", ctx.self_check())
    for q in qualities:
        res.add(f"opencv_gap_q{q}", float(np.mean(np.abs(gaps[q]))), "<=", 0.02, "dB",
                f"mean |PSNR(ours) - PSNR(OpenCV)| over {len(imgs)} images")
    res.detail = {"images": {k: list(i.shape[:2]) for k, i in named.items()},
                  "signed_gap_db": {q: float(np.mean(gaps[q])) for q in qualities}}
    return res


# ---------------------------------------------------------------------------------------- 2 pipeline
_DRAWS = ("rand", "randn", "randint", "poisson", "randperm")


class DrawLog:
    """Every draw taken from an explicit generator (torch.rand/randn/randint/poisson/randperm with generator=), in
    order: recorded on one device and replayed on another, so the same kernels, sizes, noise and JPEG qualities
    meet the other device's arithmetic. torch's CUDA generator (Philox) and CPU generator (MT19937) give different
    numbers for one seed, so without a replay a CPU and a CUDA run see different (equally distributed) draws."""

    def __init__(self):
        self.draws: list[tuple[str, torch.Tensor]] = []
        self.replayed = 0

    @contextlib.contextmanager
    def _patched(self, wrap: Callable[[str, Callable], Callable]):
        originals = {name: getattr(torch, name) for name in _DRAWS}
        try:
            for name, fn in originals.items():
                setattr(torch, name, wrap(name, fn))
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch, name, fn)

    def record(self):
        def wrap(name, fn):
            def drawn(*args, **kwargs):
                out = fn(*args, **kwargs)
                if kwargs.get("generator") is not None:
                    self.draws.append((name, out.detach().cpu().clone()))
                return out
            return drawn
        return self._patched(wrap)

    def replay(self):
        queue = iter(list(self.draws))

        def wrap(name, fn):
            def drawn(*args, **kwargs):
                g = kwargs.get("generator")
                if g is None:
                    return fn(*args, **kwargs)
                recorded_name, value = next(queue, (None, None))
                if recorded_name != name:
                    raise RuntimeError(f"replayed draws out of step: torch.{name} called where the recording has "
                                       f"torch.{recorded_name}")
                device = args[0].device if name == "poisson" else kwargs.get("device") or g.device
                self.replayed += 1
                return value.to(device)
            return drawn
        return self._patched(wrap)


def check_pipeline(ctx: Context) -> Result:
    from omegaconf import OmegaConf

    from src.utils import build

    res = Result()
    batch, patch, size = ctx.size((16, 32, 400), (2, 16, 64))
    degradation = build(ctx.cfg.degradation)
    data = OmegaConf.merge(ctx.cfg.data, {"batch_size": batch, "lr_patch_size": patch, "degrade_size": size,
                                          "train_sets": ["skimage"], "val_sets": [], "test_sets": [],
                                          "cache_dir": None})
    dm = build(data, degradation=degradation)
    rng = np.random.default_rng(0)
    crops = []
    for img in itertools.islice(itertools.cycle(photos(n=batch).values()), batch):
        img = fill(img, max(size, img.shape[0]), max(size, img.shape[1]))
        top, left = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        crops.append(img[top:top + size, left:left + size])
    hr = to_batch(crops)
    step = 7

    log = DrawLog()
    with log.record():
        lr_cpu, gt_cpu = dm.degrade_batch(hr, step)
    with log.replay():
        lr_dev, gt_dev = dm.degrade_batch(hr.to(ctx.device), step)
    d_lr, d_gt = levels(lr_dev, lr_cpu), levels(gt_dev, gt_cpu)
    res.add("draws_replayed", log.replayed / len(log.draws), "==", 1, "fraction", "every CPU draw used, in order")
    res.add("shapes_equal", float(lr_dev.shape == lr_cpu.shape and gt_dev.shape == gt_cpu.shape), "==", 1, "",
            "LR and GT sizes of the device run = the CPU run's")
    res.add("lr_mean_abs", float(d_lr.mean()), "<=", 0.5, "grey levels", ctx.self_check("CPU draws replayed"))
    res.add("lr_off_by_more_than_1", float((d_lr > 1.5).double().mean()), "<=", 0.01, "fraction",
            ctx.self_check("CPU draws replayed"))
    res.add("gt_max", float(d_gt.max()), "<=", 1, "grey levels", ctx.self_check("USM-sharpened GT"))
    res.add("lr_max", float(d_lr.max()), unit="grey levels", note="JPEG turns a rounding flip into a block's error")

    again = DrawLog()
    with again.record():
        lr_a, gt_a = dm.degrade_batch(hr.to(ctx.device), step)
    lr_b, gt_b = dm.degrade_batch(hr.to(ctx.device), step)
    res.add("same_seed_twice_max", float(max(levels(lr_a, lr_b).max(), levels(gt_a, gt_b).max())), "<=", 0,
            "grey levels", "the device's own draws, twice")
    same = sum(n1 == n2 and a.shape == b.shape and torch.equal(a, b)
               for (n1, a), (n2, b) in zip(log.draws, again.draws))
    res.add("native_draws_equal", same / max(len(log.draws), 1), unit="fraction", judged=False,
            note=ctx.self_check("CUDA's generator is not the CPU's: a seed gives other draws per device"))
    res.detail = {"hr": list(hr.shape), "lr": list(lr_dev.shape), "gt": list(gt_dev.shape), "step": step,
                  "draws": len(log.draws), "draws_native_device": len(again.draws), "jpeg": degradation.jpeg,
                  "degrade_size": size, "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}
    return res


# -------------------------------------------------------------------------------------------- 3 step
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# (loss, gradient) relative error against fp32 eager contiguous on the same device. fp32 allows for TF32
# convolutions (cuDNN's default) choosing other algorithms per layout; the mixed ones for 8 (bf16) and 11 (fp16)
# mantissa bits through 35 layers.
STEP_TOLERANCE = {"32-true": (1e-3, 1e-2), "bf16-mixed": (1e-2, 5e-2), "16-mixed": (5e-3, 2e-2)}


def _variants(ctx: Context) -> tuple[list[tuple[str, bool, bool]], list[str]]:
    notes = []
    precisions = list(PRECISIONS)
    compiled = [False, True]
    if ctx.on_cpu:
        precisions.remove("16-mixed")
        compiled = [False]
        notes.append("cpu: fp16-mixed skipped (Lightning's 16-mixed is a GPU precision; CPU autocast runs bf16)")
        notes.append("cpu: compiled skipped (torch.compile needs minutes of C++ compilation on a CPU; "
                     "`compile` is a GPU option)")
    if not ctx.opts["compile"]:
        compiled = [False]
        notes.append("compile=false: compiled variants skipped")
    return [(p, cl, c) for c in compiled for p in precisions for cl in (False, True)], notes


def make_step(net: torch.nn.Module, optimizer, precision: str, device: torch.device):
    """A training step as Lightning runs it at `precision`: autocast forward and L1, backward (fp16 through a
    GradScaler), Adam. step(lr, gt, keep) returns the loss and, with keep, the unscaled gradients."""
    dtype = AUTOCAST[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step(lr, gt, keep=False):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.l1_loss(net(lr), gt)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grads = [p.grad.detach().float().clone() for p in net.parameters()] if keep else None
        if grads is not None and not all(bool(g.isfinite().all()) for g in grads):
            grads = None  # fp16 overflow: the scaler skips this step and lowers its scale, as in training
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return loss.detach().float(), grads

    return step


def relative_error(grads: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    num = sum(float((g - r).double().pow(2).sum()) for g, r in zip(grads, ref))
    return math.sqrt(num / sum(float(r.double().pow(2).sum()) for r in ref))


def _step_variant(ctx: Context, res: Result, base, lr, gt, name: str, precision: str, channels_last: bool,
                  compiled: bool, warmup: int, reps: int, ref: dict) -> dict:
    """Time one variant and compare its first step's loss and gradients with `ref` (the first variant's, when
    `ref` is still empty, is the reference itself)."""
    from src.bench import time_calls
    from src.utils import apply_memory_format, build

    net = apply_memory_format(copy.deepcopy(base).to(ctx.device).train(), channels_last, ctx.device)
    if compiled:
        net.compile()
    step = make_step(net, build(ctx.cfg.module.optimizer)(net.parameters()), precision, ctx.device)
    t0 = time.perf_counter()
    for _ in range(8):  # a skipped (overflowing) fp16 step leaves the weights as they were
        loss, grads = step(lr, gt, keep=True)
        if grads is not None:
            break
    if grads is None:
        raise RuntimeError("gradients overflow at every loss scale tried")
    _sync(ctx.device)
    first_s = time.perf_counter() - t0
    times = time_calls(lambda i: step(lr, gt), reps, warmup, ctx.device)
    ref_loss, ref_grads = (ref["loss"], ref["grads"]) if ref else (loss, grads)
    loss_tol, grad_tol = STEP_TOLERANCE[precision]
    row = {"ms": 1e3 * statistics.median(times), "first_call_s": first_s, "loss": float(loss),
           "loss_rel": abs(float(loss - ref_loss)) / abs(float(ref_loss)), "grad_rel": relative_error(grads, ref_grads),
           "loss_tensor": loss, "grads": grads}
    ok = [res.add(f"{name} loss_rel", row["loss_rel"], "<=", loss_tol, "relative"),
          res.add(f"{name} grad_rel", row["grad_rel"], "<=", grad_tol, "relative")]
    res.add(f"{name} ms", row["ms"], unit="ms/step", note=f"median of {reps}")
    row["within_tolerance"] = all(m.passed for m in ok)
    return row


def check_step(ctx: Context) -> Result:
    from src.models.loading import NO_DROPOUT, backbone_config, build_backbone

    res = Result()
    backbone = ctx.size("srresnet", "tiny")
    batch, patch = ctx.size((16, 32), (2, 16))
    warmup, reps = ctx.size((5, 20), (1, 3))
    torch.manual_seed(0)
    # Dropout off: compiled dropout draws its masks from another generator, which is not a precision error.
    base = build_backbone(backbone_config(backbone), scale=4, dropout=NO_DROPOUT)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(batch, 3, patch, patch, generator=g)
    # SRResNet adds the bilinear upscale of its input to what its body predicts: a target near that upscale makes
    # the loss measure the body's output, so that a precision's error shows in it.
    gt = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
    gt = gt + 0.05 * torch.randn(gt.shape, generator=g)
    lr, gt = lr.to(ctx.device), gt.to(ctx.device)
    variants, res.notes = _variants(ctx)
    ref, rows = {}, {}
    started = time.perf_counter()
    for precision, channels_last, compiled in variants:
        name = f"{precision}/{'channels_last' if channels_last else 'contiguous'}/{'compiled' if compiled else 'eager'}"
        if compiled and time.perf_counter() - started > ctx.opts["step_budget_s"]:
            res.notes.append(f"{name}: skipped: time budget (step_budget_s={ctx.opts['step_budget_s']})")
            continue
        try:
            rows[name] = _step_variant(ctx, res, base, lr, gt, name, precision, channels_last, compiled, warmup, reps,
                                       ref)
        except Exception as e:  # a variant that fails (a compiler error, say) must not hide the others
            if not ref:
                raise  # the reference itself: nothing to compare with
            res.add(f"{name} error", None, "==", 0, note=f"{type(e).__name__}: {e}"[:300])
            continue
        if not ref:
            ref.update(loss=rows[name]["loss_tensor"], grads=rows[name]["grads"])
        del rows[name]["loss_tensor"], rows[name]["grads"]
    exact = {k: v for k, v in rows.items() if v["within_tolerance"]}
    fastest = min(exact, key=lambda k: exact[k]["ms"]) if exact else None
    res.detail = {"backbone": backbone, "batch": batch, "lr_patch": patch, "variants": rows,
                  "fastest_within_tolerance": fastest, "reference": "32-true/contiguous/eager",
                  "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}
    if fastest:
        precision, layout, mode = fastest.split("/")
        res.detail["default"] = {"trainer.precision": precision, "channels_last": layout == "channels_last",
                                 "compile": mode == "compiled"}
    return res


# -------------------------------------------------------------------------------------------- 4 resume
def train_command(runs: Path, name: str, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "src.train", "logger=none", "trainer.enable_progress_bar=false",
            "eval.degradations=[clean]", "eval.reference=null", "data.val_crop=64", f"name={name}",
            f"paths.runs={runs}", f"paths.cache={runs}/cache", *overrides]


def train_env(device: torch.device) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    if device.type == "cuda":
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what cuBLAS needs for deterministic results
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def last_checkpoint(runs: Path, name: str) -> Path | None:
    found = sorted(runs.glob(f"{name}/*/checkpoints/last.ckpt"))
    return found[0] if found else None


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # replaced while being read
        return -1


def kill_at_checkpoint(cmd: list[str], env: dict, runs: Path, name: str, at_step: int, timeout_s: float) -> int:
    """Run `cmd` in its own process group and SIGKILL the group once its last.ckpt holds a step >= at_step.
    Returns the step of the checkpoint it was killed at; raises when the run ended or timed out first."""
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline, step = time.time() + timeout_s, -1
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpt = last_checkpoint(runs, name)
            if ckpt is not None and (step := checkpoint_step(ckpt)) >= at_step:
                break
            time.sleep(0.05)
    finally:
        killed = proc.poll() is None
        stop_group(proc)
    if not killed:
        raise RuntimeError(f"the run ended (exit {proc.returncode}) before a checkpoint of step {at_step}: "
                           f"{log.read_text(errors='replace').strip()[-300:]}")
    if step < at_step:
        raise RuntimeError(f"no checkpoint of step >= {at_step} within {timeout_s:.0f} s")
    return step


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session and everything it started (DDP ranks, loader workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_train(cmd: list[str], env: dict, timeout_s: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        stop_group(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} ... exited {proc.returncode}: {err.strip()[-600:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def max_weight_diff(a: Path, b: Path) -> tuple[float, int]:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    if sa.keys() != sb.keys():
        raise RuntimeError(f"checkpoints hold different keys: {sorted(set(sa) ^ set(sb))[:5]}")
    diffs = [float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point()]
    return max(diffs), len(diffs)


def _deterministic_ops(stderr: str) -> list[str]:
    """The ops a run was warned have no deterministic implementation (why weights can differ on CUDA)."""
    return sorted({line.split(" does not have")[0].strip().split()[-1] for line in stderr.splitlines()
                   if "does not have a deterministic implementation" in line})


def check_resume(ctx: Context) -> Result:
    res = Result()
    steps, every = ctx.size((200, 10), (12, 2))
    overrides = [f"trainer={'cpu' if ctx.on_cpu else 'gpu'}", f"trainer.max_steps={steps}",
                 f"ckpt_every_n_steps={every}", f"trainer.val_check_interval={steps}", "dropout.p=0.5",
                 *ctx.size(["backbone=srresnet", "data.batch_size=16", "data.lr_patch_size=32"],
                           ["backbone=tiny", "data.batch_size=2", "data.lr_patch_size=16"])]
    if not ctx.on_cpu:
        # warn, not error: an op without a deterministic kernel is then named in the output, and the difference
        # it makes is measured instead of ending the check
        overrides.append("+trainer.deterministic=warn")
    at_step = random.Random().choice(range(every, steps * 3 // 4, every))
    env, timeout = train_env(ctx.device), ctx.opts["run_timeout_s"]
    ref_runs, killed_runs = ctx.workdir / "resume_ref", ctx.workdir / "resume_killed"
    # The uninterrupted run and the one to kill run side by side: their start-up is most of the time.
    ref_runs.mkdir(parents=True)
    ref_log = ref_runs / "ref.log"
    with open(ref_log, "w") as out:
        ref = subprocess.Popen(train_command(ref_runs, "resume", overrides), cwd=REPO, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        killed_step = kill_at_checkpoint(train_command(killed_runs, "resume", overrides), env, killed_runs,
                                         "resume", at_step, timeout)
        ref.wait(timeout=timeout)
    finally:
        stop_group(ref)
    err = ref_log.read_text(errors="replace")
    if ref.returncode != 0:
        raise RuntimeError(f"uninterrupted run exited {ref.returncode}: {err.strip()[-600:]}")
    resumed = run_train(train_command(killed_runs, "resume", overrides), env, timeout)
    diff, n = max_weight_diff(last_checkpoint(ref_runs, "resume"), last_checkpoint(killed_runs, "resume"))
    res.add("resumed_from_checkpoint", float("resuming from" in resumed.stdout), "==", 1, "",
            f"killed at step {killed_step} of {steps}")
    res.add("weights_max_abs_diff", diff, "<=", 0, "", f"{n} tensors vs the uninterrupted run")
    ops = _deterministic_ops(err + resumed.stderr)
    res.detail = {"killed_at_step": killed_step, "kill_after_step": at_step, "max_steps": steps,
                  "checkpoint_every": every, "overrides": overrides, "nondeterministic_ops": ops}
    if diff > 0 and ops:
        res.notes.append(f"ops without a deterministic kernel: {', '.join(ops)}")
    return res


# -------------------------------------------------------------------------------------------- 5 bench
def check_bench(ctx: Context) -> Result:
    import logging

    from src import bench

    res = Result()
    argv = [f"device={ctx.device.type}", "eval_sets=[Set5]"]
    argv += (["quick=true", "batch_size=2", "lr_patch=16", "rounds=1", "warmup=1", "steps=1", "reps=1",
              "loader_batches=1", "eval_degradations=[clean]", "matmul_size=256"] if ctx.tiny else ["rounds=3"])
    level = logging.getLogger("src.bench").level
    logging.getLogger("src.bench").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = bench.run(bench.parse_args(argv))
    finally:
        logging.getLogger("src.bench").setLevel(level)
    f = report["figures"]
    judged = not ctx.on_cpu
    note = "" if judged else GPU_ONLY
    res.add("framework_overhead", f["framework_overhead"]["value"], "<=", 1.03, "ratio", note, judged)
    res.add("degradation_cost", f["degradation_cost"]["value"], "<=", 0.05, "of a step", note, judged)
    res.add("compute_efficiency", f["compute_efficiency"]["value"], ">=", 0.5, "of matmul peak", note, judged)
    res.add("data_loading", f["data_loading"]["value"], ">=", 3, "x demand", note, judged)
    res.add("evaluation_cache", f["evaluation_cache"]["value"], unit="cold/warm", note="reported")
    res.detail = {"argv": argv, "report": report}
    return res


# -------------------------------------------------------------------------------------------- 6 ddp
def _ddp_run(ctx: Context, trainer: str, name: str) -> tuple[int, float]:
    """(world size, fraction of rank pairs whose pools differ) of a short DDP run with a pool of degraded pairs."""
    runs = ctx.workdir / name
    overrides = [f"trainer={trainer}", "trainer.max_steps=4", "ckpt_every_n_steps=2", "trainer.val_check_interval=4",
                 "data.pool_size=4", "data.batch_size=2", "data.lr_patch_size=8", "backbone=tiny"]
    run_train(train_command(runs, name, overrides), train_env(ctx.device), ctx.opts["run_timeout_s"])
    ckpt = torch.load(last_checkpoint(runs, name), map_location="cpu", weights_only=True)
    pools = ckpt["SRDataModule"]["pools"]
    pairs = list(itertools.combinations(range(len(pools)), 2))
    distinct = sum(not torch.equal(pools[a]["lr"], pools[b]["lr"]) for a, b in pairs)
    return len(pools), distinct / len(pairs) if pairs else float("nan")


def check_ddp(ctx: Context) -> Result:
    res = Result()
    gpus = torch.cuda.device_count() if not ctx.on_cpu else 0
    runs = []
    if gpus:
        runs.append(("ddp", "ddp_nccl", f"trainer=ddp on {gpus} GPU(s), NCCL"))
    if gpus < 2:
        runs.append(("ddp_cpu", "ddp_gloo", "trainer=ddp_cpu: 2 CPU processes over gloo (ranks' draws)"))
        if gpus == 1:
            res.notes.append("one GPU: Lightning places one process per device, so the 2-rank check runs on "
                             "the CPU over gloo (gloo on one CUDA device is not a Lightning configuration)")
    for trainer, name, what in runs:
        world, distinct = _ddp_run(ctx, trainer, name)
        res.add(f"{name} ranks", world, ">=", max(gpus, 1) if trainer == "ddp" else 2, "processes", what)
        if world > 1:
            res.add(f"{name} ranks_drawing_differently", distinct, "==", 1, "fraction of rank pairs",
                    "each rank's pool of degraded pairs differs")
    res.detail = {"gpus": gpus, "nccl": bool(gpus and torch.distributed.is_nccl_available())}
    return res


# -------------------------------------------------------------------------------------------- 7 tiled
def check_tiled(ctx: Context) -> Result:
    from src.models.loading import NO_DROPOUT, backbone_config, build_backbone
    from src.tiling import bytes_per_pixel, upscale_image
    from src.utils import apply_memory_format

    res = Result()
    (h, w), tile, overlap = ctx.size(((3000, 4000), 512, 40), ((96, 128), 32, 16))
    (ch, cw), crop_tile = ctx.size(((192, 256), 128), ((48, 64), 24))
    backbone = ctx.size("srresnet", "tiny")
    torch.manual_seed(0)
    base = build_backbone(backbone_config(backbone), scale=4, dropout=NO_DROPOUT).eval()

    def on(device):
        return apply_memory_format(copy.deepcopy(base).to(device), "auto", device)

    model = on(ctx.device)
    img = fill(next(iter(photos(n=1).values())), h, w)
    window = tile + 2 * overlap
    estimate = bytes_per_pixel(model, ctx.device) * window**2
    if ctx.device.type == "cuda":
        _sync(ctx.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
        weights = torch.cuda.memory_allocated(ctx.device)
    t0 = time.perf_counter()
    upscale_image(model, img, 4, tile=tile, overlap=overlap, device=ctx.device)
    _sync(ctx.device)
    seconds = time.perf_counter() - t0
    if ctx.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(ctx.device) - weights
        res.add("peak_over_tile_estimate", peak / estimate, "<=", 1, "ratio",
                f"peak {peak / 2**20:.0f} MiB above the weights vs {estimate / 2**20:.0f} MiB planned per tile")
    else:
        peak = None
        res.add("peak_over_tile_estimate", None, note="torch.cuda.max_memory_allocated: CUDA only", judged=False)
    crop = np.ascontiguousarray(img[:ch, :cw])
    tiled_dev = upscale_image(model, crop, 4, tile=crop_tile, overlap=overlap, device=ctx.device)
    untiled_dev = upscale_image(model, crop, 4, tile=None, device=ctx.device)
    tiled_cpu = upscale_image(on("cpu"), crop, 4, tile=crop_tile, overlap=overlap, device="cpu")
    diff = np.abs(tiled_dev.astype(np.int16) - tiled_cpu.astype(np.int16))
    res.add("tiled_device_vs_cpu_max", float(diff.max()), "<=", 1, "grey levels", ctx.self_check())
    res.add("tiled_vs_untiled_max", float(np.abs(tiled_dev.astype(np.int16) - untiled_dev.astype(np.int16)).max()),
            "<=", 1, "grey levels", f"overlap {overlap} LR px")
    res.add("large_image_s", seconds, unit="s", note=f"{w}x{h} LR in {tile} px tiles")
    res.detail = {"image": [h, w], "tile": tile, "overlap": overlap, "backbone": backbone,
                  "planned_bytes_per_tile": estimate, "peak_bytes_above_weights": peak, "crop": [ch, cw],
                  "crop_tile": crop_tile}
    return res


# -------------------------------------------------------------------------------------------- 8 cost
COST_SETTINGS = {  # label: (overrides, runs)
    "paper": (["experiment=paper"], 1),
    "official": (["experiment=official"], 1),
    "rrdb_pair": (["experiment=paper", "backbone=rrdb"], 2),  # Table 1's Real-RRDB: p=0 and p=0.5
}


def step_seconds(ctx: Context, overrides: Sequence[str], reps: int, warmup: int) -> dict:
    """Median seconds of one training step of the composed config on the device: the degradation (with
    crop-degrade-crop and the pool where the recipe has them), forward, L1, backward, Adam, EMA."""
    from omegaconf import OmegaConf

    from src.bench import BareStep, time_calls
    from src.train import build_module
    from src.utils import apply_memory_format, build

    cfg = compose(overrides)
    data = OmegaConf.merge(cfg.data, {"train_sets": ["skimage"], "val_sets": [], "test_sets": [],
                                      "subimages": None, "cache_dir": None, "num_workers": 0})
    dm = build(data, degradation=build(cfg.degradation))
    torch.manual_seed(0)
    module = build_module(cfg).to(ctx.device)
    for net in (module.net, module.net_ema):
        if net is not None:
            apply_memory_format(net, cfg.channels_last, ctx.device)
    step = BareStep(module, ctx.device)
    size = dm.degrade_size or dm.lr_patch_size * dm.scale
    hr = torch.rand(dm.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(ctx.device)

    def one(i: int) -> None:
        lr, gt = dm.degrade_batch(hr, i)
        if dm.pool.size:
            from src import seeding

            lr, gt = dm.pool(lr, gt, seeding.generator(0, "pool", i, device=ctx.device))
        step(lr.contiguous(), gt.contiguous())
        if module.net_ema is not None:
            module._update_ema()

    times = time_calls(one, reps, warmup, ctx.device)
    return {"s": statistics.median(times), "spread": max(times) / min(times), "max_steps": int(cfg.trainer.max_steps),
            "backbone": cfg.backbone._target_.rsplit(".", 1)[-1], "batch": dm.batch_size, "hr": size,
            "pool": dm.pool.size, "ema": bool(module.net_ema is not None), "params": sum(
                p.numel() for p in module.net.parameters())}


def check_cost(ctx: Context) -> Result:
    res = Result()
    reps, warmup = ctx.size((10, 3), (2, 1))
    shrink = ctx.size([], ["data.batch_size=2", "data.lr_patch_size=16", "backbone.num_feat=16",
                           "backbone.num_block=2"])
    for label, (overrides, runs) in COST_SETTINGS.items():
        extra = list(shrink)
        if ctx.tiny and label == "official":
            extra.append("data.degrade_size=96")
        if ctx.tiny and label == "rrdb_pair":
            extra.append("backbone.num_grow_ch=8")
        m = step_seconds(ctx, [*overrides, *extra], reps, warmup)
        hours = runs * m["max_steps"] * m["s"] / 3600
        note = (f"{runs} x " if runs > 1 else "") + f"{m['max_steps']} steps x {1e3 * m['s']:.1f} ms"
        res.add(f"{label} hours", hours, unit="h", note=note + (" (tiny size: not the paper's cost)" if ctx.tiny
                                                                  else ""), judged=False)
        res.add(f"{label} timing_spread", m["spread"], "<=", 1.5, "max/min", f"{reps} timed steps", not ctx.on_cpu)
        res.detail[label] = {**m, "runs": runs, "hours": hours, "overrides": [*overrides, *extra]}
    return res


# -------------------------------------------------------------------------------------------- driver
CHECKS: dict[str, tuple[str, Callable[[Context], Result]]] = {
    "jpeg": ("real JPEG: device vs CPU, vs OpenCV", check_jpeg),
    "pipeline": ("Real-ESRGAN pipeline: device vs CPU, same draws", check_pipeline),
    "step": ("SRResNet step: precision x layout x compile", check_step),
    "resume": ("kill -9 at a random checkpoint, resume", check_resume),
    "bench": ("make bench figures", check_bench),
    "ddp": ("DDP, ranks drawing differently", check_ddp),
    "tiled": ("tiled inference: memory, equality", check_tiled),
    "cost": ("hours of the paper's settings", check_cost),
}


def run_check(ctx: Context, name: str) -> dict:
    title, fn = CHECKS[name]
    entry = {"title": title, "status": "skipped", "seconds": 0.0, "measures": [], "detail": {}, "notes": []}
    if ctx.left_s() <= 0:
        entry["notes"] = ["skipped: time budget"]
        return entry
    if name == "ddp" and not ctx.opts["ddp"]:
        entry["notes"] = ["skipped: ddp=false (on a CPU, tests/test_resilience.py runs the 2-process gloo DDP; "
                          "ddp=true runs it here)"]
        return entry
    t0 = time.perf_counter()
    try:
        res = fn(ctx)
        entry.update(status=check_status(res.measures), measures=[m.as_dict() for m in res.measures],
                     detail=res.detail, notes=res.notes)
    except Exception as e:  # one broken check must not hide the others
        entry.update(status="fail", error=f"{type(e).__name__}: {e}".strip(),
                     traceback=traceback.format_exc(limit=6))
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


def environment(device: torch.device) -> dict:
    import platform

    env = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, gpus=torch.cuda.device_count(), memory_gib=props.total_memory / 2**30,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   tf32_cudnn=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def format_table(report: dict) -> str:
    lines = [f"gpu-check on {report['environment']['device']} ({report['environment']['device_name']}), "
             f"size={report['size']}, torch {report['environment']['torch']}: {report['summary']}",
             f"{'check / measure':<44} {'value':>11} {'bound':>11} {'':>7}  note"]
    mark = {True: "pass", False: "FAIL", None: "-"}
    for i, name in enumerate(report["order"], 1):
        c = report["checks"][name]
        status = c["status"].upper() if c["status"] == "fail" else c["status"]
        lines.append(f"{i} {name:<42} {'':>11} {'':>11} {status:>7}  {c['seconds']:.1f} s  {c['title']}")
        for m in c["measures"]:
            v = m["value"]
            shown = "-" if v is None else f"{v:.4g}"
            lines.append(f"    {m['name']:<40} {shown:>11} {m['bound'] or '':>11} {mark[m['pass']]:>7}  "
                         f"{(m['unit'] + '; ' if m['unit'] else '') + m['note']}".rstrip("; "))
        for n in c["notes"]:
            lines.append(f"    note: {n}")
        if "error" in c:
            lines.append(f"    error: {c['error'][:300]}")
    default = report.get("gpu_default")
    if default:
        lines.append(f"fastest step within tolerance: {default}")
    return "\n".join(lines)


def run(opts: dict) -> dict:
    device = torch.device(opts["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("src.gpucheck: device=cuda but no CUDA device is available; on this machine run "
                         "`make gpu-check device=cpu` (python -m src.gpucheck device=cpu), the tiny CPU self-check")
    tiny = opts["size"] == "tiny" if opts["size"] else device.type == "cpu"
    budget = opts["budget_s"] or (450.0 if device.type == "cuda" else 2400.0)
    # A tiny training run takes seconds on a free CPU and minutes on one shared with other jobs.
    opts["run_timeout_s"] = opts["run_timeout_s"] or (240.0 if device.type == "cuda" else 900.0)
    out = Path(opts["out"] or REPO / "docs" / "results" / "gpu" / f"{device.type}.json")
    names = opts["checks"] or list(CHECKS)
    os.environ.setdefault("WANDB_MODE", "disabled")
    started = time.perf_counter()
    report = {"environment": environment(device), "size": "tiny" if tiny else "full", "budget_s": budget,
              "options": {k: v for k, v in opts.items() if k != "out"}, "checks": {}, "summary": "", "order": names,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp:
        ctx = Context(device=device, tiny=tiny, opts=opts, workdir=Path(tmp), started=started, budget_s=budget)
        ctx.cfg = compose()
        for name in names:
            print(f"[gpucheck] {name} ...", flush=True)
            report["checks"][name] = entry = run_check(ctx, name)
            print(f"[gpucheck] {name}: {entry['status']} in {entry['seconds']} s"
                  + (f" ({entry['error'][:200]})" if "error" in entry else ""), flush=True)
            counts = {s: sum(c["status"] == s for c in report["checks"].values()) for s in ("pass", "fail", "skipped")}
            report["summary"] = ", ".join(f"{n} {s}" for s, n in counts.items())
            report["seconds"] = round(time.perf_counter() - started, 1)
            step = report["checks"].get("step", {}).get("detail", {})
            if step.get("default") and device.type == "cuda":
                report["gpu_default"] = step["default"]
            atomic_write_json(out, report)  # after every check: a cut-short GPU session keeps what it measured
    report["out"] = str(out)
    return report


# name: (type, default, help), parsed by src.options.key_values like every small tool's options
OPTIONS = {
    "device": (str, "cuda", "cuda | cpu"),
    "size": (str, None, "full | tiny (default: full on cuda, tiny on cpu)"),
    "out": (str, None, "JSON report (default: docs/results/gpu/<device>.json)"),
    "checks": (list, None, f"a subset, e.g. [jpeg,step] (default: all: {','.join(CHECKS)})"),
    "budget_s": (float, None, "seconds after which the remaining checks are skipped (default: 450 on cuda, 2400 "
                              "on cpu)"),
    "step_budget_s": (float, 150.0, "seconds of the step check after which compiled variants are skipped"),
    "compile": (bool, True, "include the torch.compile variants of the step check (GPU only)"),
    "ddp": (bool, None, "run the DDP check (default: true on cuda, false on cpu)"),
    "run_timeout_s": (float, None, "limit of each `python -m src.train` the resume and DDP checks start (default: "
                                   "240 on cuda, 900 on cpu)"),
}


def usage() -> str:
    lines = ["usage: python -m src.gpucheck [key=value ...]", "", "options:"]
    lines += [f"  {k}=...".ljust(20) + h + (f" (default: {d})" if d is not None and "default" not in h else "")
              for k, (_, d, h) in OPTIONS.items()]
    lines += ["", "examples:", "  make gpu-check                       # on a GPU machine",
              "  make gpu-check device=cpu            # the tiny CPU self-check",
              "  python -m src.gpucheck device=cuda checks=[step,tiled] out=/tmp/gpu.json"]
    return "\n".join(lines)


def parse_options(argv: Sequence[str]) -> dict:
    from src.options import key_values, no_names

    names, opts = key_values(argv, OPTIONS, "src.gpucheck")
    no_names(names, OPTIONS, "src.gpucheck")
    for key, (kind, _, _) in OPTIONS.items():
        if kind is float and opts[key] is not None and opts[key] <= 0:
            raise SystemExit(f"error: src.gpucheck: {key} must be > 0, got {opts[key]:g}")
    if opts["checks"] is not None:
        bad = [v for v in opts["checks"] if v not in CHECKS]
        if bad or not opts["checks"]:
            raise SystemExit(f"error: src.gpucheck: checks={opts['checks']}: unknown {bad or 'empty'}; allowed: "
                             f"{', '.join(CHECKS)}")
    if opts["device"] not in ("cuda", "cpu"):
        raise SystemExit(f"error: src.gpucheck: device={opts['device']!r}: allowed values are cuda and cpu")
    if opts["size"] not in (None, "full", "tiny"):
        raise SystemExit(f"error: src.gpucheck: size={opts['size']!r}: allowed values are full and tiny")
    if opts["ddp"] is None:
        opts["ddp"] = opts["device"] == "cuda"
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__ + "\n" + usage())
        return 0
    report = run(parse_options(argv))
    print(format_table(report))
    print(f"[gpucheck] wrote {report['out']} in {report['seconds']} s")
    return 1 if any(c["status"] == "fail" for c in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
