import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")  # no test may reach for the network
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def data_root():
    from src.data.datasets import default_data_root

    root = default_data_root()
    if not (root / "Set5" / "HR").is_dir():
        pytest.skip(f"real test data not found under {root} (set SR_DATA_ROOT)")
    return root


def compose_train(overrides, run_dir, override_dirname=""):
    """The train config as `python -m src.train <overrides>` would see it, with its output dir set to run_dir
    (override_dirname=None keeps the one Hydra derived from the overrides, which names the run folder)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from src.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        if override_dirname is not None:
            cfg.hydra.job.override_dirname = override_dirname
    HydraConfig.instance().set_config(cfg)
    return cfg


def sweep_folder(runs, name):
    """The one sweep folder a multirun made under <runs>/<name> (each multirun gets its own)."""
    found = sorted(Path(runs, name).glob("sweep*"))
    assert len(found) == 1, found
    return found[0]


TINY = ["logger=none", "trainer.enable_progress_bar=false", "data.batch_size=2", "data.lr_patch_size=16",
        "data.val_crop=64", "eval.degradations=[clean,noise]"]


def toy_root(root, seed):
    """Two random 72x72 HR images as a set `Toy` under `root` (a data root for TOY runs)."""
    import numpy as np

    from src.data.imageio import write_image

    rng = np.random.default_rng(seed)
    for i in range(2):
        write_image(root / "Toy" / "HR" / f"{i}.png", rng.integers(0, 256, (72, 72, 3), dtype=np.uint8))
    return root


# Overrides of a one-batch run that trains, validates and tests on the `Toy` set of `toy_root`.
TOY = ["debug=fast", "data.train_sets=[Toy]", "data.val_sets=[Toy]", "data.test_sets=[Toy]",
       "eval.degradations=[clean]"]
