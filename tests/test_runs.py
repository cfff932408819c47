"""The run-folder layout (src/runs.py): finding runs, completion, state files, the config that ran."""
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import runs


def _run(path, ckpt=True, job=None, config=True):
    path.mkdir(parents=True)
    if ckpt:
        (path / runs.CKPT).parent.mkdir()
        (path / runs.CKPT).write_bytes(b"x")
    if job:
        runs.write_job_status(path, [f"k={path.name}"], job)
    if config:
        OmegaConf.save(OmegaConf.create({"a": 1}), path / runs.CONFIG)
    return path


def test_find_runs_one_rule_for_runs_sweeps_and_trees(tmp_path):
    sweep = tmp_path / "train" / "sweep-a"
    a, b = _run(sweep / "a", job="completed"), _run(sweep / "b", ckpt=False, job="failed")
    single = _run(tmp_path / "train" / "default")
    (single / "wandb" / "run-1" / "files").mkdir(parents=True)  # a run's own subfolders are not runs
    OmegaConf.save(OmegaConf.create({}), single / "wandb" / "run-1" / "files" / "config.yaml")
    (tmp_path / "train" / "empty").mkdir()
    assert runs.find_runs(a) == [a]
    assert runs.find_runs(sweep) == [a, b]
    assert runs.find_runs(tmp_path) == [single, a, b]
    # a manifest decides a sweep's jobs: a job folder not in it belongs to another sweep
    runs.write_manifest(sweep, "x", {"a": runs.read_job(a)})
    assert runs.find_runs(sweep) == [a]
    with pytest.raises(FileNotFoundError, match="empty: no run folder"):
        runs.find_runs(tmp_path / "train" / "empty")


def test_completion_needs_steps_and_every_result(tmp_path):
    assert not runs.is_complete(tmp_path, 10, ["S"], ["clean"])
    runs.mark_trained(tmp_path, 10, 1.0)
    assert not runs.is_complete(tmp_path, 10, ["S"], ["clean"])  # no results yet
    (tmp_path / "results.json").write_text(json.dumps({"S": {"clean": {"psnr": 1}}}))
    assert runs.is_complete(tmp_path, 10, ["S"], ["clean"])
    assert not runs.is_complete(tmp_path, 11, ["S"], ["clean"])
    assert not runs.is_complete(tmp_path, 10, ["S"], ["clean", "noise"])
    removed = runs.invalidate(tmp_path)
    assert [p.name for p in removed] == ["train_done.json", "results.json"]
    assert not runs.is_complete(tmp_path, 10, ["S"], ["clean"])


def test_run_config_prefers_the_config_that_ran(tmp_path):
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"backbone": {"num_feat": 64}}), tmp_path / ".hydra" / "config.yaml")
    assert runs.load_run_config(tmp_path).backbone.num_feat == 64  # older runs: Hydra's copy
    runs.save_run_config(tmp_path, OmegaConf.create({"backbone": {"num_feat": 16}}))
    assert runs.load_run_config(tmp_path).backbone.num_feat == 16
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        runs.load_run_config(tmp_path / "nowhere")


def test_run_of_checkpoint_knows_checkpoints_and_published_weights(tmp_path):
    run = _run(tmp_path / "r")
    assert runs.run_of_checkpoint(run / runs.CKPT) == run
    assert runs.run_of_checkpoint(runs.step_weights(run, 5)) == run
    assert runs.run_of_checkpoint(runs.final_weights(run)) == run
    assert runs.run_of_checkpoint(tmp_path / "w.pth") is None


def test_sweep_folder_named_by_its_command_and_jobs_by_what_varies():
    from src.sweep import shared_keys, sweep_folder_name

    assert sweep_folder_name([]) == "sweep"
    assert sweep_folder_name(["dropout.p=0.1,0.5", "paths.runs=/x", "backbone=srresnet"], ["paths.runs"]) == \
        "sweep-backbone-srresnet_dropout.p-0.1+0.5"
    jobs = [["dropout.p=0.1", "backbone=srresnet", "seed=1"], ["dropout.p=0.5", "backbone=srresnet", "seed=2"]]
    assert shared_keys(jobs) == ["backbone"]


def test_job_json_records_the_git_commit_and_dirty_flag(tmp_path):
    import json
    import subprocess

    from conftest import REPO
    from src import runs

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    runs._GIT = None  # asked once per process: the checkout may have changed since an earlier test asked
    runs.write_job_status(tmp_path, ["seed=1"], "running")
    job = json.loads((tmp_path / "job.json").read_text())
    assert len(head) == 40 and job["git"] == {"commit": head, "dirty": dirty}


def test_published_files_carry_no_path_of_this_machine(tmp_path):
    import json

    import yaml

    from src import runs
    from src.utils import portable_path

    run = tmp_path / "runs" / "train" / "sweep" / "seed-1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "seed": 1, "data": {"root": "/data/sr", "test_sets": ["Set5"], "cache_dir": str(tmp_path / "cache")},
        "logger": {"csv": {"save_dir": str(run), "name": None},
                   "wandb": {"save_dir": str(run), "dir": str(run / "wandb")}},
        "paths": {"runs": str(tmp_path / "runs"), "cache": "/home/me/.cache"}}))
    (run / "identity.json").write_text(json.dumps({"config": {"seed": 1}, "data_root": "/data/sr"}))
    (run / "results.json").write_text("{}")
    (folder,) = runs.publish(run, tmp_path / "docs")
    published = yaml.safe_load((folder / "config.yaml").read_text())
    assert published == {"seed": 1, "data": {"test_sets": ["Set5"]},
                         "logger": {"csv": {"save_dir": ".", "name": None},
                                    "wandb": {"save_dir": ".", "dir": "wandb"}}, "paths": {}}
    assert json.loads((folder / "identity.json").read_text()) == {"config": {"seed": 1}}
    assert str(tmp_path) not in "".join(p.read_text() for p in folder.iterdir())
    assert portable_path(run / "checkpoints" / "last.ckpt", run.parent) == "seed-1/checkpoints/last.ckpt"
    assert portable_path("/elsewhere/last.ckpt", run) is None and portable_path(None, run) is None


# Overrides that change neither what a run learns nor how it is scored: each must land in the default run's folder,
# be accepted there by the identity, and be averaged with it in reports.
BOOKKEEPING_OVERRIDES = ["preemption.signal=SIGTERM", "ckpt_keep_steps=[250]", "channels_last=false", "compile=true",
                         "+logger.wandb.entity=someone", "logger.wandb.offline=false", "callbacks=lr_monitor",
                         "eval.tile=64", "module.val_metric=psnr_rgb", "trainer.log_every_n_steps=7"]


@pytest.mark.parametrize("override", BOOKKEEPING_OVERRIDES + ["seed=1", "dropout.p=0.5", "trainer.max_steps=7"])
def test_a_key_counts_alike_in_folder_name_identity_and_reports(tmp_path, override):
    from conftest import compose_train
    from src.reports.collect import read_run

    def where_it_counts(overrides, sub):
        run = tmp_path / sub
        cfg = compose_train(overrides, run, override_dirname=None)
        runs.save_run_config(run, cfg)
        (run / "results.json").write_text(json.dumps({"Set5": {"clean": {"psnr": 30.0}}}))
        return Path(cfg.hydra.run.dir).name, runs.fingerprint(cfg), read_run(run).fingerprint

    same = [a == b for a, b in zip(where_it_counts([], "a"), where_it_counts([override], "b"))]
    key = override.partition("=")[0]
    expected = {"seed": [False, False, True], "dropout.p": [False] * 3, "trainer.max_steps": [False] * 3}
    assert same == expected.get(key, [True] * 3)  # [folder name, identity, report setting]


def test_override_prefixes_take_their_parent_key_role():
    # a key under a listed one (or added with +, removed with ~) has its role; a group choice only its own
    assert runs.run_id("+logger.wandb.offline=false,~callbacks.rich,logger.wandb.entity=x,dropout.p=0.5") \
        == "dropout.p-0.5"
    assert runs.run_id("trainer=gpu,trainer.max_steps=10,experiment=paper") == "trainer.max_steps-10"
    assert runs.role("eval.round_y") == runs.Role(result=True, folder=True, seeds=False)
    assert runs.role("eval.tile") == runs.Role(result=False, folder=False, seeds=False)
    assert runs.role("data.rootless") == runs.Role(True, True, True)  # a prefix of the name is not a parent key
    assert "preemption" in runs.BOOKKEEPING and "seed" not in runs.BOOKKEEPING


def test_an_identity_recorded_before_a_key_became_bookkeeping_still_matches(tmp_path):
    recorded = {"config": {"dropout": {"p": 0.7}, "preemption": {"signal": "SIGUSR1", "requeue": True}}}
    runs.claim_identity(tmp_path, recorded)  # as a run written when preemption was still part of the identity
    runs.claim_identity(tmp_path, {"config": {"dropout": {"p": 0.7}}})  # the same run, recorded now
    assert json.loads((tmp_path / runs.IDENTITY).read_text()) == {"config": {"dropout": {"p": 0.7}}}
    with pytest.raises(runs.RunIdentityError, match=r"config.dropout.p: 0.7 -> 0.5"):
        runs.claim_identity(tmp_path, {"config": {"dropout": {"p": 0.5}}})
