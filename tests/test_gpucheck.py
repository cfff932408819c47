"""`make gpu-check`: the CPU self-check end to end, the bounds logic, the budget and a failing check's record."""
import json
import subprocess

import pytest
import torch

from conftest import REPO
from src import gpucheck as G

# -o: never (re)install the environment from a test; the target's recipe is what is tested
MAKE = ["make", "-o", ".venv/.installed-stamp", "gpu-check"]
FAST_CHECKS = ["jpeg", "pipeline", "step", "tiled", "cost"]
# Every field the JSON holds for each check (the list); bench's figures and the step variants by name.
FIELDS = {
    "jpeg": {"device_vs_cpu_max", "device_vs_cpu_differing", "opencv_gap_q30", "opencv_gap_q50", "opencv_gap_q70",
             "opencv_gap_q95"},
    "pipeline": {"draws_replayed", "shapes_equal", "lr_mean_abs", "lr_off_by_more_than_1", "gt_max", "lr_max",
                 "same_seed_twice_max", "native_draws_equal"},
    "step": {f"{p}/{layout}/eager {m}" for p in ("32-true", "bf16-mixed") for layout in ("contiguous", "channels_last")
             for m in ("loss_rel", "grad_rel", "ms")},
    "resume": {"resumed_from_checkpoint", "weights_max_abs_diff"},
    "bench": {"framework_overhead", "degradation_cost", "compute_efficiency", "data_loading", "evaluation_cache"},
    "tiled": {"peak_over_tile_estimate", "tiled_device_vs_cpu_max", "tiled_vs_untiled_max", "large_image_s"},
    "cost": {f"{s} {m}" for s in ("paper", "official", "rrdb_pair") for m in ("hours", "timing_spread")},
}


def measures(check):
    return {m["name"]: m for m in check["measures"]}


def assert_cpu_report(report, names):
    assert report["order"] == names and set(report["checks"]) == set(names)
    assert report["environment"]["device"] == "cpu" and report["size"] == "tiny"
    for name in names:
        c = report["checks"][name]
        assert c["status"] == "pass", (name, c.get("error"), [m for m in c["measures"] if m["pass"] is False])
        assert set(measures(c)) == FIELDS[name], name
        for m in c["measures"]:
            assert m["bound"] is None or m["bound"].split()[0] in ("<=", ">=", "==")
    m = {n: measures(report["checks"][n]) for n in names}
    # device-vs-CPU figures compare the CPU with itself: exactly equal, and said so
    assert m["jpeg"]["device_vs_cpu_max"]["value"] == 0 and m["jpeg"]["device_vs_cpu_max"]["note"] == G.SELF_CHECK
    assert m["pipeline"]["lr_mean_abs"]["value"] == 0 and m["pipeline"]["native_draws_equal"]["value"] == 1
    assert m["tiled"]["tiled_device_vs_cpu_max"]["value"] == 0
    assert m["tiled"]["peak_over_tile_estimate"]["pass"] is None  # CUDA-only measurement: reported, not judged
    step = report["checks"]["step"]["detail"]
    assert step["variants"]["32-true/contiguous/eager"]["grad_rel"] == 0  # the reference itself
    assert any("fp16-mixed skipped" in n for n in report["checks"]["step"]["notes"])
    assert step["fastest_within_tolerance"] in step["variants"]
    cost = report["checks"]["cost"]["detail"]
    for label, (_, runs) in G.COST_SETTINGS.items():  # hours from the measured step time, independently
        assert cost[label]["hours"] == pytest.approx(runs * 500_000 * cost[label]["s"] / 3600)
    assert cost["rrdb_pair"]["backbone"] == "RRDBNet" and cost["official"]["pool"] == 16
    assert cost["official"]["ema"] and not cost["paper"]["ema"]
    assert "gpu_default" not in report  # a CPU run suggests no GPU default


def test_cpu_self_check_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "cpu.json"
    code = G.main(["device=cpu", f"out={out}", f"checks=[{','.join(FAST_CHECKS)}]"])
    report = json.loads(out.read_text())
    assert code == 0
    assert_cpu_report(report, FAST_CHECKS)
    assert report["summary"] == f"{len(FAST_CHECKS)} pass, 0 fail, 0 skipped"


@pytest.mark.slow
def test_make_gpu_check_on_cpu_runs_every_check(tmp_path):
    # kill -9/resume, bench and the 2-process DDP start several training processes: minutes on a busy CPU
    out = tmp_path / "cpu.json"
    proc = subprocess.Popen([*MAKE, "device=cpu", f"ARGS=out={out} ddp=true"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=3600)
    finally:
        G.stop_group(proc)  # the check's own training processes too, if the timeout struck
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads(out.read_text())
    names = [n for n in G.CHECKS if n != "ddp"]
    assert report["order"] == list(G.CHECKS)
    assert_cpu_report({**report, "order": names, "checks": {n: report["checks"][n] for n in names}}, names)
    ddp = measures(report["checks"]["ddp"])
    assert ddp["ddp_gloo ranks"]["value"] == 2 and ddp["ddp_gloo ranks_drawing_differently"]["value"] == 1
    assert "1 jpeg" in stdout and "weights_max_abs_diff" in stdout  # the table is printed


def test_a_failing_bound_fails_its_check():
    assert G.Measure("x", 0.03, "<=", 0.02).passed is False
    assert G.Measure("x", 0.02, "<=", 0.02).passed is True
    assert G.Measure("x", 2.9, ">=", 3).passed is False and G.Measure("x", 1, "==", 1).passed is True
    assert G.Measure("x", float("nan"), "<=", 1).passed is False and G.Measure("x", None, ">=", 1).passed is False
    assert G.Measure("x", 5.0, "<=", 1, judged=False).passed is None  # reported only
    assert G.check_status([G.Measure("a", 0, "<=", 1), G.Measure("b", 2, "<=", 1)]) == "fail"
    assert G.check_status([G.Measure("a", 0, "<=", 1), G.Measure("b", 2, "<=", 1, judged=False)]) == "pass"
    assert G.Measure("x", float("inf"), ">=", 1).as_dict() == {
        "name": "x", "value": None, "bound": ">= 1", "unit": "", "pass": True, "note": ""}


def test_failing_check_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise ValueError("no such kernel")

    def bad_bound(ctx):
        res = G.Result()
        res.add("gap", 0.5, "<=", 0.02, "dB")
        return res

    monkeypatch.setitem(G.CHECKS, "jpeg", ("broken", broken))
    monkeypatch.setitem(G.CHECKS, "pipeline", ("bound", bad_bound))
    out = tmp_path / "r.json"
    assert G.main(["device=cpu", f"out={out}", "checks=[jpeg,pipeline]"]) == 1
    report = json.loads(out.read_text())
    assert report["checks"]["jpeg"]["status"] == "fail"
    assert report["checks"]["jpeg"]["error"] == "ValueError: no such kernel"
    assert report["checks"]["pipeline"]["status"] == "fail"
    assert report["checks"]["pipeline"]["measures"][0]["pass"] is False
    assert report["summary"] == "0 pass, 2 fail, 0 skipped"


def test_time_budget_skips_the_remaining_checks(tmp_path, monkeypatch):
    def slow(ctx):
        ctx.started -= 10  # as if 10 s had passed
        return G.Result([G.Measure("t", 1.0, "<=", 2)])

    monkeypatch.setitem(G.CHECKS, "jpeg", ("slow", slow))
    out = tmp_path / "r.json"
    assert G.main(["device=cpu", f"out={out}", "checks=[jpeg,pipeline,step]", "budget_s=5"]) == 0
    checks = json.loads(out.read_text())["checks"]
    assert checks["jpeg"]["status"] == "pass"
    for name in ("pipeline", "step"):
        assert checks[name]["status"] == "skipped" and checks[name]["notes"] == ["skipped: time budget"]


def test_draws_replayed_on_another_call_reproduce_the_pipeline():
    from src.data.pipelines import RealESRGANPipeline

    pipe = RealESRGANPipeline()
    hr = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    log = G.DrawLog()
    with log.record():
        lr, gt = pipe(hr, torch.Generator().manual_seed(1))
    assert {name for name, _ in log.draws} >= {"rand", "randn"} and len(log.draws) > 20
    with log.replay():  # a generator with another seed: only the replayed draws can make the output equal
        lr2, gt2 = pipe(hr, torch.Generator().manual_seed(2))
    assert torch.equal(lr, lr2) and torch.equal(gt, gt2) and log.replayed == len(log.draws)
    assert not torch.equal(lr, pipe(hr, torch.Generator().manual_seed(2))[0])
    assert torch.rand is G.DrawLog.__init__.__globals__["torch"].rand  # torch restored after the context


def test_options_and_cuda_message(capsys):
    with pytest.raises(SystemExit, match=r"device='tpu': allowed values are cuda and cpu"):
        G.parse_options(["device=tpu"])
    with pytest.raises(SystemExit, match=r"checks=\['jpeg', 'gpu'\]: unknown \['gpu'\]; allowed: jpeg, pipeline"):
        G.parse_options(["checks=[jpeg,gpu]"])
    with pytest.raises(SystemExit, match=r"'--fast': settings are key=value, not --flags; settings: device, size"):
        G.parse_options(["--fast"])
    with pytest.raises(SystemExit, match=r"'--budget-s': settings are key=value, not --flags; write budget_s=60"):
        G.parse_options(["--budget-s", "60"])
    with pytest.raises(SystemExit, match=r"'fast' is not a setting; settings are key=value: device, size"):
        G.parse_options(["fast"])
    with pytest.raises(SystemExit, match=r"budget_s must be > 0, got 0"):
        G.parse_options(["budget_s=0"])
    with pytest.raises(SystemExit, match=r"budget_s='soon': must be a number"):
        G.parse_options(["budget_s=soon"])
    assert G.parse_options(["checks=[jpeg, step]", "compile=false"])["checks"] == ["jpeg", "step"]
    assert G.parse_options([])["ddp"] is True and G.parse_options(["device=cpu"])["ddp"] is False
    assert G.main(["--help"]) == 0
    assert "make gpu-check device=cpu" in capsys.readouterr().out
    if not torch.cuda.is_available():
        proc = subprocess.run(MAKE, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert ("src.gpucheck: device=cuda but no CUDA device is available; on this machine run `make gpu-check "
                "device=cpu`") in proc.stderr.splitlines()[-2]
