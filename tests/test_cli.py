"""The command line as a user meets it: one-line errors with the fix, and nothing left behind by a run that
cannot start. Each command fails before training, so these run in seconds."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def train(tmp_path, *args, env=None):
    cmd = [sys.executable, "-m", "src.train", f"paths.runs={tmp_path / 'runs'}", f"paths.cache={tmp_path / 'cache'}",
           *args]
    return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=900)


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args,code,expected", [
    (["dropout.pos=b4"], 1, "error: dropout.pos=b4: there is no key dropout.pos; did you mean dropout.position=b4?"),
    (["+dropout.pos=b4"], 1, "error: +dropout.pos=b4: 'dropout.pos' is not a setting (nothing reads it). Did you mean "
                             "dropout.position=b4?"),
    (["--steps", "3"], 2, "error: --steps: settings are key=value here, not --flags; did you mean "
                          "trainer.max_steps=3?"),
    (["backbone=tiny", "dropout.position=b8"], 1, "error: dropout.position='b8' needs at least 8 trunk blocks"),
    (["data.train_sets=[NoSuchSet]", "data.root=/nonexistent"], 1,
     "error: dataset 'NoSuchSet' not found: /nonexistent/NoSuchSet/HR does not exist"),
], ids=["missing-key", "added-key", "dash-flag", "bad-position", "missing-data"])
def test_errors_are_one_line_with_the_fix_and_leave_no_run_folder(tmp_path, args, code, expected):
    proc = train(tmp_path, *args)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert one_error_line(proc).startswith(expected)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.yaml"))


def test_a_traceback_only_with_hydra_full_error(tmp_path):
    proc = train(tmp_path, "backbone=tiny", "dropout.position=b8", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "needs at least 8 trunk blocks" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_points_to_trainer_cpu(tmp_path):
    proc = train(tmp_path, "trainer=gpu")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "trainer.accelerator=gpu but there is no GPU here" in line and "use trainer=cpu" in line


@pytest.mark.parametrize("typed,meant", [("dropout.pos", "dropout.position"), ("dropout.prob", "dropout.p"),
                                         ("steps", "trainer.max_steps"), ("max_steps", "trainer.max_steps"),
                                         ("drpout.p", "dropout.p"), ("trainer.max_step", "trainer.max_steps"),
                                         ("zzzzzz", None)])
def test_suggestions_come_from_every_known_key(tmp_path, typed, meant):
    from conftest import compose_train
    from src.preflight import config_keys, suggest_key

    known = config_keys(compose_train([], tmp_path))
    assert {"dropout.position", "trainer.max_steps", "data.total_steps", "ckpt_every_n_steps"} <= set(known)
    assert not any(k.startswith("hydra") for k in known)
    assert suggest_key(typed, known, same_parent="." in typed) == meant


def tool(tmp_path, name, *args, env=None):
    """Another Hydra entry point, run where a failed command would leave its outputs (tmp_path)."""
    cmd = [sys.executable, "-m", f"src.{name}", *args]
    env = {**ENV, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("name,args,expected", [
    ("eval", ["ckpt=x", "protocl=both"], "error: protocl=both: there is no key protocl; did you mean protocol=both?"),
    ("infer", ["ckpt=x", "input=y", "output=z", "tiles=256"],
     "error: tiles=256: there is no key tiles; did you mean tile=256?"),
    ("export", ["ckpt=x", "formt=onnx"], "error: formt=onnx: there is no key formt; did you mean format=onnx?"),
    ("analyze", ["csm", "ckpt=x", "layr=conv_last"],
     "error: layr=conv_last: there is no key layr; did you mean layer=conv_last?"),
    ("eval", ["--ckpt", "x"], "error: --ckpt: settings are key=value here, not --flags; did you mean ckpt=x?"),
], ids=["eval", "infer", "export", "analyze", "eval-dash-flag"])
def test_every_hydra_tool_answers_a_bad_key_in_one_line_naming_it(tmp_path, name, args, expected):
    proc = tool(tmp_path, name, *args)
    assert proc.returncode in (1, 2), proc.stderr[-3000:]
    assert one_error_line(proc).startswith(expected)
    assert "Traceback" not in proc.stderr


def test_another_tools_error_is_one_line_and_a_traceback_only_with_hydra_full_error(tmp_path):
    missing = tmp_path / "nowhere.ckpt"
    proc = tool(tmp_path, "export", f"ckpt={missing}")
    assert proc.returncode == 1 and str(missing) in one_error_line(proc)
    proc = tool(tmp_path, "export", f"ckpt={missing}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and str(missing) in proc.stderr
