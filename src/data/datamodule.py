"""LightningDataModule: HR crops on the host, degradations on the device after transfer."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from src import seeding
from src.data.datasets import HRPatches, PairedImages, StepSampler, decoded, default_data_root, resolve_set
from src.data.pipelines import paired_random_crop
from src.data.pool import PairPool
from src.data.subimages import check_params as check_subimages
from src.data.subimages import cut_all


def _check_val_degradations(names: list[str]) -> None:
    from src.data.testsets import ALL_TEST_DEGRADATIONS

    bad = [n for n in names if n not in ALL_TEST_DEGRADATIONS]
    if bad or not names:
        raise ValueError(f"data.val_degradations={names}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}"
                         f"; allowed: {', '.join(ALL_TEST_DEGRADATIONS)}")


def per_device_batch(batch_size: int, world_size: int) -> int:
    """The share of the global batch `data.batch_size` that each of `world_size` processes trains on per step.

    The batch is global so that the paper's batch 16 stays 16 however many GPUs run it (the lr and the step count
    are tuned to it); a size that does not split evenly is refused rather than rounded."""
    if world_size < 1 or batch_size % world_size:
        up = -(-batch_size // world_size) * world_size
        raise ValueError(f"data.batch_size={batch_size} is the global batch (LR patches per step over all devices) and "
                         f"does not split over {world_size} devices (trainer.devices x trainer.num_nodes): use a "
                         f"multiple of {world_size}, e.g. data.batch_size={up}")
    return batch_size // world_size


class SRDataModule(pl.LightningDataModule):
    """Training crops degraded on the batch's device; fixed validation pairs.

    Args:
        degradation: callable `(hr, generator) -> (lr, gt)` from conf/degradation (run after transfer, so on
            the GPU when there is one).
        root: data root holding `<Set>/HR/*`; None means `default_data_root()` (SR_DATA_ROOT).
        train_sets / val_sets / test_sets: set names under the root, or the bundled `skimage` /
            `skimage_holdout` photos.
        batch_size, lr_patch_size: the global batch of LR patches of this size (HR = lr_patch_size * scale), split
            evenly over the devices: 16 on 4 GPUs is 4 per GPU (`per_device_batch`).
        total_steps: the run's length (trainer.max_steps); the sampler serves exactly that many batches.
        val_degradations: test degradations applied to the validation images (on the host, noise from the
            `validation` stream); every (val set, degradation) pair is one validation loader, named `<set>/<name>`.
        val_crop: HR centre crop of validation images, keeping validation cheap on the CPU; None = whole image.
        cache_dir: where decoded images are kept as .npy; None decodes PNGs on every access.
        pool_size: a pool of this many degraded pairs mixed across batches (0 = none; the official recipe: 16).
        augment: flips/rotations of the training crops: `all8` (the paper's text), `hflip` (the official recipe),
            `none`.
        degrade_size: crop-degrade-crop (Real-ESRGAN's, the official recipe: 400): the HR is cut to this size
            (padded by reflection when smaller), the whole crop is degraded, then an `lr_patch_size` LR patch and
            its HR are cut from the degraded pair (the `patch` stream). None or 0 degrades the HR patch itself.
        subimages: `{size, step, thresh_size}`: train on the training images cut into overlapping sub-images
            (BasicSR's extract_subimages; the official recipe: 480, 240, 0), cut once into `cache_dir`. None = the
            whole images.
    """

    def __init__(self, degradation: Callable, root: str | None = None, train_sets: Sequence[str] = ("skimage",),
                 val_sets: Sequence[str] = ("skimage_holdout",), test_sets: Sequence[str] = ("skimage_holdout",),
                 batch_size: int = 16, lr_patch_size: int = 32, scale: int = 4, total_steps: int = 1000,
                 num_workers: int = 0, seed: int = 0, val_degradations: Sequence[str] | str = ("clean",),
                 val_crop: int | None = 256,
                 cache_dir: str | None = None, augment: str = "all8", pool_size: int = 0,
                 degrade_size: int | None = None, subimages: dict | None = None):
        super().__init__()
        self.degradation = degradation
        self.root = Path(root) if root else default_data_root()
        self.train_sets, self.val_sets, self.test_sets = list(train_sets), list(val_sets), list(test_sets)
        self.batch_size, self.lr_patch_size, self.scale = batch_size, lr_patch_size, scale
        self.total_steps, self.num_workers, self.seed = total_steps, num_workers, seed
        self.val_degradations = [val_degradations] if isinstance(val_degradations, str) else list(val_degradations)
        self.val_crop = val_crop
        _check_val_degradations(self.val_degradations)
        self.cache_dir, self.augment = cache_dir, augment
        self.pool = PairPool(pool_size)
        self.degrade_size = int(degrade_size or 0)
        self.subimages = dict(subimages) if subimages is not None else None
        check_subimages(self.subimages)
        if self.degrade_size and self.degrade_size < lr_patch_size * scale:
            raise ValueError(f"data.degrade_size={degrade_size}: must be 0/null (off) or at least the HR patch "
                             f"data.lr_patch_size x scale = {lr_patch_size * scale}")
        # Resolve every set now: a missing folder must fail before any training starts.
        self.train_paths = [p for s in self.train_sets for p in resolve_set(s, self.root)]
        self.val_paths = {s: resolve_set(s, self.root) for s in self.val_sets}
        self.test_paths = {s: resolve_set(s, self.root) for s in self.test_sets}

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and not hasattr(self, "train_data"):
            self.device_batch = per_device_batch(self.batch_size, self._world_size())
            if self.trainer is not None and self.trainer.is_global_zero:
                print(f"[train] batch: {self.batch_size} LR patches per step = {self._world_size()} device(s) x "
                      f"{self.device_batch}", flush=True)
            items = cut_all(self.train_paths, self.subimages, self.cache_dir)
            self.train_data = HRPatches(items, self.degrade_size or self.lr_patch_size * self.scale,
                                        length=self._total_batches() * self.batch_size,
                                        seed=self.seed, cache_dir=self.cache_dir, augment=self.augment,
                                        pad=bool(self.degrade_size))
        if stage in ("fit", "validate", None) and not hasattr(self, "val_data"):
            from src.data.testsets import degrade_test_image, modcrop

            self.val_data = {}
            for name, paths in self.val_paths.items():
                # np.array copies: a whole image (data.val_crop=null) would otherwise stay a read-only memory map
                hrs = [np.array(modcrop(self._centre_crop(decoded(p, self.cache_dir)), self.scale)) for p in paths]
                for degradation in self.val_degradations:
                    pairs = []
                    for i, hr in enumerate(hrs):
                        seed = seeding.stream_seed(self.seed, "validation", index=i) % 2**31
                        pairs.append((degrade_test_image(hr, degradation, self.scale, seed=seed), hr))
                    self.val_data[f"{name}/{degradation}"] = PairedImages(pairs)

    def _centre_crop(self, img: np.ndarray) -> np.ndarray:
        if not self.val_crop:
            return img
        h, w = img.shape[:2]
        c = min(self.val_crop, h, w)
        return img[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _accumulate(self) -> int:
        return self.trainer.accumulate_grad_batches if self.trainer is not None else 1

    def _total_batches(self) -> int:
        # With gradient accumulation one optimizer step consumes several batches.
        return self.total_steps * self._accumulate()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Starting the sampler at the restored global step is what makes a resumed run see the same batches.
        # Batch s of rank r holds items (s * world + r) * device_batch..: together the ranks read exactly the items
        # one process would read with the whole global batch.
        sampler = StepSampler(self._total_batches(), self.device_batch,
                              start_step=trainer.global_step * self._accumulate() if trainer else 0,
                              rank=trainer.global_rank if trainer else 0, world_size=self._world_size())
        return DataLoader(self.train_data, batch_size=self.device_batch, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        # Named loaders: the module logs `val/<set>/<degradation>/psnr` for each, and their mean as `val/psnr`.
        return {name: DataLoader(data, batch_size=1, num_workers=0) for name, data in self.val_data.items()}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            hr = batch.float().div_(255.0)
            # Called before Lightning counts this batch as ready: `ready` is the number of batches before it.
            before = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
            micro = seeding.micro_batch(before, self._accumulate())
            lr, gt = self.degrade_batch(hr, self.trainer.global_step, self.trainer.global_rank, micro)
            if self.pool.size:
                lr, gt = self.pool(lr, gt, seeding.generator(self.seed, "pool", self.trainer.global_step,
                                                             self.trainer.global_rank, micro, device=hr.device))
            return lr.contiguous(), gt.contiguous()
        lr, hr = batch
        return lr.float().div_(255.0), hr.float().div_(255.0)

    def degrade_batch(self, hr: torch.Tensor, step: int, rank: int = 0, micro: int = 0):
        """(lr, gt) of a float HR batch at (step, rank, micro-batch): the degradation, then with `degrade_size` the
        training patch cut from the degraded pair. Everything but the pool; `src.bench` times this."""
        generator = seeding.generator(self.seed, "degradation", step, rank, micro, device=hr.device)
        with torch.no_grad():
            lr, gt = self.degradation(hr, generator)
            if self.degrade_size:
                lr, gt = paired_random_crop(lr, gt, self.lr_patch_size, self.scale,
                                            seeding.generator(self.seed, "patch", step, rank, micro, device=hr.device))
        return lr, gt

    def state_dict(self) -> dict:
        """Lightning stores this in the checkpoint: the pool's pairs are training state. Under DDP every rank holds
        its own pool and only rank 0 writes the checkpoint, so the pools are gathered (Lightning calls this on
        every rank, as the checkpoint is saved collectively): `pools[r]` is rank r's; `pool` is rank 0's."""
        if not self.pool.size:
            return {}
        mine = self.pool.state_dict()
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1 or mine["lr"] is None:  # unfilled: the same on every rank
            return {"pool": mine, "pools": [mine]}
        lr, gt = trainer.strategy.all_gather(mine["lr"]), trainer.strategy.all_gather(mine["gt"])
        pools = [{"filled": mine["filled"], "lr": lr[r], "gt": gt[r]} for r in range(trainer.world_size)]
        return {"pool": pools[0], "pools": pools}

    def load_state_dict(self, state: dict) -> None:
        if not self.pool.size or "pool" not in state:
            return
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        pools = state.get("pools")
        if pools is not None and len(pools) == world:
            mine = pools[rank]
        else:
            if world > 1:
                held = f"{len(pools)} rank(s)" if pools else "rank 0 only (an older checkpoint)"
                warnings.warn(f"the checkpoint holds the training-pair pools of {held} but this run has {world} "
                              f"ranks: every rank resumes with rank 0's pool, so the resumed batches differ from an "
                              f"uninterrupted run's")
            mine = state["pool"]
        clone = (lambda t: t.clone() if t is not None else None)  # noqa: E731 (a view of the gathered tensor)
        self.pool.load_state_dict({"filled": mine["filled"], "lr": clone(mine["lr"]), "gt": clone(mine["gt"])})
