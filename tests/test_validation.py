"""Validation on several sets x degradations: one metric each, their mean as val/psnr, seeded noise."""
import numpy as np
import pytest
import torch

from conftest import TINY, compose_train

SETS = ["skimage_holdout", "skimage"]
DEGS = ["clean", "noise"]
MANY = [f"data.val_sets=[{','.join(SETS)}]", f"data.val_degradations=[{','.join(DEGS)}]"]


def _parts(tmp_path, *overrides):
    from src.train import build_parts

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", *overrides], tmp_path)
    return cfg, *build_parts(cfg)


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


def _psnr_rgb_numpy(net, loader, border=4) -> float:
    # BasicSR's calculate_psnr (test_y_channel false) on 8-bit images, written out in float64 numpy
    values = []
    with torch.no_grad():
        for lr, hr in loader:
            sr = (net.eval()(lr.float() / 255).clamp(0, 1) * 255).round().to(torch.uint8)
            a = sr[0].permute(1, 2, 0).numpy().astype(np.float64)[border:-border, border:-border]
            b = hr[0].permute(1, 2, 0).numpy().astype(np.float64)[border:-border, border:-border]
            values.append(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))
    return float(np.mean(values))


def test_rgb_validation_metric_is_basicsr_calculate_psnr(tmp_path):
    from src.utils import build

    cfg, module, datamodule = _parts(tmp_path, "module.val_metric=psnr_rgb", "data.val_crop=null",
                                     "data.val_sets=[skimage_holdout]", "data.val_degradations=[clean,noise]")
    trainer = build(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    metrics = {k: v for d in trainer.validate(module, datamodule=datamodule, verbose=False) for k, v in d.items()}
    names = ["skimage_holdout/clean", "skimage_holdout/noise"]
    assert set(metrics) == {"val/psnr_rgb"} | {f"val/{n}/psnr_rgb" for n in names}  # the name says RGB
    loaders = datamodule.val_dataloader()
    assert loaders[names[0]].dataset[0][1].shape[-2:] == (300, 448)  # whole chelsea.png, modcropped, not 64 px
    for n in names:
        rgb = _psnr_rgb_numpy(module.net, loaders[n])
        assert metrics[f"val/{n}/psnr_rgb"] == pytest.approx(rgb, abs=1e-3)
        assert abs(rgb - _psnr_y(module.net, loaders[n])) > 0.05  # a different number from PSNR-Y
    assert metrics["val/psnr_rgb"] == pytest.approx(np.mean([metrics[f"val/{n}/psnr_rgb"] for n in names]), abs=1e-5)


def test_unknown_validation_metric_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"module.val_metric='psnr'; allowed: psnr_y .*, psnr_rgb"):
        _parts(tmp_path, "module.val_metric=psnr")


def test_official_experiment_validates_as_the_official_config(tmp_path):
    cfg = compose_train(["experiment=official"], tmp_path)
    assert cfg.module.val_metric == "psnr_rgb" and cfg.data.val_crop is None
    assert list(cfg.data.val_sets) == ["Set5"] and list(cfg.data.val_degradations) == ["clean"]
    assert cfg.trainer.val_check_interval == 5000 and cfg.scale == 4  # val_freq 5000; crop_border 4 = scale
    assert compose_train(["experiment=paper"], tmp_path).module.val_metric == "psnr_y"


def test_rgb_curves_are_found_by_the_reports_and_leave_the_run_identity_alone(tmp_path):
    from src import runs
    from src.reports.collect import curve_key, read_curve

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,val/Set5/clean/psnr_rgb,val/psnr_rgb\n"
                                          "0,9,0.1,,\n0,9,,25.5,25.5\n0,19,,26.0,26.0\n")
    assert curve_key(tmp_path) == "val/psnr_rgb"
    assert read_curve(tmp_path, "val/psnr_rgb") == ([9.0, 19.0], [25.5, 26.0])
    # The metric is logged under its own name, so switching it on a resumed run mixes no curves: not identity.
    a = runs.fingerprint(compose_train(["module.val_metric=psnr_y"], tmp_path))
    b = runs.fingerprint(compose_train(["module.val_metric=psnr_rgb"], tmp_path))
    assert a == b
