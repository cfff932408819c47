"""`python -m src.bench` runs and writes a well-formed report. Speed itself is not asserted: benchmarks are not
tests, and this machine's cores are shared."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from src import bench
from src.data.imageio import write_image

FIGURES = ("framework_overhead", "degradation_cost", "compute_efficiency", "data_loading", "evaluation_cache",
           "evaluation_efficiency", "evaluation_overhead", "compute_efficiency[repro_small]",
           "evaluation_efficiency[repro_small]", "evaluation_overhead[repro_small]")


@pytest.fixture()
def tiny_root(tmp_path):
    """A data root holding only a two-image Set5 (training falls back to the bundled sample photos)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(2):
        img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) + rng.integers(0, 30, (48, 64, 3))
        write_image(tmp_path / "data" / "Set5" / "HR" / f"img{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    return tmp_path / "data"


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def test_quick_bench_writes_a_well_formed_report(tmp_path, tiny_root, capsys):
    out = tmp_path / "bench.json"
    bench.main(["quick=true", "device=cpu", f"out={out}", f"data_root={tiny_root}",
                f"cache_dir={tmp_path / 'cache'}", "batch_size=2", "lr_patch=16", "rounds=1",
                "warmup=1", "steps=1", "reps=1", "loader_batches=2", "matmul_size=64",
                "eval_degradations=[clean,b+n+j]"])
    report = json.loads(out.read_text())
    for key in ("device", "torch", "threads", "load_avg_start", "load_avg_end", "figures", "notes", "backbone"):
        assert key in report, key
    assert report["device"] == "cpu" and report["threads"] >= 1 and report["quick"] is True
    assert report["data_root"] == "data"  # relative to the report's folder: no path of this machine in the file
    assert set(report["figures"]) == set(FIGURES)
    for name, f in report["figures"].items():
        assert _finite_positive(f["value"]), (name, f["value"])
        assert f["met"] in (True, False, None) and (f["target"] is None or isinstance(f["target"], str))
        numbers = [v for v in f["detail"].values() if isinstance(v, float)]
        assert numbers and all(_finite_positive(v) for v in numbers), (name, f["detail"])
    figures = report["figures"]
    assert figures["compute_efficiency"]["met"] is None  # the paper's SRResNet: the 0.5 target is for GPUs
    assert figures["compute_efficiency[repro_small]"]["met"] is not None  # the campaign model: judged on CPU too
    assert figures["evaluation_cache"]["detail"]["sets"] == {"Set5": 2}
    # the campaign model (repro_small: tiny SRResNet) in the CPU's layout, over 2 images x 2 degradations
    campaign = figures["evaluation_overhead[repro_small]"]["detail"]
    assert (campaign["backbone"], campaign["num_feat"], campaign["num_block"]) == ("MSRResNet", 32, 4)
    assert campaign["images"] == 4 and campaign["channels_last"] is True
    peaks = {f["detail"]["peak_matmul_gflops"] for n, f in figures.items() if "efficiency" in n}
    assert len(peaks) == 1  # one peak, measured once, under every efficiency figure
    overhead = figures["evaluation_overhead[repro_small]"]
    ratios = overhead["detail"]["rep_ratios"]
    assert len(ratios) == overhead["detail"]["reps"] and overhead["value"] == pytest.approx(np.median(ratios), abs=1e-4)
    assert "framework_overhead" in capsys.readouterr().out


def test_conv_flops_are_counted_from_the_shapes():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4))
    flops = bench.count_flops(net, torch.zeros(2, 3, 10, 10))
    assert flops == 2 * 3 * 8 * 9 * 10 * 10 * 2 + 2 * 2 * 8 * 9 * 5 * 5 * 2


def test_conv_flops_of_the_campaign_srresnet_match_the_hand_count():
    from src.models.srresnet import MSRResNet

    f, blocks, h, w = 32, 4, 6, 5
    net = MSRResNet(num_feat=f, num_block=blocks, scale=4)
    per = lambda cin, cout, pixels: 2 * cin * cout * 9 * pixels  # noqa: E731  (3x3 convs)
    hand = (per(3, f, h * w) + 2 * blocks * per(f, f, h * w) + per(f, 4 * f, h * w)  # first, trunk, upconv1
            + per(f, 4 * f, 4 * h * w) + per(f, f, 16 * h * w) + per(f, 3, 16 * h * w))  # upconv2 at x2, HR convs
    assert bench.count_flops(net, torch.zeros(1, 3, h, w)) == hand == 2 * 9 * h * w * (
        3 * f + 8 * f * f + 4 * f * f + 16 * f * f + 16 * f * f + 16 * 3 * f)


def test_linear_layers_and_attention_products_are_counted_too():
    class Attn(nn.Module):  # a linear layer, then q k^T and (q k^T) v over 16 tokens of width 8
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    tokens, width, batch = 16, 8, 3
    hand = batch * (2 * tokens * width * 3 * width + 2 * tokens * tokens * width + 2 * tokens * tokens * width)
    assert bench.count_flops(Attn(), torch.zeros(batch, tokens, width)) == hand


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit, match="steps must be >= 1, got 0"):
        bench.parse_args(["steps=0"])
    with pytest.raises(SystemExit, match="'--steps': settings are key=value, not --flags; write steps=3"):
        bench.parse_args(["--steps", "3"])
    with pytest.raises(SystemExit, match="'stepz' is not a setting; settings: quick, device"):
        bench.parse_args(["stepz=3"])
    with pytest.raises(SystemExit, match="'quick' is not a setting; settings are key=value: quick, device"):
        bench.parse_args(["quick"])
    with pytest.raises(SystemExit, match="steps='3.5': must be a whole number"):
        bench.parse_args(["steps=3.5"])
    with pytest.raises(SystemExit, match="allowed values are cpu and cuda"):
        bench.parse_args(["device=tpu"])
    with pytest.raises(SystemExit, match=r"experiment='repro_tiny' is not in conf/experiment; allowed: .*repro_small"):
        bench.parse_args(["experiment=repro_tiny"])
    with pytest.raises(SystemExit, match=r"backbone='tinyy' is not in conf/backbone; allowed: .*tiny"):
        bench.parse_args(["backbone=tinyy"])
    args = bench.parse_args(["experiment=none", "backbone=tiny"])
    assert bench.model_overrides(args) == ["backbone=tiny"] and bench.model_label(args) == "tiny"
    with pytest.raises(SystemExit, match="allowed values are true and false"):
        bench.parse_args(["quick=yes"])
    args = bench.parse_args(["eval_sets=[Set5, Set14]", "threads=1", "quick=true"])
    assert (args.eval_sets, args.threads, args.quick) == (["Set5", "Set14"], 1, True)
    with pytest.raises(SystemExit, match=r"jobs=999 is more than this machine's \d+ cores"):
        bench.parse_args(["jobs=999"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda"):
            bench.run(bench.parse_args(["device=cuda"]))


@pytest.mark.slow  # three spawned interpreters, each importing torch and Lightning
def test_parallel_jobs_time_each_job_and_compare_the_aggregate_with_one_job_alone(tiny_root):
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(gt, 4)
    f = bench.parallel_jobs([], True, tiny_root, lr, gt, jobs=2, warmup=1, steps=3)
    d = f["detail"]
    assert (d["jobs"], d["steps"], d["threads_per_job"], len(d["side_by_side_step_ms"])) == (2, 3, 1, 2)
    # aggregate: 2 x 3 steps over the slower job's time; single: 3 steps over the lone job's time
    assert d["aggregate_steps_per_s"] == pytest.approx(6 / (max(d["side_by_side_step_ms"]) * 3 / 1e3), rel=1e-2)
    assert d["single_steps_per_s"] == pytest.approx(1e3 / d["alone_step_ms"])
    assert f["value"] == pytest.approx(d["aggregate_steps_per_s"] / d["single_steps_per_s"])
    assert f["target"] is None and f["value"] > 0  # tiny steps of milliseconds: the ratio itself is noise here
    with pytest.raises(RuntimeError, match="a benchmark job exited with code 1"):  # not a wait for ever
        bench.parallel_jobs(["experiment=no_such_experiment"], True, tiny_root, lr, gt, jobs=2, warmup=1, steps=1)


def test_help_lists_every_option(capsys):
    assert bench.main(["--help"]) is None
    out = capsys.readouterr().out
    assert all(f"  {name}=" in out for name in bench.OPTIONS)
