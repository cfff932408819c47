"""The exponential moving average of the weights: the formula, where it is used, and how it is saved."""
import copy

import pytest
import pytorch_lightning as pl
import torch

from conftest import TINY, compose_train


def _parts(tmp_path, *overrides):
    from src.train import build_parts

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", *overrides], tmp_path)
    return cfg, *build_parts(cfg)


class Weights(pl.Callback):
    """The trained weights after every optimizer step."""

    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if len(self.after_step) < trainer.global_step:
            self.after_step.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})


def test_average_follows_the_formula_every_optimizer_step(tmp_path):
    from src.utils import build

    decay = 0.6
    cfg, module, datamodule = _parts(tmp_path, f"ema.decay={decay}", "trainer.max_steps=3",
                                     "trainer.accumulate_grad_batches=2")
    start = copy.deepcopy(module.net.state_dict())
    weights = Weights()
    trainer = build(cfg.trainer, logger=False, callbacks=[weights], default_root_dir=str(tmp_path),
                    limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert len(weights.after_step) == 3  # one update per optimizer step, not per micro-batch
    expected = start
    for w in weights.after_step:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
    got = module.net_ema.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)
    assert not torch.equal(got["conv_first.weight"], module.net.state_dict()["conv_first.weight"])
    assert all(not p.requires_grad for p in module.net_ema.parameters())
    # only the trained network is optimised
    assert sum(len(g["params"]) for g in trainer.optimizers[0].param_groups) == len(list(module.net.parameters()))


def test_validation_scores_the_average(tmp_path):
    from src.models.module import y_channel
    from src.utils import build

    cfg, module, datamodule = _parts(tmp_path, "ema.decay=0.5", "trainer.max_steps=2")
    trainer = build(cfg.trainer, logger=False, default_root_dir=str(tmp_path), limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    validator = build(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    logged = validator.validate(module, datamodule=datamodule, verbose=False)[0]["val/psnr"]

    def psnr(net):
        values = []
        with torch.no_grad():
            for lr, hr in datamodule.val_dataloader()["skimage_holdout/clean"]:
                lr, hr = lr.float() / 255, hr.float() / 255
                sr = (net.eval()(lr).clamp(0, 1) * 255).round() / 255
                mse = ((y_channel(sr) - y_channel(hr))[..., 4:-4, 4:-4] ** 2).mean()
                values.append(-10 * torch.log10(mse))
        return torch.stack(values).mean().item()

    assert logged == pytest.approx(psnr(module.net_ema), abs=2e-5)
    assert abs(logged - psnr(module.net)) > 1e-4  # two steps apart from the average: small but far above 2e-5


def test_checkpoint_holds_basicsr_params_and_params_ema(tmp_path):
    from src.models.loading import load_model
    from src.train import train

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", "ema.decay=0.5", "trainer.max_steps=2",
                                "eval.degradations=[clean]"], tmp_path)
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    for key, prefix in (("params", "net."), ("params_ema", "net_ema.")):
        ours = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        assert ckpt[key].keys() == ours.keys() and "conv_first.weight" in ckpt[key]  # BasicSR key names
        assert all(torch.equal(ckpt[key][k], ours[k]) for k in ours)
    assert not torch.equal(ckpt["params"]["conv_first.weight"], ckpt["params_ema"]["conv_first.weight"])
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")  # the loaders take the average
    assert torch.equal(model.state_dict()["conv_first.weight"], ckpt["params_ema"]["conv_first.weight"])


def test_without_ema_checkpoint_has_params_only(tmp_path):
    from src.train import train

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", "debug=fast"], tmp_path)
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "params" in ckpt and "params_ema" not in ckpt
    assert not any(k.startswith("net_ema.") for k in ckpt["state_dict"])


def test_resuming_with_a_different_ema_setting_is_a_clear_error(tmp_path):
    # (src.train refuses a changed config earlier, through the run's identity; this guards direct Lightning use)
    _, plain, _ = _parts(tmp_path)
    _, with_ema, _ = _parts(tmp_path, "ema.decay=0.9")
    with pytest.raises(ValueError, match=r"weight average off but this run has ema.decay=0.9"):
        with_ema.on_load_checkpoint({"state_dict": plain.state_dict()})
    with pytest.raises(ValueError, match=r"weight average on but this run has ema.decay=0"):
        plain.on_load_checkpoint({"state_dict": with_ema.state_dict()})
    with_ema.on_load_checkpoint({"state_dict": with_ema.state_dict()})  # the same setting resumes


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_bad_decay_names_the_key(tmp_path, decay):
    with pytest.raises(ValueError, match=rf"ema.decay={decay}: must be in \[0, 1\)"):
        _parts(tmp_path, f"ema.decay={decay}")
