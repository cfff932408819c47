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


# ------------------------------------------------------------------ crop-degrade-crop (data.degrade_size)
def _opencv_padded(img, size):
    import cv2

    h, w = img.shape[:2]
    return cv2.copyMakeBorder(img, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT_101)


def _windows(img, p):
    return np.lib.stride_tricks.sliding_window_view(img, (p, p, img.shape[2])).reshape(-1, p, p, img.shape[2])


def test_degrade_crops_pad_small_images_as_real_esrgan(tmp_path):
    import warnings

    from src.data.datasets import HRPatches
    from src.data.imageio import write_image

    rng = np.random.default_rng(1)
    small, tall = rng.integers(0, 256, (10, 13, 3), np.uint8), rng.integers(0, 256, (22, 11, 3), np.uint8)
    write_image(tmp_path / "small.png", small)
    write_image(tmp_path / "tall.png", tall)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padded, so nothing is skipped (and nothing warns)
        data = HRPatches([tmp_path / "small.png", tmp_path / "tall.png"], patch_size=16, length=60, seed=2,
                         augment="none", pad=True)
    assert len(data.paths) == 2
    small_pad, tall_pad = _opencv_padded(small, 16), _opencv_padded(tall, 16)
    assert small_pad.shape == (16, 16, 3) and tall_pad.shape == (22, 16, 3)
    tall_windows = _windows(tall_pad, 16)
    seen_small, tops = 0, set()
    for i in range(60):
        item = data[i].permute(1, 2, 0).numpy()
        assert item.shape == (16, 16, 3)
        if np.array_equal(item, small_pad):
            seen_small += 1
        else:
            hits = [k for k, w in enumerate(tall_windows) if np.array_equal(w, item)]
            assert hits, f"item {i} is neither the padded small image nor a window of the padded tall one"
            tops.add(hits[0])
    assert 10 < seen_small < 50 and len(tops) > 2  # both images drawn; the tall one at several positions


def test_degrade_crops_flip_the_image_before_padding(tmp_path):
    from src.data.datasets import HRPatches
    from src.data.imageio import write_image

    img = np.random.default_rng(3).integers(0, 256, (12, 9, 3), np.uint8)
    write_image(tmp_path / "im.png", img)
    data = HRPatches([tmp_path / "im.png"], patch_size=12, length=30, seed=0, augment="hflip", pad=True)
    direct, flipped = _opencv_padded(img, 12), _opencv_padded(np.ascontiguousarray(img[:, ::-1]), 12)
    assert not np.array_equal(flipped, direct[:, ::-1])  # the order is visible on this image
    items = [data[i].permute(1, 2, 0).numpy() for i in range(30)]
    n_direct = sum(np.array_equal(x, direct) for x in items)
    n_flipped = sum(np.array_equal(x, flipped) for x in items)
    assert n_direct + n_flipped == 30 and n_direct > 3 and n_flipped > 3


def test_paired_random_crop_cuts_matching_patches_per_sample():
    from src.data.pipelines import paired_random_crop

    g = torch.Generator().manual_seed(0)
    lr = torch.rand(6, 3, 10, 12, generator=g)
    gt = lr.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)  # so a matching HR patch is checkable
    a_lr, a_gt = paired_random_crop(lr, gt, 5, 4, torch.Generator().manual_seed(7))
    b_lr, _ = paired_random_crop(lr, gt, 5, 4, torch.Generator().manual_seed(7))
    assert a_lr.shape == (6, 3, 5, 5) and a_gt.shape == (6, 3, 20, 20) and torch.equal(a_lr, b_lr)
    positions = set()
    for k in range(6):
        found = [(t, l) for t in range(6) for l in range(8) if torch.equal(lr[k, :, t:t + 5, l:l + 5], a_lr[k])]
        assert len(found) == 1
        t, l = found[0]
        assert torch.equal(a_gt[k], gt[k, :, 4 * t:4 * t + 20, 4 * l:4 * l + 20])
        positions.add(found[0])
    assert len(positions) > 1  # drawn per sample
    with pytest.raises(ValueError, match=r"smaller than the LR patch 11 \(data.degrade_size"):
        paired_random_crop(lr, gt, 11, 4, torch.Generator())


def test_degrade_size_cuts_the_patch_from_the_degraded_crop(tmp_path):
    from src import seeding
    from src.data.datamodule import SRDataModule
    from src.data.pipelines import BicubicPipeline

    degradation = BicubicPipeline(4)
    dm = SRDataModule(degradation, train_sets=["skimage"], val_sets=["skimage_holdout"], batch_size=3,
                      lr_patch_size=8, scale=4, total_steps=2, seed=5, degrade_size=60, augment="hflip")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (3, 3, 60, 60) and batch.dtype == torch.uint8  # the whole crop goes to the device
    hr = batch.float() / 255
    lr, gt = dm.degrade_batch(hr, step=3)
    assert lr.shape == (3, 3, 8, 8) and gt.shape == (3, 3, 32, 32)
    full_lr, full_gt = degradation(hr)  # the degradation of the whole 60 px crop (15 px LR)
    expected = torch.Generator().manual_seed(seeding.stream_seed(5, "patch", 3))
    tops, lefts = torch.randint(0, 8, (3,), generator=expected), torch.randint(0, 8, (3,), generator=expected)
    for k, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist())):
        assert torch.equal(lr[k], full_lr[k, :, t:t + 8, l:l + 8])
        assert torch.equal(gt[k], full_gt[k, :, 4 * t:4 * t + 32, 4 * l:4 * l + 32])
    again, _ = dm.degrade_batch(hr, step=3)
    other, _ = dm.degrade_batch(hr, step=4)
    assert torch.equal(lr, again) and not torch.equal(lr, other)


@pytest.mark.parametrize("value, match", [
    (32, r"data.degrade_size=32: must be null/0 .* at least the HR patch data.lr_patch_size x scale = 64"),
    (-5, r"data.degrade_size=-5: must be null/0"),
    ("'big'", r"data.degrade_size='big': must be null/0"),
])
def test_bad_degrade_size_fails_the_preflight(tmp_path, value, match):
    from src.preflight import check_values

    cfg = compose_train([f"data.degrade_size={value}", "data.lr_patch_size=16"], tmp_path)
    with pytest.raises(ValueError, match=match):
        check_values(cfg)


def test_official_experiment_degrades_400px_crops(tmp_path):
    from src.preflight import check_values

    cfg = compose_train(["experiment=official"], tmp_path)
    assert cfg.data.degrade_size == 400 and cfg.data.lr_patch_size * cfg.scale == 128
    check_values(cfg)
    assert compose_train(["experiment=paper"], tmp_path).data.degrade_size is None


# ------------------------------------------------------------------ sub-images (data.subimages)
def _expected_starts(n, size, step, thresh):
    # Walk the side: a sub-image every `step` while one fits; then one flush with the far edge if the pixels left
    # out exceed `thresh` (BasicSR's extract_subimages.py).
    if n < size:
        return []
    starts, p = [], 0
    while p + size <= n:
        starts.append(p)
        p += step
    return starts + ([n - size] if n - (starts[-1] + size) > thresh else [])


@pytest.mark.parametrize("n, size, step, thresh", [
    (2040, 480, 240, 0), (1356, 480, 240, 0), (960, 480, 240, 0), (1000, 480, 240, 30), (1000, 480, 240, 50),
    (480, 480, 240, 0), (479, 480, 240, 0), (100, 48, 24, 0), (100, 48, 30, 21), (100, 48, 30, 22),
])
def test_subimage_positions_follow_basicsr(n, size, step, thresh):
    from src.data.subimages import positions

    assert positions(n, size, step, thresh) == _expected_starts(n, size, step, thresh)


def test_div2k_sized_image_gives_the_official_count():
    from src.data.subimages import positions

    # 2040 x 1356 (DIV2K 0001.png): 8 rows of starts x 5 -> 40 sub-images; 1440 + 480 leaves 120 px -> one more
    assert positions(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    assert len(positions(1356, 480, 240)) * len(positions(2040, 480, 240)) == 40


def test_subimages_are_cut_once_cached_and_equal_the_source_slices(tmp_path, monkeypatch):
    import src.data.subimages as S
    from src.data.imageio import write_image

    img = np.random.default_rng(4).integers(0, 256, (70, 100, 3), np.uint8)
    write_image(tmp_path / "im.png", img)
    small = np.random.default_rng(5).integers(0, 256, (40, 90, 3), np.uint8)
    write_image(tmp_path / "small.png", small)
    params = {"size": 48, "step": 24, "thresh_size": 0}
    with pytest.warns(UserWarning, match=r"1 image\(s\) smaller than 48 px on a side are used whole: small.png"):
        items = S.cut_all([tmp_path / "im.png", tmp_path / "small.png"], params, tmp_path / "cache")
    tops, lefts = _expected_starts(70, 48, 24, 0), _expected_starts(100, 48, 24, 0)
    assert (tops, lefts) == ([0, 22], [0, 24, 48, 52])
    subs, whole = items[:-1], items[-1]
    assert whole == tmp_path / "small.png" and len(subs) == len(tops) * len(lefts)
    stack = np.load(subs[0].file)
    for i, (t, l) in enumerate((t, l) for t in tops for l in lefts):  # row-major, as BasicSR's _s001, _s002, ...
        assert subs[i].index == i and subs[i].name == f"im_s{i + 1:03d}"
        assert np.array_equal(stack[i], img[t:t + 48, l:l + 48])
    files = sorted(p.name for p in (tmp_path / "cache" / "subimages").iterdir())
    assert len(files) == 1 and not files[0].startswith(".")  # one file per image, no temporary left

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded again")

    monkeypatch.setattr(S, "read_image", no_decoding)  # a second setup reuses the cache
    assert S.cut_all([tmp_path / "im.png"], params, tmp_path / "cache") == subs
    monkeypatch.undo()
    S.cut_all([tmp_path / "im.png"], {**params, "step": 30}, tmp_path / "cache")  # other parameters: other file
    write_image(tmp_path / "im.png", 255 - img)  # other content under the same name: other file
    again = S.cut_all([tmp_path / "im.png"], params, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "subimages").iterdir())) == 3
    assert np.array_equal(np.load(again[0].file)[0], 255 - img[:48, :48])


def test_training_draws_crops_from_the_subimages(tmp_path):
    from src.data.datamodule import SRDataModule
    from src.data.imageio import write_image
    from src.data.pipelines import BicubicPipeline

    (tmp_path / "Train" / "HR").mkdir(parents=True)
    img = np.random.default_rng(6).integers(0, 256, (70, 100, 3), np.uint8)
    write_image(tmp_path / "Train" / "HR" / "a.png", img)
    dm = SRDataModule(BicubicPipeline(4), root=str(tmp_path), train_sets=["Train"], val_sets=["skimage_holdout"],
                      test_sets=["skimage_holdout"], batch_size=4, lr_patch_size=4, scale=4, total_steps=5,
                      augment="none", cache_dir=str(tmp_path / "cache"), degrade_size=40,
                      subimages={"size": 48, "step": 24, "thresh_size": 0})
    dm.setup("fit")
    assert [s.name for s in dm.train_data.paths] == [f"a_s{i:03d}" for i in range(1, 9)]
    assert dm.train_paths == [tmp_path / "Train" / "HR" / "a.png"]  # the run's identity: the source images
    subs = [img[t:t + 48, l:l + 48] for t in (0, 22) for l in (0, 24, 48, 52)]
    which = set()
    for i in range(20):
        item = dm.train_data[i].permute(1, 2, 0).numpy()
        hits = [k for k, s in enumerate(subs) if any(np.array_equal(w, item) for w in _windows(s, 40))]
        assert hits, f"item {i} is no 40 px window of a sub-image"
        which.update(hits)
    assert len(which) > 2


@pytest.mark.parametrize("node, match", [
    ({"size": 480, "step": 0}, r"data.subimages.step=0: must be an integer >= 1"),
    ({"size": 480, "step": 240, "thresh_size": -1}, r"data.subimages.thresh_size=-1: must be an integer >= 0"),
    ({"size": 480, "step": 240, "stride": 2}, r"data.subimages has unknown key\(s\) stride; keys: size, step"),
    ({"step": 240}, r"data.subimages.size=None: must be an integer >= 1"),
    ({"size": 300, "step": 240}, r"data.subimages.size=300: must be at least data.degrade_size = 400"),
])
def test_bad_subimages_fail_the_preflight(tmp_path, node, match):
    from omegaconf import open_dict

    from src.preflight import check_values

    cfg = compose_train(["experiment=official"], tmp_path)
    with open_dict(cfg):
        cfg.data.subimages = node
    with pytest.raises(ValueError, match=match):
        check_values(cfg)


def test_subimages_need_a_cache_dir(tmp_path):
    from src.data.subimages import cut_all

    with pytest.raises(ValueError, match=r"data.subimages needs data.cache_dir"):
        cut_all([tmp_path / "a.png"], {"size": 48, "step": 24}, None)


def test_official_experiment_trains_on_div2k_subimages(tmp_path):
    cfg = compose_train(["experiment=official"], tmp_path)
    assert dict(cfg.data.subimages) == {"size": 480, "step": 240, "thresh_size": 0}
    assert list(cfg.data.train_sets) == ["DIV2K_train"]
    assert compose_train(["experiment=paper"], tmp_path).data.subimages is None


def test_datamodule_saves_and_restores_its_pool_per_rank(tmp_path):
    import types
    import warnings

    from src.data.datamodule import SRDataModule
    from src.data.pipelines import BicubicPipeline

    def make():
        return SRDataModule(BicubicPipeline(4), train_sets=["skimage"], val_sets=["skimage_holdout"], batch_size=2,
                            lr_patch_size=2, scale=4, pool_size=4)

    dm = make()
    for k in range(3):
        dm.pool(*_batch(k), torch.Generator().manual_seed(k))
    state = dm.state_dict()
    assert len(state["pools"]) == 1 and state["pool"] is state["pools"][0]
    resumed = make()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.pool.lr, dm.pool.lr) and resumed.pool.filled == 4
    # rank 1 of 2 takes its own pool
    other = {"filled": 4, "lr": dm.pool.lr + 100, "gt": dm.pool.gt + 100}
    rank1 = make()
    rank1.trainer = types.SimpleNamespace(global_rank=1, world_size=2)
    rank1.load_state_dict({"pool": state["pool"], "pools": [state["pool"], other]})
    assert torch.equal(rank1.pool.lr, other["lr"])
    # an older checkpoint (rank 0's pool only) on 2 ranks: rank 0's pool, and a warning that says so
    with pytest.warns(UserWarning, match=r"pools of rank 0 only .* but this run has 2 ranks: every rank resumes"):
        rank1.load_state_dict({"pool": state["pool"]})
    assert torch.equal(rank1.pool.lr, dm.pool.lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make().load_state_dict({"pool": state["pool"]})  # one process: rank 0's pool is its own, no warning


@pytest.mark.parametrize("batch,world,per_device", [(16, 1, 16), (16, 8, 2), (12, 4, 3)])
def test_global_batch_splits_over_devices(batch, world, per_device):
    from src.data.datamodule import per_device_batch

    assert per_device_batch(batch, world) == per_device
    assert per_device * world == batch


def test_a_batch_that_does_not_split_is_refused_before_training(tmp_path):
    from src.data.datamodule import per_device_batch
    from src.preflight import check_values

    with pytest.raises(ValueError, match=r"data.batch_size=16 is the global batch .* does not split over 6 devices .*"
                                         r"e.g. data.batch_size=18"):
        per_device_batch(16, 6)
    cfg = compose_train(["trainer=ddp_cpu", "data.batch_size=3"], tmp_path)
    with pytest.raises(ValueError, match=r"data.batch_size=3 .* over 2 devices .* data.batch_size=4$"):
        check_values(cfg)
    check_values(compose_train(["trainer=ddp_cpu", "data.batch_size=4"], tmp_path))
