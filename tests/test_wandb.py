"""What an offline W&B run holds, read from the run's own files (no server, no network)."""
import json
import time

from conftest import TINY, compose_train
from wandb_offline import records


def test_offline_wandb_run_holds_config_curves_panels_and_results(tmp_path, monkeypatch, capfd):
    from src.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY if o != "logger=none"] + [
        "logger=wandb", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "name=mysweep", "dropout.p=0.3", f"paths.runs={tmp_path}", f"paths.cache={tmp_path / 'cache'}"]
    run_folder = tmp_path / "mysweep" / "dropout.p-0.3"
    cfg = compose_train(overrides, run_folder, override_dirname="dropout.p=0.3")
    train(cfg, run_folder)

    printed = capfd.readouterr()
    assert "anonymous setting" not in printed.err + printed.out  # a warning about nothing this run set
    assert "wandb sync" in printed.err + printed.out  # the upload hint stays
    (run_dir,) = (run_folder / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 60
    while True:  # wandb-core writes the offline file in the background; the run is whole once `exit` is there
        recs = list(records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.time() > deadline:
            break
        time.sleep(0.5)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    # a single run is a group of its own, named by its folder below paths.runs
    assert run.run_group == "mysweep/dropout.p-0.3" and run.display_name == "mysweep/dropout.p-0.3"
    assert set(run.tags) == {"experiment=none", "backbone=srresnet_small", "arch=MSRResNet", "position=last",
                             "dim=channel", "p=0.3", "seed=0", "degradation=realesrgan"}

    config = {i.key: json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["dropout"] == {"position": "last", "dim": "channel", "p": 0.3}
    assert config["git"] == json.loads((run_folder / "job.json").read_text())["git"]  # the code that ran
    assert len(config["git"]["commit"]) == 40

    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
    assert len(history["train/loss"]) == 4 and len(history["train/lr"]) == 4
    assert len(history["val/psnr"]) == 2
    # test metrics are summary values (one number per run), not one-point charts
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in recs
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert "test/skimage_holdout/clean/psnr" in summary and "test/skimage_holdout/noise/ssim" in summary
    assert "test/skimage_holdout/clean/psnr" not in history

    panels = sorted((run_dir / "files" / "media" / "images" / "val").glob("panel_*.png"))
    assert len(panels) == 2  # one labelled image of the 3 validation crops at each of the 2 validations
    saved = sorted(p.name for p in (run_folder / "visualization").glob("*.png"))
    assert saved == ["step-000002.png", "step-000004.png"]  # the same images on disk
    from PIL import Image

    # 3 crops of 64 HR px (data.val_crop=64), each under a 14 px label band; LR | SR | HR side by side
    assert Image.open(run_folder / "visualization" / saved[0]).size == (3 * 64, 3 * (14 + 64))
    (table,) = (run_dir / "files" / "media" / "table" / "test").glob("results_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"][:3] == ["set", "degradation", "psnr"]
    assert sorted(row[1] for row in table["data"]) == ["clean", "noise"]


def _wait_for_exit(run_file):
    deadline = time.time() + 60
    while True:
        recs = list(records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.time() > deadline:
            return recs
        time.sleep(0.5)


def test_sweep_report_run_has_figures_and_a_rerun_replaces_it(tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    from test_report import _run

    from src.reports.wandb_report import report_run_id
    from src.sweep import write_sweep_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "sweep"
    for name, position, p in (("a", "none", 0.0), ("b", "last", 0.5), ("c", "last", 0.7)):
        _run(sweep, name, "SRResNet", position, "channel", p)
    config = OmegaConf.create({"name": "study", "logger": {"wandb": {"project": "reflash-sr", "group": "study",
                                                                     "offline": True}}})
    run_id = report_run_id("study", sweep)
    assert run_id == report_run_id("study", sweep) and run_id != report_run_id("study", tmp_path / "other")
    for _ in range(2):  # the second build replaces the first report run
        write_sweep_report(config, sweep)
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    assert run_dir.name.endswith(run_id)
    (run_file,) = run_dir.glob("run-*.wandb")
    recs = _wait_for_exit(run_file)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id and run.display_name == "study-report"
    images = {p.name.rsplit("_", 2)[0] for p in (run_dir / "files" / "media" / "images" / "report").glob("*.png")}
    assert {"curves_Real_SRResNet", "gains_Real_SRResNet"} <= images
    tables = list((run_dir / "files" / "media" / "table" / "report").glob("table1_*.table.json"))
    assert len(tables) == 1


def test_sweep_jobs_share_their_sweep_folder_as_group_and_have_unique_names(tmp_path):
    from src.loggers import wandb_names

    runs = tmp_path / "runs"
    names = {}
    for sweep in ("sweep-dropout.p-0.1+0.5", "sweep-dropout.p-0.1+0.5_seed-1"):
        for job in ("dropout.p-0.1", "dropout.p-0.5"):
            names[sweep, job] = wandb_names(runs / "train" / sweep / job, runs, in_sweep=True)
    assert names["sweep-dropout.p-0.1+0.5", "dropout.p-0.1"] == ("train/sweep-dropout.p-0.1+0.5",
                                                                 "train/sweep-dropout.p-0.1+0.5/dropout.p-0.1")
    assert len({group for group, _ in names.values()}) == 2  # one group per sweep folder
    assert len({name for _, name in names.values()}) == 4  # the same job folder in two sweeps: two names
    # the sweep's report run joins its jobs' group
    assert wandb_names(runs / "train" / "sweep-dropout.p-0.1+0.5", runs, in_sweep=False)[0] == \
        "train/sweep-dropout.p-0.1+0.5"
    # a single run is its own group; a folder outside paths.runs keeps its last parts
    assert wandb_names(runs / "paper" / "seed-1", runs, in_sweep=False) == ("paper/seed-1", "paper/seed-1")
    assert wandb_names(tmp_path / "x" / "paper" / "sweep" / "seed-1", runs, in_sweep=True) == \
        ("paper/sweep", "paper/sweep/seed-1")


def test_wandb_logger_of_a_sweep_job_gets_group_name_and_tags(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from src.loggers import wandb_settings

    job = tmp_path / "paper" / "sweep-seed-0+1" / "seed-1"
    cfg = compose_train(["experiment=paper", "backbone=srresnet", "dropout.p=0.5", "seed=1", "logger=wandb",
                         f"paths.runs={tmp_path}"], job)
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    settings = wandb_settings(cfg, job)
    assert settings["group"] == "paper/sweep-seed-0+1" and settings["name"] == "paper/sweep-seed-0+1/seed-1"
    assert set(settings["tags"]) == {"experiment=paper", "backbone=srresnet", "arch=MSRResNet", "position=last",
                                     "dim=channel", "p=0.5", "seed=1", "degradation=realesrgan",
                                     "sweep=sweep-seed-0+1"}
    with open_dict(cfg):  # a group or name given on the command line is kept
        cfg.logger.wandb.group, cfg.logger.wandb.name = "mine", "first-try"
    assert (wandb_settings(cfg, job)["group"], wandb_settings(cfg, job)["name"]) == ("mine", "first-try")
