"""Nothing wrong, nothing lost: run identity, one writer per folder, corrupt state files, values that would train
nonsense, and errors that name the key or file."""
import json
import os
import subprocess
import sys
import warnings

import pytest

from conftest import REPO, TINY, TOY, compose_train, toy_root
from src import runs


def _train(run_dir, *overrides):
    from src.train import train

    cfg = compose_train(TINY + [f"paths.runs={run_dir.parent}", f"paths.cache={run_dir.parent / 'cache'}",
                                *overrides], run_dir)
    return train(cfg, run_dir)




def test_changed_data_root_is_refused_showing_the_difference(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    a, b = toy_root(tmp_path / "a", 0), toy_root(tmp_path / "b", 1)
    first = _train(run, *TOY, f"data.root={a}")
    assert json.loads((run / runs.IDENTITY).read_text())["data"]["train"]["n"] == 2
    with pytest.raises(runs.RunIdentityError) as err:  # same folder (data.root is not in its name), other photos
        _train(run, *TOY, f"data.root={b}")
    msg = str(err.value)
    assert "data.train.sha1:" in msg and f"data root: {a} -> {b}" in msg and "force=true" in msg
    assert "already complete" not in capsys.readouterr().out
    with pytest.raises(runs.RunIdentityError, match=r"what differs \(recorded -> now\):\n(.*\n)*  config.seed: 0 -> 1\n"):
        _train(run, *TOY, f"data.root={a}", "seed=1")
    # the same photos under another root are the same run; force=true retrains on the new ones
    assert _train(run, *TOY, f"data.root={a}") == first
    retrained = _train(run, *TOY, f"data.root={b}", "force=true")
    assert retrained["Toy"]["clean"]["psnr"] != first["Toy"]["clean"]["psnr"]


def test_interrupted_forced_retrain_leaves_no_results_beside_new_weights(tmp_path, monkeypatch, capsys):
    import src.train

    run = tmp_path / "runs" / "r"
    _train(run, "debug=fast", "eval.degradations=[clean]")
    seen = {}

    def killed(cfg, run_dir, *args, **kwargs):  # stands in for a kill after the retrain started
        seen.update({n: (run_dir / n).exists() for n in (runs.DONE, "results.json", str(runs.CKPT))})
        raise KeyboardInterrupt

    monkeypatch.setattr(src.train, "fit_and_evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        _train(run, "debug=fast", "eval.degradations=[clean]", "force=true")
    assert seen == {runs.DONE: False, "results.json": False, str(runs.CKPT): False}
    monkeypatch.undo()
    capsys.readouterr()
    _train(run, "debug=fast", "eval.degradations=[clean]")  # trains again instead of "already complete"
    assert "already complete" not in capsys.readouterr().out
    assert runs.training_done(run)["global_step"] == 1


def test_run_stopped_while_scoring_reuses_only_results_of_the_same_weights(tmp_path, monkeypatch, capsys):
    import src.evaluation

    run = tmp_path / "runs" / "r"
    args = (*TOY, f"data.root={toy_root(tmp_path / 'toy', 0)}", "eval.protocol=both", "eval.reference=null")
    _train(run, *args)
    official = (run / "results_official.json").read_bytes()
    real, calls = src.evaluation.evaluate, []

    def recording(*a, **kw):
        out = real(*a, **kw)
        calls.append((kw["protocol"], sorted((kw.get("done") or {}).get("Toy", {})), out["Toy"]["clean"]["psnr"]))
        return out

    monkeypatch.setattr(src.evaluation, "evaluate", recording)
    # stopped while the literature protocol was being scored: its results were never written
    (run / "results.json").unlink()
    (run / "results.csv").unlink()
    again = _train(run, *args)
    assert "reusing the official results written after it" in capsys.readouterr().out
    assert [c[:2] for c in calls] == [("official", ["clean"]), ("literature", [])]
    assert (run / "results_official.json").read_bytes() == official and again["Toy"]["clean"]["psnr"] == calls[1][2]
    # results beside a train_done.json of another step describe other weights: scored again
    (run / "results.json").unlink()
    done = json.loads((run / runs.DONE).read_text())
    (run / runs.DONE).write_text(json.dumps({**done, "global_step": done["global_step"] - 1}))
    calls.clear()
    _train(run, *args)
    assert [c[:2] for c in calls] == [("official", []), ("literature", [])]
    assert "reusing" not in capsys.readouterr().out


def test_training_time_of_a_resumed_run_counts_every_process(tmp_path):
    """train_done.json's fit_seconds is the time behind the weights: the checkpoint carries the seconds of the
    processes before, and a run resumed at its last step adds only its own (short) fit."""
    import torch

    run = tmp_path / "runs" / "r"
    args = (*TOY, f"data.root={toy_root(tmp_path / 'toy', 0)}", "eval.reference=null")
    _train(run, *args)
    first = runs.training_done(run)["fit_seconds"]
    ckpt = torch.load(run / runs.CKPT, map_location="cpu", weights_only=False)
    assert 0 < ckpt["callbacks"]["AtomicCheckpoint"]["fit_seconds"] <= first + 0.1
    ckpt["callbacks"]["AtomicCheckpoint"]["fit_seconds"] = 1000.0  # as if earlier processes had trained 1,000 s
    torch.save(ckpt, run / runs.CKPT)
    (run / "results.json").unlink()
    _train(run, *args)
    assert 1000.0 <= runs.training_done(run)["fit_seconds"] < 1000.0 + 60


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "runs" / "r"
    with runs.lock(run):
        with pytest.raises(runs.RunFolderBusy) as err:
            _train(run, "debug=fast")
    assert f"PID {os.getpid()}" in str(err.value) and "pytest" in str(err.value)
    assert not (run / runs.LOCK).exists() and not (run / runs.CKPT).exists()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.joinpath(runs.LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                        "command": "python -m src.train"}))
    with pytest.warns(RuntimeWarning, match=f"lock of PID {dead.pid} .*: no longer running"):
        with runs.lock(tmp_path) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_temporary_checkpoint_names_are_unique(tmp_path):
    from src.train import AtomicCheckpoint

    names = {runs.temporary_name(tmp_path / "last.ckpt") for _ in range(3)}
    assert len(names) == 3 and all(n.name.startswith(".last.ckpt.") and n.parent == tmp_path for n in names)
    cb = AtomicCheckpoint(tmp_path.parent, 1)  # the run folder; its checkpoints/ is tmp_path
    assert cb.path == tmp_path.parent / "checkpoints" / "last.ckpt"
    cb.path = tmp_path / "last.ckpt"

    class Trainer:
        is_global_zero, saved = True, []

        def save_checkpoint(self, path, weights_only):
            self.saved.append(path)
            path.write_bytes(b"x")

        class strategy:
            barrier = staticmethod(lambda name: None)

    t = Trainer()
    cb._save(t)
    cb._save(t)
    assert t.saved[0] != t.saved[1] and str(os.getpid()) in t.saved[0].name
    assert (tmp_path / "last.ckpt").read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_corrupt_state_files_are_moved_aside_and_the_run_continues(tmp_path):
    run = tmp_path / "runs" / "r"
    _train(run, "debug=fast", "eval.degradations=[clean]")
    (run / "results.json").write_text("{broken")
    (run / runs.DONE).write_text("")
    with pytest.warns(RuntimeWarning) as caught:
        results = _train(run, "debug=fast", "eval.degradations=[clean]")
    named = " ".join(str(w.message) for w in caught)
    assert str(run / runs.DONE) in named  # the first file read; results.json is rewritten by the rerun
    assert results["skimage_holdout"]["clean"]["n_images"] == 3
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    assert len(list(run.glob(f"{runs.DONE}.corrupt-*"))) == 1
    # a corrupt manifest: the sweep's job folders are found by scanning instead
    sweep = tmp_path / "runs"
    (sweep / runs.MANIFEST).write_text("not json")
    with pytest.warns(RuntimeWarning, match="manifest.json was unreadable"):
        assert runs.find_runs(sweep) == [run]


@pytest.mark.parametrize("override,key", [("trainer.max_steps=0", "trainer.max_steps"),
                                          ("trainer.max_steps=-1", "trainer.max_steps"),
                                          ("data.batch_size=0", "data.batch_size"),
                                          ("data.lr_patch_size=0", "data.lr_patch_size")])
def test_values_that_would_train_nonsense_are_rejected_naming_the_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=rf"^{key}=-?\d+: must be an integer >= 1"):
        _train(tmp_path / "r", override)
    assert not (tmp_path / "r" / runs.CKPT).exists()


def test_key_added_with_plus_that_nothing_reads_is_rejected(tmp_path):
    with pytest.raises(ValueError) as err:
        _train(tmp_path / "r", "+dropout.prob=0.5")
    msg = str(err.value)
    assert "'dropout.prob' is not a setting" in msg and "dim, p, position" in msg and "dropout.p=" in msg
    _train(tmp_path / "ok", "debug=fast", "eval.degradations=[clean]", "+trainer.limit_val_batches=1")  # a constructor argument


def test_resume_shows_no_unreliable_results_warning(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    args = ("trainer.max_steps=2", "ckpt_every_n_steps=1", "eval.degradations=[clean]")
    _train(run, *args)
    (run / runs.DONE).unlink()  # as if killed after the last checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(run, *args)
    assert "resuming from" in capsys.readouterr().out
    assert not [w for w in caught if "unreliable" in str(w.message)]


def test_metrics_csv_is_rewritten_atomically_on_resume(tmp_path, monkeypatch):
    import src.loggers
    from src.loggers import ResumableCSVLogger

    (tmp_path / "metrics.csv").write_text("step,train/loss\n1,0.5\n")
    writes = []
    real = src.loggers.atomic_write_text
    monkeypatch.setattr(src.loggers, "atomic_write_text", lambda p, t: writes.append(p) or real(p, t))
    ResumableCSVLogger(save_dir=str(tmp_path), name="", version="").experiment
    assert writes == [tmp_path / "metrics.csv"]
    assert (tmp_path / "metrics.csv").read_text() == "step,train/loss\n1,0.5\n"


def test_unwritable_runs_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cmd = [sys.executable, "-m", "src.train", *TINY, f"paths.runs={blocker}/runs", "debug=fast"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 1
    assert f"paths.runs={blocker}/runs is not a writable folder" in proc.stderr and "SR_RUNS_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr and "handler" not in proc.stderr
