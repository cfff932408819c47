"""Issue 10: what an offline W&B run holds, read from the run's own files (no server, no network)."""
import json
import time

from conftest import TINY, compose_train
from wandb_offline import records


def test_offline_wandb_run_holds_config_curves_panels_and_results(tmp_path, monkeypatch):
    from src.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY if o != "logger=none"] + [
        "logger=wandb", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "name=mysweep", "dropout.p=0.3", f"paths.runs={tmp_path}", f"paths.cache={tmp_path / 'cache'}"]
    cfg = compose_train(overrides, tmp_path, override_dirname="dropout.p=0.3")
    train(cfg, tmp_path)

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 60
    while True:  # wandb-core writes the offline file in the background; the run is whole once `exit` is there
        recs = list(records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.time() > deadline:
            break
        time.sleep(0.5)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "mysweep" and run.display_name == "dropout.p=0.3"
    assert {"position=last", "dim=channel", "p=0.3", "backbone=MSRResNet"} <= set(run.tags)

    config = {i.key: json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    assert config["dropout"] == {"position": "last", "dim": "channel", "p": 0.3}

    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
    assert len(history["train/loss"]) == 4 and len(history["train/lr"]) == 4
    assert len(history["val/psnr"]) == 2
    assert "test/skimage_holdout/clean/psnr" in history and "test/skimage_holdout/noise/ssim" in history

    panels = sorted((run_dir / "files" / "media" / "images" / "val").glob("panel_*.png"))
    assert len(panels) == 2 * 3  # 3 validation crops at each of the 2 validations
    (table,) = (run_dir / "files" / "media" / "table" / "test").glob("results_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"][:3] == ["set", "degradation", "psnr"]
    assert sorted(row[1] for row in table["data"]) == ["clean", "noise"]
