"""The official training recipe as `experiment=official`: its schedule, flips, and what it sets beside the paper's."""
import math

import numpy as np
import pytest
import torch

from conftest import compose_train


def _expected(t, periods, weights, eta_min, base):
    # Written out cycle by cycle: cycle k covers iterations (start, start + periods[k]], the first also t = 0.
    start = 0
    for period, weight in zip(periods, weights):
        if t <= start + period:
            return eta_min + weight * (base - eta_min) * (1 + math.cos(math.pi * (t - start) / period)) / 2
        start += period
    raise AssertionError("t beyond the last cycle")


def test_cosine_restart_lr_curve_follows_the_formula():
    from src.models.schedulers import CosineAnnealingRestartLR

    periods, weights, eta_min, base = [4, 8], [1.0, 0.5], 0.01, 1.0
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = CosineAnnealingRestartLR(opt, periods, weights, eta_min)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([_expected(t, periods, weights, eta_min, base) for t in range(12)], abs=1e-12)
    assert seen[4] == pytest.approx(eta_min) and seen[5] > 0.45  # the end of cycle 1, then the restart at half weight
    # resuming from the saved state continues the curve
    again = CosineAnnealingRestartLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base), periods, weights,
                                     eta_min)
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr() == pytest.approx([_expected(12, periods, weights, eta_min, base)])


@pytest.mark.parametrize("kwargs, match", [
    ({"periods": [4, 8], "restart_weights": [1]}, r"restart_weights=\[1\] must have one weight per period"),
    ({"periods": [0]}, r"module.scheduler.periods=\[0\]"),
])
def test_cosine_restart_bad_arguments_name_the_key(kwargs, match):
    from src.models.schedulers import CosineAnnealingRestartLR

    with pytest.raises(ValueError, match=match):
        CosineAnnealingRestartLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), **kwargs)


def _scheduler(cfg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.module.optimizer.lr)
    node = OmegaConf.to_container(cfg.module.scheduler, resolve=True)
    return instantiate({**node, "_partial_": False}, optimizer=opt)


def test_official_experiment_sets_the_official_recipe(tmp_path):
    cfg = compose_train(["experiment=official"], tmp_path)
    assert list(cfg.module.optimizer.betas) == [0.9, 0.99] and cfg.module.optimizer.lr == 2e-4
    assert cfg.ema.decay == 0.999 and cfg.data.augment == "hflip"
    assert cfg.trainer.max_steps == 500000 and cfg.backbone._target_.endswith("MSRResNet")
    sched = _scheduler(cfg)
    lr = lambda t: sched.lr_at(t)[0]  # noqa: E731
    assert lr(0) == pytest.approx(2e-4)
    assert lr(250000) == pytest.approx(1e-7)  # the end of the first cycle
    assert lr(250001) == pytest.approx(2e-4, rel=1e-6)  # the restart
    assert lr(500000) == pytest.approx(1e-7 + (2e-4 - 1e-7) / 2)  # stopped halfway through the second cycle


def test_paper_experiment_keeps_the_papers_text(tmp_path):
    cfg = compose_train(["experiment=paper"], tmp_path)
    assert list(cfg.module.optimizer.betas) == [0.9, 0.999]
    assert cfg.ema.decay == 0 and cfg.data.augment == "all8"
    sched = _scheduler(cfg)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 500000


def _matches(img, patch):
    """Whether `patch` is a crop of `img`, and whether of it mirrored left-right."""
    p = patch.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(img, (p, p, 3)).reshape(-1, p, p, 3)
    direct = any(np.array_equal(w, patch) for w in windows)
    mirrored = any(np.array_equal(w[:, ::-1], patch) for w in windows)
    return direct, mirrored


@pytest.mark.parametrize("augment", ["hflip", "all8", "none"])
def test_training_crops_flip_and_rotate_as_configured(tmp_path, augment):
    from src.data.datasets import HRPatches
    from src.data.imageio import write_image

    img = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    write_image(tmp_path / "im.png", img)
    data = HRPatches([tmp_path / "im.png"], patch_size=12, length=40, seed=3, augment=augment)
    kinds = [_matches(img, data[i].permute(1, 2, 0).numpy()) for i in range(40)]
    direct, mirrored = sum(d for d, _ in kinds), sum(m and not d for d, m in kinds)
    neither = sum(not d and not m for d, m in kinds)
    if augment == "none":
        assert direct == 40
    elif augment == "hflip":
        assert neither == 0 and direct > 5 and mirrored > 5
    else:
        assert neither > 5  # rotations


def test_unknown_augment_is_a_clear_error(tmp_path):
    from src.data.datasets import HRPatches
    from src.data.imageio import write_image

    write_image(tmp_path / "im.png", np.zeros((24, 24, 3), np.uint8))
    with pytest.raises(ValueError, match=r"data.augment='rot'; allowed: all8, hflip, none"):
        HRPatches([tmp_path / "im.png"], patch_size=12, length=4, augment="rot")


def _batch(k, b=2):
    # pair k*b + j carries its number in every pixel, so where each pair went can be read back
    ids = torch.arange(k * b, (k + 1) * b, dtype=torch.float32).view(b, 1, 1, 1)
    return ids.expand(b, 3, 2, 2).clone(), ids.expand(b, 3, 8, 8).clone()


def test_pair_pool_fills_then_swaps_batches_for_shuffled_pairs():
    from src.data.pool import PairPool

    pool, out = PairPool(4), []
    for k in range(6):
        lr, gt = pool(*_batch(k), torch.Generator().manual_seed(k))
        assert torch.equal(lr[:, :, :1, :1], gt[:, :, :1, :1])  # pairs stay pairs
        out.append(lr[:, 0, 0, 0].tolist())
    assert out[:2] == [[0, 1], [2, 3]]  # filling: batches pass through
    given, held = sum(out, []), pool.lr[:, 0, 0, 0].tolist()
    assert sorted(given + held) == sorted([0, 1, 2, 3] + list(range(12)))  # nothing lost or duplicated
    assert out[2:] != [[4, 5], [6, 7], [8, 9], [10, 11]]  # later batches come from the pool


def test_pair_pool_resumes_from_its_saved_state(tmp_path):
    from src.data.pool import PairPool

    straight = PairPool(4)
    expected = [straight(*_batch(k), torch.Generator().manual_seed(k))[0] for k in range(6)]
    first = PairPool(4)
    for k in range(3):
        first(*_batch(k), torch.Generator().manual_seed(k))
    torch.save(first.state_dict(), tmp_path / "pool.pt")
    resumed = PairPool(4)
    resumed.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
    for k in range(3, 6):
        assert torch.equal(resumed(*_batch(k), torch.Generator().manual_seed(k))[0], expected[k])


def test_pair_pool_size_must_fit_the_batch():
    from src.data.pool import PairPool

    with pytest.raises(ValueError, match=r"data.pool_size=3 must be a multiple of the batch size 2"):
        PairPool(3)(*_batch(0), torch.Generator())
