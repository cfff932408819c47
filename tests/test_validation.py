"""Validation on several sets x degradations: one metric each, their mean as val/psnr, seeded noise."""
import numpy as np
import pytest
import torch

from conftest import TINY, compose_train

SETS = ["skimage_holdout", "skimage"]
DEGS = ["clean", "noise"]
MANY = [f"data.val_sets=[{','.join(SETS)}]", f"data.val_degradations=[{','.join(DEGS)}]"]


def _parts(tmp_path, *overrides):
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from src.utils import build

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", *overrides], tmp_path)
    kwargs = OmegaConf.to_container(cfg.module, resolve=True)
    module = get_class(kwargs.pop("_target_"))(**kwargs)
    return cfg, module, build(cfg.data, degradation=build(cfg.degradation))


def _psnr_y(net, loader) -> float:
    from src.models.module import y_channel

    values = []
    with torch.no_grad():
        for lr, hr in loader:
            lr, hr = lr.float() / 255, hr.float() / 255
            sr = (net.eval()(lr).clamp(0, 1) * 255).round() / 255
            values.append(-10 * torch.log10(((y_channel(sr) - y_channel(hr))[..., 4:-4, 4:-4] ** 2).mean()))
    return torch.stack(values).mean().item()


def test_one_metric_per_set_and_degradation_and_their_mean(tmp_path):
    from src.utils import build

    cfg, module, datamodule = _parts(tmp_path, *MANY)
    trainer = build(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: v for d in logged for k, v in d.items()}
    names = [f"{s}/{d}" for s in SETS for d in DEGS]
    assert set(metrics) == {"val/psnr"} | {f"val/{n}/psnr" for n in names}
    loaders = datamodule.val_dataloader()
    assert list(loaders) == names
    assert [len(loaders[n].dataset) for n in names] == [3, 3, 7, 7]
    for n in names:  # each one scored independently
        assert metrics[f"val/{n}/psnr"] == pytest.approx(_psnr_y(module.net, loaders[n]), abs=1e-4)
    assert metrics["val/psnr"] == pytest.approx(np.mean([metrics[f"val/{n}/psnr"] for n in names]), abs=1e-5)


def test_validation_noise_is_seeded_and_differs_from_clean(tmp_path):
    def lr_images(seed, degradation):
        _, _, dm = _parts(tmp_path, *MANY, f"seed={seed}")
        dm.setup("validate")
        return [lr for lr, _ in dm.val_data[f"skimage_holdout/{degradation}"].pairs]

    a, b, other, clean = lr_images(0, "noise"), lr_images(0, "noise"), lr_images(5, "noise"), lr_images(0, "clean")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, other))
    assert not any(np.array_equal(x, y) for x, y in zip(a, clean))
    assert a[0].shape == clean[0].shape == (16, 16, 3)  # the 64 px centre crop at x4


def test_default_validation_keeps_one_set_one_degradation(tmp_path):
    _, _, dm = _parts(tmp_path)
    dm.setup("validate")
    assert list(dm.val_dataloader()) == ["skimage_holdout/clean"]


def test_unknown_validation_degradation_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"data.val_degradations=\['clean', 'fog'\]: unknown 'fog'; allowed: clean"):
        _parts(tmp_path, "data.val_degradations=[clean,fog]")
