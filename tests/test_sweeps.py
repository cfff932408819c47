"""Sweeps a researcher can trust: a preflight before anything trains, one folder per multirun whose manifest and
exit status cover exactly its jobs, paths every tool takes back unquoted, and output that says where things went."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
# The design's own grid of the paper's positions and probabilities.
DESIGN = ["dropout.position=last,b4,b8", "dropout.p=0.1,0.5,0.7"]
# The same command shortened: SRResNet's 16 blocks (narrowed), one step, tiny crops, one test degradation.
SHORT = ["backbone=srresnet", "size=cpu", "trainer.max_steps=1", "data.val_crop=32", "eval.degradations=[clean]"]


def train(runs, *args, multirun=True):
    cmd = [sys.executable, "-m", "src.train", *(["-m"] if multirun else []), *TINY, f"paths.runs={runs}",
           f"paths.cache={runs}/cache", *args]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)


def printed_folder(stdout: str, what: str) -> str:
    found = re.findall(rf"\[sweep\]\s+{what}:?\s+(\S+)", stdout)
    assert found, stdout[-2000:]
    return found[-1]


def test_design_command_preflights_every_job_before_any_trains(tmp_path):
    # On the 4-block tiny model the b8 jobs cannot exist: all three are reported at once, nothing trains.
    proc = train(tmp_path, *DESIGN, "trainer.max_steps=1", "backbone=tiny")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "3 of 9 jobs cannot run; nothing was trained" in proc.stderr
    assert proc.stderr.count("dropout.position='b8' needs at least 8 trunk blocks") == 3
    assert "allowed here: none, last, b4" in proc.stderr and "fix:" in proc.stderr
    assert not list(tmp_path.rglob("last.ckpt")) and not list(tmp_path.rglob("job.json"))


def test_preflight_rejects_values_and_added_keys_of_every_job(tmp_path):
    proc = train(tmp_path, "trainer.max_steps=0,5", "+dropout.prob=0.5")
    assert proc.returncode == 2
    assert "2 of 2 jobs cannot run" in proc.stderr
    assert "trainer.max_steps=0: must be an integer >= 1" in proc.stderr
    assert "'dropout.prob' is not a setting" in proc.stderr and "dim, p, position" in proc.stderr
    assert not list(tmp_path.rglob("last.ckpt"))


@pytest.fixture(scope="module")
def design_sweep(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # A run folder of an earlier command (here: a failed one) in the same place must not count for this sweep.
    earlier = runs / "train" / "dropout.p-0.9"
    earlier.mkdir(parents=True)
    (earlier / "job.json").write_text(json.dumps({"status": "failed", "error": "earlier", "dir": earlier.name}))
    proc = train(runs, *DESIGN, *SHORT)
    return runs, proc


def test_design_command_shortened_runs_nine_of_nine(design_sweep):
    runs, proc = design_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = printed_folder(proc.stdout, "manifest").rsplit("/", 1)[0]
    manifest = json.loads((runs / "train" / sweep.rsplit("/", 1)[1] / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 9 and manifest["failed"] == []
    assert all(job["status"] == "completed" for job in manifest["jobs"].values())
    assert "9 of 9 jobs completed" in proc.stdout
    assert printed_folder(proc.stdout, "report").endswith("report/report.md")
    # quiet without a terminal: no progress-bar flood, no Lightning tip, no known deprecation noise
    out = proc.stdout + proc.stderr
    assert "it/s]" not in out and "Tip:" not in out and "LeafSpec" not in out
    # nor an accelerator census with nothing in it, nor W&B's warning about a setting nobody set
    if not torch.cuda.is_available():
        assert "GPU available: False" not in out and "TPU available" not in out
    assert "anonymous setting" not in out


def test_rerun_of_the_same_sweep_finds_its_jobs_and_reprints_tables(design_sweep):
    runs, first = design_sweep
    again = train(runs, *DESIGN, *SHORT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is already complete") == 9
    assert again.stdout.count("PSNR (dB, Y channel)") == 9  # each finished run shows its table again
    assert printed_folder(again.stdout, "manifest") == printed_folder(first.stdout, "manifest")


def test_two_sweeps_in_a_row_have_separate_manifests(design_sweep):
    runs, first = design_sweep
    second = train(runs, "dropout.p=0.2,0.3", *SHORT)
    assert second.returncode == 0, second.stderr[-3000:]
    m1, m2 = printed_folder(first.stdout, "manifest"), printed_folder(second.stdout, "manifest")
    assert m1 != m2
    assert len(json.loads(open(m1).read())["jobs"]) == 9
    assert sorted(json.loads(open(m2).read())["jobs"]) == ["dropout.p-0.2", "dropout.p-0.3"]


def test_sweep_folders_work_unquoted_in_every_tool(design_sweep, tmp_path):
    import numpy as np

    from src.data.imageio import write_image

    runs, proc = design_sweep
    sweep = printed_folder(proc.stdout, "manifest").rsplit("/", 1)[0]
    jobs = sorted(p for p in os.listdir(sweep) if os.path.isfile(f"{sweep}/{p}/job.json"))
    assert len(jobs) == 9
    for name in [sweep, *jobs]:
        assert not set(name) & set("=,[]'\" "), name
    a, b = f"{sweep}/{jobs[0]}", f"{sweep}/{jobs[1]}"
    image = tmp_path / "in.png"
    write_image(image, np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    py = sys.executable
    # Through a shell, as a user would paste them: no quotes anywhere.
    commands = {
        "eval": f"{py} -m src.eval ckpt={a} sets=[skimage_holdout] degradations=clean device=cpu "
                f"cache_dir={tmp_path}/cache",
        "infer": f"{py} -m src.infer ckpt={a} input={image} output={tmp_path}/sr progress=false device=cpu",
        "export": f"{py} -m src.export ckpt={b} out={tmp_path}/b.safetensors",
        "analyze": f"{py} -m src.analyze ablation ckpts=[{a},{b}] image={image} out={tmp_path}/an progress=false "
                   f"device=cpu",
    }
    for tool, cmd in commands.items():
        done = subprocess.run(cmd, shell=True, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{tool}: {done.stderr[-2000:]}"
    assert (tmp_path / "sr" / "in.png").is_file() and (tmp_path / "b.safetensors").is_file()
    assert json.loads(open(f"{a}/results.json").read())["skimage_holdout"]["clean"]["n_images"] == 3
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert sorted(summary) == sorted([jobs[0], jobs[1]])  # labelled by their run folders, paths not split


def test_single_run_prints_its_folders(tmp_path):
    proc = train(tmp_path, "debug=fast", "eval.degradations=[clean]", multirun=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = re.findall(r"\[train\] run folder: (\S+)", proc.stdout)
    assert os.path.dirname(run) == str(tmp_path / "train") and "debug-fast" in run
    assert "paths" not in os.path.basename(run)  # bookkeeping keys (paths, logger, ...) are not in the name
    assert f"results.json: {run}/results.json" in proc.stdout and os.path.isfile(f"{run}/results.json")
