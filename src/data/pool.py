"""A pool of degraded training pairs that mixes them across batches (Real-ESRGAN's "training pair pool")."""
from __future__ import annotations

import torch


class PairPool:
    """Holds `size` (LR, GT) pairs; once full, each batch is swapped for a random draw from the pool.

    Synthesising degradations batch by batch limits how varied one batch can be (some choices are made per batch);
    the pool (BasicSR's `_dequeue_and_enqueue`, size 16 in the official recipe) mixes pairs of different batches.
    While it fills, batches pass through unchanged and are copied in. When full: the pool is shuffled with
    `generator` (the `pool` stream), the first B pairs are returned and the incoming batch takes their places.

    Args:
        size: number of pairs held; a multiple of the batch size (0 = no pool, batches pass through).

    Shape:
        lr: (B, C, h, w), gt: (B, C, H, W); the same shapes come out.
    """

    def __init__(self, size: int):
        self.size = int(size)
        if self.size < 0:
            raise ValueError(f"data.pool_size={size}: must be 0 (off) or a positive multiple of data.batch_size")
        self.lr: torch.Tensor | None = None
        self.gt: torch.Tensor | None = None
        self.filled = 0

    def __call__(self, lr: torch.Tensor, gt: torch.Tensor, generator: torch.Generator):
        if self.size == 0:
            return lr, gt
        b = lr.shape[0]
        if self.size % b:
            raise ValueError(f"data.pool_size={self.size} must be a multiple of the batch size {b}")
        if self.lr is None:
            self.lr = lr.new_zeros((self.size, *lr.shape[1:]))
            self.gt = gt.new_zeros((self.size, *gt.shape[1:]))
        elif self.lr.device != lr.device:  # restored from a checkpoint loaded on the CPU
            self.lr, self.gt = self.lr.to(lr.device), self.gt.to(gt.device)
        if self.filled < self.size:
            self.lr[self.filled:self.filled + b] = lr
            self.gt[self.filled:self.filled + b] = gt
            self.filled += b
            return lr, gt
        order = torch.randperm(self.size, generator=generator, device=generator.device).to(self.lr.device)
        self.lr, self.gt = self.lr[order], self.gt[order]
        out = self.lr[:b].clone(), self.gt[:b].clone()
        self.lr[:b], self.gt[:b] = lr, gt
        return out

    def state_dict(self) -> dict:
        # Part of the training state: a resumed run must continue with the same pool.
        return {"filled": self.filled, "lr": self.lr, "gt": self.gt}

    def load_state_dict(self, state: dict) -> None:
        self.filled, self.lr, self.gt = int(state["filled"]), state["lr"], state["gt"]
