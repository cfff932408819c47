"""Speed figures of the suite as ratios against its own lower bounds, all measured in one process.

    python -m src.bench [quick=true] [device=cpu|cuda] [out=bench.json] [threads=1]  (--help: every option)

1. framework_overhead  Lightning training step / bare PyTorch loop doing the same work on the same batches
                       (data loading, Real-ESRGAN degradation, forward, L1, backward, Adam, scheduler)   <= 1.03
2. degradation_cost    Real-ESRGAN pipeline on one HR batch / one training step on that batch            <= 0.10
3. compute_efficiency  training FLOP/s (convolutions and matrix products, count_flops) / peak fp32 matmul
                       FLOP/s on the same device                                          >= 0.5 (GPU only)
4. data_loading        HR patches/s the train dataloader delivers / patches/s the training step consumes  >= 3
5. evaluation_cache    seconds of a test-set evaluation with a cold degraded-LR cache / with a warm one (no target)
6. evaluation_efficiency  evaluation forward FLOP/s (the same count over the test LR images) / the same peak  >= 0.5
7. evaluation_overhead    test-set evaluation with a warm cache (LR images, forward, conversions, PSNR/SSIM)
                          / the bare forward passes over the same LR images                                <= 1.15
8. parallel_jobs[<model>] training steps/s of `jobs` processes side by side (one thread each, as a local sweep
                          runs them) / steps/s of one such process alone; CPU only, `jobs` at most the cores  (ideal: jobs)

Every time is a median over repetitions after warm-up steps. The full run uses the paper's SRResNet (batch 16 of
32x32 LR); quick=true the tiny backbone and Set5. The composed train config (conf/train.yaml with data=t91_bsd200
when the data root has T91 and BSD200, else data=sample) supplies the module, the datamodule and the degradation.
Figures 3, 6 and 7 are also measured for the model a campaign trains (`experiment=`, default repro_small's tiny
SRResNet, or `backbone=`), named `<figure>[<model>]`, on the same batch and LR images, against the same peak.
Networks run in the layout training and the tools use (`channels_last`, src.utils.use_channels_last).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src.utils import atomic_write_json

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BENCH_SETS = ("Set5", "Set14", "BSD100", "Urban100")
# The whole protocol runs the full SRResNet over ~6 M LR pixels x 8 degradations x 2 (cold, warm): minutes on a
# GPU, hours on a CPU, so a CPU run evaluates the smallest sets unless eval_sets= says otherwise.
CPU_EVAL_SETS = ("Set5",)
# The architecture arguments that say how big a benchmarked model is (SRResNet/RRDB and SwinIR spell them apart).
SIZE_ARGS = ("num_feat", "num_block", "num_grow_ch", "embed_dim", "depths", "num_heads", "window_size")
# A full SRResNet step takes seconds on a CPU and tens of milliseconds on a GPU: the repetition counts differ
# so that both finish in minutes (the CPU's are the fewest that still give a median).
DEFAULTS = {
    ("cpu", "full"): dict(rounds=3, warmup=1, steps=2, reps=3, matmul_size=2048, jobs=2),
    ("cpu", "quick"): dict(rounds=2, warmup=1, steps=2, reps=3, matmul_size=1024, jobs=1),
    ("gpu", "full"): dict(rounds=5, warmup=10, steps=50, reps=20, matmul_size=8192, jobs=1),
    ("gpu", "quick"): dict(rounds=3, warmup=5, steps=20, reps=10, matmul_size=4096, jobs=1),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def time_calls(fn: Callable[[int], object], reps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of `reps` calls fn(i) after `warmup` untimed ones (i counts all calls)."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + reps):
        _sync(device)
        start = time.perf_counter()
        fn(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def figure(value: float, target: str | None, met: bool | None, **detail) -> dict:
    return {"value": float(value), "target": target, "met": met, "detail": detail}


# ------------------------------------------------------------------------------------------------ setup
def compose_config(quick: bool, device: torch.device, data_root: Path, cache_dir: str | None,
                   batch_size: int | None, lr_patch: int | None, total_steps: int, model: Sequence[str] = ()):
    """The train config as `python -m src.train` composes it, for the benchmark's backbone, data and device;
    `model` (`experiment=...` or `backbone=...` overrides) replaces the benchmark's backbone."""
    from hydra import compose, initialize_config_dir

    from src.resolvers import register_resolvers

    register_resolvers()
    has_train_data = all((data_root / s / "HR").is_dir() for s in ("T91", "BSD200"))
    overrides = [f"backbone={'tiny' if quick else 'srresnet'}", "dropout.position=none", "logger=none",
                 f"data={'t91_bsd200' if has_train_data else 'sample'}",
                 f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}"]
    if model:  # an experiment sets its own backbone, dropout and data; the device stays the benchmark's
        overrides = [*model, "logger=none"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    # Set after composing (no override-grammar quoting of paths); interpolations pick the values up.
    cfg.data.root = str(data_root)
    cfg.trainer.max_steps = total_steps
    if cache_dir is not None:
        cfg.paths.cache = str(cache_dir)
    if batch_size is not None:
        cfg.data.batch_size = batch_size
    if lr_patch is not None:
        cfg.data.lr_patch_size = lr_patch
    return cfg


def build_datamodule(cfg, degradation, notes: list[str]):
    """The configured SRDataModule, set up for fitting. T91 holds images smaller than a 128 px HR patch, which
    HRPatches rejects; then the benchmark falls back to the sets that fit and says so in the report."""
    from omegaconf import OmegaConf

    from src.data.datasets import decoded, resolve_set
    from src.utils import build

    dm = build(cfg.data, degradation=degradation)
    try:
        dm.setup("fit")
        return dm
    except ValueError as e:
        patch = cfg.data.lr_patch_size * cfg.scale
        fits = [s for s in cfg.data.train_sets
                if all(min(decoded(p, dm.cache_dir).shape[:2]) >= patch for p in resolve_set(s, dm.root))]
        if not fits or fits == list(cfg.data.train_sets):
            raise
        notes.append(f"data.train_sets={list(cfg.data.train_sets)} fails to set up ({e}); measured with "
                     f"train_sets={fits} instead")
        data_cfg = OmegaConf.merge(cfg.data, {"train_sets": fits})
        dm = build(data_cfg, degradation=degradation)
        dm.setup("fit")
        return dm


class BareStep:
    """The training step without any framework: zero_grad, forward, L1, backward, Adam, scheduler. The network
    is in the layout training gives it (`channels_last`)."""

    def __init__(self, module: nn.Module, device: torch.device, channels_last="auto"):
        from src.utils import apply_memory_format

        self.net = apply_memory_format(module.net.to(device).train(), channels_last, device)
        conf = module.configure_optimizers()
        if isinstance(conf, dict):
            self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        else:
            self.opt, self.sched = conf, None

    def __call__(self, lr: torch.Tensor, gt: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.l1_loss(self.net(lr), gt).backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()


def degrade(dm, batch: torch.Tensor, device: torch.device, step: int):
    """What SRDataModule.on_after_batch_transfer does for micro-batch 0 of `step` on rank 0 (without the pool):
    the degradation and, with data.degrade_size, the patch cut from the degraded crop."""
    hr = batch.to(device, non_blocking=True).float().div_(255.0)
    lr, gt = dm.degrade_batch(hr, step)
    return lr.contiguous(), gt.contiguous()


# --------------------------------------------------------------------------------------------- figures
def framework_overhead(cfg, make_module, make_dm, degradation, device, rounds: int, warmup: int, steps: int) -> dict:
    """Rounds of (Lightning fit, bare loop), the order alternating; each round's time per step is measured from
    the end of step `warmup` to the end of step `warmup + steps`, so setup and worker start-up are excluded."""
    import pytorch_lightning as pl

    from src.utils import build

    marks = (warmup, warmup + steps)

    class Clock(pl.Callback):
        def __init__(self):
            self.at = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 in marks:
                _sync(device)
                self.at[batch_idx + 1] = time.perf_counter()

    module, lightning_dm = make_module(), make_dm()
    bare, bare_dm = BareStep(make_module(), device, cfg.channels_last), make_dm()  # same seed: same initial weights

    def run_lightning() -> float:
        clock = Clock()
        trainer = build(cfg.trainer, logger=False, callbacks=[clock], max_steps=marks[1], limit_val_batches=0,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tempfile.gettempdir())
        trainer.fit(module, datamodule=lightning_dm)
        return (clock.at[marks[1]] - clock.at[marks[0]]) / steps

    def run_bare() -> float:
        at = {}
        for i, batch in enumerate(bare_dm.train_dataloader()):
            bare(*degrade(bare_dm, batch, device, i))
            if i + 1 in marks:
                _sync(device)
                at[i + 1] = time.perf_counter()
            if i + 1 == marks[1]:
                break
        return (at[marks[1]] - at[marks[0]]) / steps

    lightning, plain = [], []
    for r in range(rounds):
        for run in ((run_lightning, run_bare) if r % 2 == 0 else (run_bare, run_lightning)):
            (lightning if run is run_lightning else plain).append(run())
    ratios = [a / b for a, b in zip(lightning, plain)]
    ratio = _median(ratios)
    return figure(ratio, "<= 1.03", ratio <= 1.03, lightning_s_per_step=_median(lightning),
                  bare_s_per_step=_median(plain), round_ratios=[round(r, 4) for r in ratios],
                  timed_steps_per_round=steps, warmup_steps=warmup)


def count_flops(net: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs of `net` on x as torch's FlopCounterMode counts them: convolutions as
    2 * Cin/groups * Cout * kh * kw * Hout * Wout * B, matrix products (linear layers, attention) as 2 * M * N * K;
    element-wise work (activations, pixel shuffle, softmax, norms) is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops())


def peak_matmul_flops(device: torch.device, n: int, reps: int) -> float:
    """FLOP/s of an n x n fp32 matmul, in the math mode the convolutions use (TF32 where cuDNN allows it)."""
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    try:
        times = time_calls(lambda i: torch.matmul(a, b), reps, 2, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n**3 / _median(times)


def peak_figures(device: torch.device, n: int, reps: int) -> dict:
    """The matmul peak every efficiency figure of one benchmark run is divided by, measured once."""
    return {"flops": peak_matmul_flops(device, n, reps), "n": n,
            "tf32": bool(device.type == "cuda" and torch.backends.cudnn.allow_tf32)}


def compute_efficiency(step: BareStep, lr: torch.Tensor, gt: torch.Tensor, device, reps: int, peak: dict,
                       gpu_only: bool = False) -> tuple[dict, float]:
    """(compute_efficiency figure, median seconds per step): the training step's FLOP/s over the peak. With
    `gpu_only` the 0.5 target is not judged on a CPU (the paper's SRResNet, as the figure was first defined)."""
    step_s = _median(time_calls(lambda i: step(lr, gt), reps, 1, device))
    train_flops = 3 * count_flops(step.net, lr)  # backward ~ 2x forward (input and weight gradients)
    achieved = train_flops / step_s
    eff = achieved / peak["flops"]
    judged = device.type == "cuda" or not gpu_only
    return figure(eff, ">= 0.5 (GPU)" if gpu_only else ">= 0.5", eff >= 0.5 if judged else None,
                  train_gflop_per_step=train_flops / 1e9, train_gflops=achieved / 1e9,
                  train_step_ms=1e3 * step_s, peak_matmul_gflops=peak["flops"] / 1e9, matmul_size=peak["n"],
                  tf32=peak["tf32"], channels_last=_channels_last(step.net)), step_s


def _channels_last(net: nn.Module) -> bool:
    w = next((p for p in net.parameters() if p.dim() == 4), None)
    return bool(w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())


def step_figures(cfg, make_module, dm, degradation, device, reps: int, peak: dict) -> tuple[dict, dict, dict]:
    """degradation_cost, compute_efficiency and the step's patch consumption (for data_loading), on one real
    HR batch from the datamodule."""
    batch = next(iter(dm.train_dataloader()))
    deg_times = time_calls(lambda i: degrade(dm, batch, device, i), reps, 1, device)
    lr, gt = degrade(dm, batch, device, 0)
    step = BareStep(make_module(), device, cfg.channels_last)
    compute, step_s = compute_efficiency(step, lr, gt, device, reps, peak, gpu_only=True)
    deg_s = _median(deg_times)
    cost = deg_s / step_s
    detail = {"pipeline_ms": 1e3 * deg_s, "train_step_ms": 1e3 * step_s, "hr_batch": list(batch.shape), "reps": reps}
    if device.type == "cuda":  # the CPU figure is reported too, next to the GPU one
        cpu_times = time_calls(lambda i: degrade(dm, batch, torch.device("cpu"), i),
                               max(2, reps // 2), 1, torch.device("cpu"))
        detail["pipeline_ms_cpu"] = 1e3 * _median(cpu_times)
    degradation_cost = figure(cost, "<= 0.10", cost <= 0.10, **detail)
    consumed = batch.shape[0] / (deg_s + step_s)
    return degradation_cost, compute, {"patches_per_s": consumed, "lr": lr, "gt": gt}


def data_loading(dm, consumed_per_s: float, reps: int, batches_per_rep: int) -> dict:
    """Patches/s of the datamodule's train dataloader alone, after its workers have started and filled their
    prefetch queue, against what the training step (degradation included) consumes."""
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(2 + 2 * max(loader.num_workers, 1)):
        next(it)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(batches_per_rep):
            next(it)
        rates.append(batches_per_rep * loader.batch_size / (time.perf_counter() - start))
    del it
    delivered = _median(rates)
    ratio = delivered / consumed_per_s
    return figure(ratio, ">= 3", ratio >= 3, loader_patches_per_s=delivered, step_patches_per_s=consumed_per_s,
                  num_workers=loader.num_workers, batch_size=loader.batch_size,
                  train_sets=list(dm.train_sets), reps=reps, batches_per_rep=batches_per_rep)


def eval_sets(data_root: Path, set_names: Sequence[str], notes: list[str]) -> dict[str, list]:
    """The benchmark's test sets found under `data_root` ({name: paths}); the bundled photos when none is."""
    from src.data.datasets import resolve_set

    sets = {s: resolve_set(s, data_root) for s in set_names if (data_root / s / "HR").is_dir()}
    missing = [s for s in set_names if s not in sets]
    if missing:
        notes.append(f"evaluation: {', '.join(missing)} not under {data_root}; skipped")
    if not sets:
        sets = {"skimage_holdout": resolve_set("skimage_holdout", data_root)}
        notes.append("evaluation: no benchmark set found; used the bundled skimage_holdout photos")
    return sets


def eval_model(cfg, device: torch.device) -> nn.Module:
    """The config's backbone as the evaluation tools get it: built without dropout, in the configured layout."""
    from omegaconf import OmegaConf

    from src.models.loading import build_backbone
    from src.utils import apply_memory_format

    module = OmegaConf.to_container(cfg.module, resolve=True)
    model = build_backbone(module["backbone"], scale=module["scale"]).to(device).eval()
    return apply_memory_format(model, cfg.get("channels_last", "auto"), device)


def _describe(cfg) -> dict:
    """The backbone's class and its size arguments (whatever the architecture names them)."""
    from omegaconf import OmegaConf

    args = OmegaConf.to_container(cfg.backbone, resolve=True)
    return {"backbone": args.pop("_target_").rsplit(".", 1)[-1],
            **{k: v for k, v in args.items() if k in SIZE_ARGS}}


def evaluation_cache(cfg, model: nn.Module, sets: Mapping[str, Sequence], degradations: Sequence[str],
                     device: torch.device, cache: str) -> dict:
    """One evaluation with an empty degraded-LR cache (`cache`, a fresh folder), then the same one again."""
    from src.evaluation import evaluate

    first = next(iter(sets.values()))[:1]
    evaluate(model, {"warmup": first}, ["clean"], cfg.scale, 0, device)  # first-call costs out of the cold run
    seconds = []
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        evaluate(model, sets, list(degradations), cfg.scale, 0, device, cache_dir=cache)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return figure(seconds[0] / seconds[1], None, None, cold_s=seconds[0], warm_s=seconds[1],
                  sets={s: len(p) for s, p in sets.items()}, degradations=list(degradations), **_describe(cfg))


def evaluation_speed(cfg, model: nn.Module, sets: Mapping[str, Sequence], degradations: Sequence[str],
                     device: torch.device, cache: str, reps: int, peak: dict,
                     warm_s: Sequence[float] = ()) -> tuple[dict, dict]:
    """(evaluation_efficiency, evaluation_overhead) over the LR images of `sets` x `degradations`, whose degraded-LR
    cache `cache` already holds.

    The bare pass is the model alone on the LR images, decoded and on the device beforehand; the evaluation is
    `src.evaluation.evaluate` (cache reads, HR decoding, conversions, forward, PSNR/SSIM). They alternate, `reps`
    times each, and the overhead is the median of each evaluation's time over its own bare pass's; `warm_s` are
    seconds of warm evaluations already measured (then each counts as one repetition).
    FLOPs are counted once per distinct LR shape (`count_flops`), the same count as the training figures.
    """
    from src.data.testsets import load_test_pairs
    from src.evaluation import evaluate

    xs = [torch.from_numpy(lr).to(device).permute(2, 0, 1)[None].float().div_(255)
          for paths in sets.values() for d in degradations
          for _, _, lr in load_test_pairs(paths, d, cfg.scale, 0, cache)]
    per_shape: dict[tuple, int] = {}
    for x in xs:
        if x.shape not in per_shape:
            per_shape[x.shape] = count_flops(model, x)
    flops = sum(per_shape[x.shape] for x in xs)

    def bare() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            for x in xs:
                model(x)
        _sync(device)
        return time.perf_counter() - start

    def full() -> float:
        _sync(device)
        start = time.perf_counter()
        evaluate(model, sets, list(degradations), cfg.scale, 0, device, cache_dir=cache)
        _sync(device)
        return time.perf_counter() - start

    evals, bares = list(warm_s), []
    if not evals:
        full()  # warm-up: first-call costs of this model
    for r in range(reps):
        bares.append(bare())
        if r >= len(warm_s):
            evals.append(full())
    bare_s, eval_s = _median(bares), _median(evals)
    # each evaluation over the bare pass timed next to it, as framework_overhead pairs its rounds: a machine whose
    # speed drifts (other jobs, turbo) moves both sides of a pair alike
    ratios = [e / b for e, b in zip(evals, bares)]
    eff = flops / bare_s / peak["flops"]
    where = {"images": len(xs), "sets": {s: len(p) for s, p in sets.items()}, **_describe(cfg),
             "channels_last": _channels_last(model)}
    efficiency = figure(eff, ">= 0.5", eff >= 0.5, forward_gflop=flops / 1e9, forward_gflops=flops / bare_s / 1e9,
                        peak_matmul_gflops=peak["flops"] / 1e9, bare_forward_s=bare_s, **where)
    ratio = _median(ratios)
    overhead = figure(ratio, "<= 1.15", ratio <= 1.15, evaluate_s=eval_s, bare_forward_s=bare_s,
                      rep_ratios=[round(r, 4) for r in ratios], reps=len(bares), **where)
    return efficiency, overhead


def _job_steps(model: Sequence[str], quick: bool, data_root: str, lr: torch.Tensor, gt: torch.Tensor,
               warmup: int, steps: int, start, out) -> None:
    """One side-by-side job (a spawned process): the campaign model's bare training step on one thread, `warmup`
    steps, then waits at `start` (a barrier) with the other jobs and puts its seconds for `steps` steps on `out`."""
    from src.train import build_module
    from src.utils import set_threads

    set_threads(1)

    cfg = compose_config(quick, torch.device("cpu"), Path(data_root), None, None, None, 1000, model=model)
    torch.manual_seed(cfg.seed)
    step = BareStep(build_module(cfg), torch.device("cpu"), cfg.channels_last)
    for _ in range(warmup):
        step(lr, gt)
    start.wait()
    begin = time.perf_counter()
    for _ in range(steps):
        step(lr, gt)
    out.put(time.perf_counter() - begin)


def parallel_jobs(model: Sequence[str], quick: bool, data_root: Path, lr: torch.Tensor, gt: torch.Tensor,
                  jobs: int, warmup: int, steps: int) -> dict:
    """Training steps per second of `jobs` processes side by side, one thread each (as a local sweep runs them,
    src.utils.job_threads), over those of one such process alone: how much of `jobs` times the work the cores
    deliver when memory bandwidth and caches are shared. The aggregate is all jobs' steps over the time until
    the last one finishes (a job done early does not inflate it)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter per job, as joblib's loky workers are

    def side_by_side(n: int) -> list[float]:
        start, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_job_steps, args=(list(model), quick, str(data_root), lr, gt, warmup, steps,
                                                       start, out)) for _ in range(n)]
        for p in procs:
            p.start()
        seconds = []
        while len(seconds) < n:  # a job that dies never reports: fail then instead of waiting for ever
            try:
                seconds.append(out.get(timeout=1))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"parallel_jobs: a benchmark job exited with code {failed[0]}") from None
        for p in procs:
            p.join()
        return seconds

    alone = side_by_side(1)[0]
    together = side_by_side(jobs)
    single, aggregate = steps / alone, jobs * steps / max(together)
    return figure(aggregate / single, None, None, jobs=jobs, steps=steps, single_steps_per_s=single,
                  aggregate_steps_per_s=aggregate, alone_step_ms=1e3 * alone / steps,
                  side_by_side_step_ms=[round(1e3 * s / steps, 1) for s in together], threads_per_job=1)


# ------------------------------------------------------------------------------------------------ report
def format_report(report: dict) -> str:
    width = max(map(len, report["figures"]), default=20)
    lines = [f"device {report['device']} ({report['device_name']}), torch {report['torch']}, "
             f"{report['threads']} threads, load average {report['load_avg_start']} -> {report['load_avg_end']}",
             f"{'figure':<{width}} {'value':>8} {'target':>13} {'met':>5}  measured"]
    for name, f in report["figures"].items():
        d = f["detail"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in d.items() if isinstance(v, float))
        met = {True: "yes", False: "NO", None: "-"}[f["met"]]
        lines.append(f"{name:<{width}} {f['value']:8.3f} {f['target'] or '-':>13} {met:>5}  {shown}")
    return "\n".join(lines + [f"note: {n}" for n in report["notes"]])


def _cv2_threads() -> int:
    import cv2

    return cv2.getNumThreads()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from src.data.datasets import default_data_root
    from src.train import build_module
    from src.utils import apply_memory_format, build, portable_path, resolve_device, set_threads

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device is available; use device=cpu")
    device = resolve_device(args.device or "auto")
    if args.threads:
        set_threads(args.threads)
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    load_start, wall = os.getloadavg(), time.perf_counter()
    warmup, steps, rounds = args.warmup, args.steps, args.rounds
    # Sampler and cosine schedule need a run length; longer than any benchmark run, so neither runs out.
    cfg = compose_config(args.quick, device, data_root, args.cache_dir, args.batch_size, args.lr_patch,
                         total_steps=max(1000, 10 * (warmup + steps)))
    notes = [f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads: other processes on the same "
             f"cores slow every figure and add noise (see the load averages); more threads than free cores make "
             f"them wait on each other (threads=1 avoids that)"] if device.type == "cpu" else []
    degradation = build(cfg.degradation)

    def make_module():  # in the layout training gives the network and its average (src.train)
        torch.manual_seed(cfg.seed)
        module = build_module(cfg).to(device)
        for net in (module.net, module.net_ema):
            if net is not None:
                apply_memory_format(net, cfg.channels_last, device)
        return module

    dm = build_datamodule(cfg, degradation, notes)
    used_sets = list(dm.train_sets)

    def make_dm():
        d = build(OmegaConf.merge(cfg.data, {"train_sets": used_sets}), degradation=degradation)
        d.setup("fit")
        return d

    figures = {}
    log = logging.getLogger("src.bench")
    log.info("framework overhead: %d rounds x (%d + %d) steps", rounds, warmup, steps)
    figures["framework_overhead"] = framework_overhead(cfg, make_module, make_dm, degradation, device,
                                                       rounds, warmup, steps)
    log.info("degradation cost and compute efficiency: %d repetitions", args.reps)
    peak = peak_figures(device, args.matmul_size, args.reps)
    deg, compute, consumed = step_figures(cfg, make_module, dm, degradation, device, args.reps, peak)
    figures["degradation_cost"], figures["compute_efficiency"] = deg, compute
    log.info("data loading")
    figures["data_loading"] = data_loading(dm, consumed["patches_per_s"], args.reps, args.loader_batches)
    set_names = list(args.eval_sets) if args.eval_sets else (
        ["Set5"] if args.quick else list(BENCH_SETS if device.type == "cuda" else CPU_EVAL_SETS))
    degradations = list(args.eval_degradations or cfg.eval.degradations)
    sets = eval_sets(data_root, set_names, notes)
    model_cfg = compose_config(args.quick, device, data_root, args.cache_dir, args.batch_size, args.lr_patch,
                               total_steps=cfg.trainer.max_steps, model=model_overrides(args))
    label = model_label(args)
    with tempfile.TemporaryDirectory(prefix="bench-testsets-") as cache:
        log.info("evaluation: %s x %d degradations, cold and warm cache", ",".join(sets), len(degradations))
        model = eval_model(cfg, device)
        figures["evaluation_cache"] = evaluation_cache(cfg, model, sets, degradations, device, cache)
        # The paper's SRResNet evaluates for minutes on a CPU: its warm run above is the one repetition there.
        reps = 1 if device.type == "cpu" and not args.quick else args.reps
        figures["evaluation_efficiency"], figures["evaluation_overhead"] = evaluation_speed(
            cfg, model, sets, degradations, device, cache, reps, peak,
            warm_s=[figures["evaluation_cache"]["detail"]["warm_s"]])
        log.info("%s: training step and evaluation, %d repetitions", label, args.reps)
        torch.manual_seed(model_cfg.seed)
        step = BareStep(build_module(model_cfg).to(device), device, model_cfg.channels_last)
        figures[f"compute_efficiency[{label}]"] = compute_efficiency(step, consumed["lr"], consumed["gt"], device,
                                                                     args.reps, peak)[0]
        figures[f"evaluation_efficiency[{label}]"], figures[f"evaluation_overhead[{label}]"] = evaluation_speed(
            model_cfg, eval_model(model_cfg, device), sets, degradations, device, cache, args.reps, peak)
    if device.type == "cpu" and args.jobs > 1:
        job_steps = max(args.steps, 8)  # a median needs no more, but a side-by-side time needs several steps
        log.info("%s: %d jobs side by side vs one alone, %d steps each", label, args.jobs, job_steps)
        figures[f"parallel_jobs[{label}]"] = parallel_jobs(model_overrides(args), args.quick, data_root,
                                                           consumed["lr"], consumed["gt"], args.jobs,
                                                           args.warmup, job_steps)

    import pytorch_lightning as pl

    return {
        "device": device.type, "device_name": _device_name(device), "torch": torch.__version__,
        "pytorch_lightning": pl.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "opencv_threads": _cv2_threads(),
        "load_avg_start": [round(v, 2) for v in load_start], "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "quick": bool(args.quick), "model": label, "model_overrides": model_overrides(args),
        "backbone": cfg.backbone._target_.rsplit(".", 1)[-1],
        "num_feat": int(cfg.backbone.num_feat), "num_block": int(cfg.backbone.num_block),
        "batch_size": int(cfg.data.batch_size), "lr_patch_size": int(cfg.data.lr_patch_size),
        "scale": int(cfg.scale), "precision": str(cfg.trainer.precision), "train_sets": used_sets,
        "data_root": portable_path(data_root, Path(args.out).parent), "figures": figures, "notes": notes,
        "seconds": round(time.perf_counter() - wall, 1),
    }


# name: (type, default, help). Every tool of the suite takes key=value, as Hydra's entry points do.
OPTIONS = {
    "quick": (bool, False, "tiny backbone, Set5 only, fewer repetitions"),
    "device": (str, None, "cpu | cuda (default: cuda when available)"),
    "out": (str, "bench.json", "JSON report path"),
    "data_root": (str, None, "default: SR_DATA_ROOT or ../shared/datasets"),
    "cache_dir": (str, None, "cache root for decoded images (default: paths.cache)"),
    "batch_size": (int, None, "default: data.batch_size (16)"),
    "lr_patch": (int, None, "LR patch size (default: data.lr_patch_size, 32)"),
    "rounds": (int, None, "Lightning/bare rounds (see DEFAULTS)"),
    "warmup": (int, None, "untimed steps per round"),
    "steps": (int, None, "timed steps per round"),
    "reps": (int, None, "repetitions of the other figures"),
    "loader_batches": (int, 10, "batches per data-loading repetition"),
    "threads": (int, None, "intra-op threads of torch and OpenCV (default: torch's, one per core); on a machine "
                           "shared with other jobs, 1 avoids threads waiting on each other"),
    "matmul_size": (int, None, "n of the n x n peak matmul"),
    "jobs": (int, None, "training jobs side by side for parallel_jobs, one thread each (CPU only; 1: skip it)"),
    "eval_sets": (list, None, f"[Set5,Set14] (default: {','.join(BENCH_SETS)} on a GPU, "
                              f"{','.join(CPU_EVAL_SETS)} on a CPU; Set5 with quick=true)"),
    "eval_degradations": (list, None, "[clean,b+n+j] (default: all 8)"),
    "experiment": (str, "repro_small", "the campaign whose model gets its own efficiency figures (conf/experiment; "
                                       "none: the train config's defaults)"),
    "backbone": (str, None, "that model's backbone instead of the experiment's (conf/backbone)"),
}


def model_overrides(args: argparse.Namespace) -> list[str]:
    """The train-config overrides that make the campaign model of `experiment=` / `backbone=`."""
    out = [f"experiment={args.experiment}"] if args.experiment and args.experiment != "none" else []
    return out + ([f"backbone={args.backbone}"] if args.backbone else [])


def model_label(args: argparse.Namespace) -> str:
    return "+".join(v.split("=", 1)[1] for v in model_overrides(args)) or "train_defaults"


def usage() -> str:
    lines = ["usage: python -m src.bench [key=value ...]", "", "options:"]
    lines += [f"  {k}={'true|false' if t is bool else t.__name__.upper()}".ljust(30) + f"{h}"
              + (f" (default: {d})" if d is not None and "default" not in h else "")
              for k, (t, d, h) in OPTIONS.items()]
    lines += ["", "examples:", "  python -m src.bench", "  python -m src.bench quick=true device=cpu threads=1",
              "  python -m src.bench device=cpu threads=1 experiment=repro_small_rrdb",
              "  python -m src.bench device=cpu threads=1 rounds=5 reps=5 eval_sets=[Set5,Set14]"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from src.options import key_values, no_names

    names, values = key_values(list(argv or []), OPTIONS, "src.bench")
    no_names(names, OPTIONS, "src.bench")
    for key, (kind, default, _) in OPTIONS.items():
        if kind is int and values[key] is not None and values[key] < 1:
            raise SystemExit(f"error: src.bench: {key} must be >= 1, got {values[key]}")
    args = argparse.Namespace(**values)
    for group in ("experiment", "backbone"):
        name = getattr(args, group)
        if name and not (name == "none" and group == "experiment") and not (CONF_DIR / group / f"{name}.yaml").is_file():
            known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            raise SystemExit(f"error: src.bench: {group}={name!r} is not in conf/{group}; allowed: {', '.join(known)}"
                             + (" or none" if group == "experiment" else ""))
    if args.jobs is not None and args.jobs > (os.cpu_count() or 1):
        raise SystemExit(f"error: src.bench: jobs={args.jobs} is more than this machine's {os.cpu_count()} cores; "
                         f"side-by-side jobs of one thread each need a core each")
    if args.device not in (None, "cpu", "cuda"):
        raise SystemExit(f"error: src.bench: device={args.device!r}: allowed values are cpu and cuda")
    gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    for key, value in DEFAULTS[("gpu" if gpu else "cpu", "quick" if args.quick else "full")].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__ + "\n" + usage())
        return None
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s")
    import pytorch_lightning  # noqa: F401  (it sets its loggers to INFO on import; quieten them afterwards)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "src.evaluation"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log intervals is noise here
        report = run(args)
    atomic_write_json(args.out, report)
    print(format_report(report))
    print(f"[bench] wrote {args.out} in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
