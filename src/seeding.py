"""Named random streams: every random draw of a run is a pure function of (seed, stream, step, rank, micro-batch).

A resumed run, a DDP rank and a benchmark must draw exactly what an uninterrupted single-process run draws. That
holds when no draw depends on how many draws came before, only on *where* it happens. Each kind of randomness gets
its own named stream, hashed together with its position, so two streams can never share a seed (an unnamed
integer stream id once made the dropout masks equal the degradations of micro-batch 1):

    stream        drawn where                                              position
    crops         HR crop, flip and rotation of training item i            index = i (a pure function of the item)
    degradation   training LR synthesis, on the batch's device             step, rank, micro-batch
    dropout       dropout masks (the global torch RNG, reseeded per batch)  step, rank, micro-batch
    pool          the training-pair pool's shuffle                         step, rank, micro-batch
    patch         the LR/HR patch cut from a degraded larger crop          step, rank, micro-batch
                  (data.degrade_size, the official crop-degrade-crop)
    validation    noise of validation image i                              index = i
    test_noise    noise of a test image under one test degradation         key = words of (image content, name)

Examples:
    >>> g = generator(0, "degradation", step=5, rank=0, micro=1)
    >>> stream_seed(0, "dropout", step=5, micro=1) != stream_seed(0, "degradation", step=5, micro=1)
    True
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

STREAMS = ("crops", "degradation", "dropout", "pool", "validation", "test_noise", "patch")


def _check(seed: int, stream: str, *parts: int) -> None:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams: {', '.join(STREAMS)}")
    if int(seed) < 0 or any(int(p) < 0 for p in parts):
        raise ValueError(f"seed and stream positions must be non-negative integers, got seed={seed}, "
                         f"positions={list(parts)} (stream {stream!r})")


def stream_seed(seed: int, stream: str, step: int = 0, rank: int = 0, micro: int = 0, *, index: int = 0,
                key: Sequence[int] = ()) -> int:
    """A 63-bit seed for one draw of `stream` at (step, rank, micro-batch, index, key).

    Args:
        seed: the run's seed (`seed=`).
        stream: one of `STREAMS`.
        step: the optimizer step (Lightning's `global_step`).
        rank: the process's global rank under DDP (0 otherwise).
        micro: the micro-batch within the step (0 .. trainer.accumulate_grad_batches - 1).
        index: an item number for streams that draw per item (crops, validation).
        key: further integers (e.g. words of a content hash).

    Hashing the whole tuple (instead of `seed + step` style sums) keeps every position's seed distinct.
    """
    _check(seed, stream, step, rank, micro, index)
    text = "/".join([stream, *map(str, (int(seed), int(step), int(rank), int(micro), int(index))), *map(str, key)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, stream: str, step: int = 0, rank: int = 0, micro: int = 0, *, index: int = 0,
              device: str | torch.device = "cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded for one draw of `stream` (see `stream_seed`)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, step, rank, micro, index=index))


def numpy_rng(seed: int, stream: str, step: int = 0, rank: int = 0, micro: int = 0, *, index: int = 0,
              key: Sequence[int] = ()) -> np.random.Generator:
    """A NumPy generator for one draw of `stream` (see `stream_seed`).

    `test_noise` keeps the entropy layout it was released with, `[seed, *key]` (the key holds 4 words of a content
    hash, so no other stream can meet it): the test LR images, their on-disk caches and every committed result stay
    valid.
    """
    if stream == "test_noise":
        _check(seed, stream, *key)
        return np.random.default_rng([int(seed), *map(int, key)])
    return np.random.default_rng(stream_seed(seed, stream, step, rank, micro, index=index, key=key))


def seed_global(seed: int, stream: str, step: int = 0, rank: int = 0, micro: int = 0) -> None:
    """Reseed torch's global RNG (all devices) for draws that cannot take a generator, e.g. dropout masks."""
    torch.manual_seed(stream_seed(seed, stream, step, rank, micro))


def micro_batch(batches_before: int, accumulate: int) -> int:
    """Which micro-batch of its optimizer step a batch is, given how many batches came before it in the run.

    Lightning steps the optimizer after every `accumulate` batches (its own count, restored on resume), so this is
    the same number in the datamodule, the module and a resumed run.
    """
    return int(batches_before) % max(int(accumulate), 1)
