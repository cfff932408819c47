"""Dropout placement shared by every backbone: validation, the dropout module and the block mapping.

A placement is configuration, not a class per variant. Positions (paper Sec. 4.1, Fig. 3):

- ``none``: no dropout.
- ``last``: on the input of ``conv_last`` (the conv from features to RGB), the paper's ``last-conv``.
- ``b4``/``b8``/``b12``/``b16``: after trunk block N (1-based), on the trunk features. The number is the
  block's index, as in the paper, so a backbone with fewer than N trunk blocks rejects it.
- ``quarter``/``half``/``all``: "dropped residual blocks" (Fig. 3b/c): a dropout inside the residual branch
  of the last ``ceil(n/4)``, the last ``ceil(n/2)`` or all ``n`` trunk blocks. Each backbone documents
  where in the branch it sits; the identity path is never dropped.

Dimensions: ``channel`` zeroes whole feature maps per sample (Dropout2d semantics), ``element`` zeroes single
activations (``nn.Dropout``); kept values are scaled by ``1/(1-p)`` in both, so eval needs no rescaling.
The modules hold no parameters or buffers, so state-dict keys stay those of BasicSR / official SwinIR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import nn
from torch.nn import functional as F

POSITIONS = ("none", "last", "b4", "b8", "b12", "b16", "quarter", "half", "all")
DIMS = ("channel", "element")
AFTER_BLOCK = {"b4": 4, "b8": 8, "b12": 12, "b16": 16}
LAST_FRACTION = {"quarter": 0.25, "half": 0.5, "all": 1.0}


def validate_dropout(position: str, dim: str, p: float) -> None:
    """Raise ``ValueError`` naming the config key, the bad value and what is allowed."""
    if position not in POSITIONS:
        raise ValueError(f"dropout.position={position!r} is not allowed; allowed: {', '.join(POSITIONS)}")
    if dim not in DIMS:
        raise ValueError(f"dropout.dim={dim!r} is not allowed; allowed: {', '.join(DIMS)}")
    # bool is a Real; p=True is a typo, not a probability.
    if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"dropout.p={p!r} is not allowed; allowed: a number in [0, 1)")


@dataclass(frozen=True)
class Placement:
    """Where a backbone puts its dropout modules; block indices are 0-based into the trunk."""

    last: bool = False
    after_block: int | None = None
    in_blocks: frozenset[int] = field(default_factory=frozenset)


def placement(position: str, num_blocks: int, backbone: str = "backbone") -> Placement:
    """Map a position to trunk block indices; reject positions the trunk cannot honour.

    Examples:
        >>> placement("b8", 16).after_block
        7
        >>> sorted(placement("quarter", 23).in_blocks)
        [17, 18, 19, 20, 21, 22]
    """
    if position not in POSITIONS:
        raise ValueError(f"dropout.position={position!r} is not allowed; allowed: {', '.join(POSITIONS)}")
    if position == "last":
        return Placement(last=True)
    if position in AFTER_BLOCK:
        n = AFTER_BLOCK[position]
        if n > num_blocks:
            raise ValueError(
                f"dropout.position={position!r} needs at least {n} trunk blocks but this {backbone} has "
                f"{num_blocks}; allowed here: {', '.join(allowed_positions(num_blocks))}"
            )
        return Placement(after_block=n - 1)
    if position in LAST_FRACTION:
        k = math.ceil(num_blocks * LAST_FRACTION[position])
        return Placement(in_blocks=frozenset(range(num_blocks - k, num_blocks)))
    return Placement()


def is_baseline(position: str, p) -> bool:
    """Whether a setting is the network without dropout (position ``none`` or p = 0): one row of the paper's
    tables, whatever p a sweep set beside ``none``."""
    return position == "none" or float(p) == 0


@dataclass(frozen=True)
class DropoutSites:
    """The dropout modules of one backbone: ``block(i)`` inside trunk block i, ``after()`` on the trunk features
    after block ``placement.after_block``, ``last()`` on the input of ``conv_last``; None where the placement puts
    none (so a backbone adds no module, and no state-dict key, for a site it does not use)."""

    placement: Placement
    dim: str
    p: float

    def block(self, i: int) -> nn.Module | None:
        return FeatureDropout(self.p, self.dim) if i in self.placement.in_blocks else None

    def after(self, channel_axis: int = 1) -> nn.Module | None:
        return FeatureDropout(self.p, self.dim, channel_axis) if self.placement.after_block is not None else None

    def last(self) -> nn.Module | None:
        return FeatureDropout(self.p, self.dim) if self.placement.last else None


def dropout_sites(position: str, dim: str, p: float, num_blocks: int, backbone: str = "backbone") -> DropoutSites:
    """Validate a backbone's dropout arguments (once, before it builds anything) and place them on its trunk of
    ``num_blocks`` blocks; ``backbone`` names it in the error when a position needs more blocks.

    Examples:
        >>> sites = dropout_sites("half", "channel", 0.5, 4)
        >>> [sites.block(i) is not None for i in range(4)], sites.last()
        ([False, False, True, True], None)
    """
    validate_dropout(position, dim, p)
    return DropoutSites(placement(position, num_blocks, backbone), dim, float(p))


def allowed_positions(num_blocks: int) -> tuple[str, ...]:
    """Positions a trunk of ``num_blocks`` blocks can honour."""
    return tuple(p for p in POSITIONS if AFTER_BLOCK.get(p, 0) <= num_blocks)


class FeatureDropout(nn.Module):
    """Dropout of whole channels or of single elements, active only in training mode.

    Args:
        p (float): Probability of zeroing. Default: 0.
        dim (str): ``channel`` or ``element``. Default: ``channel``.
        channel_axis (int): Axis of the channels: 1 for (B, C, H, W), -1 for tokens (B, L, C). Default: 1.

    Shape:
        Input and output alike; with ``channel`` the mask has the shape of the input with every axis
        but batch and channel set to 1.
    """

    def __init__(self, p: float = 0.0, dim: str = "channel", channel_axis: int = 1):
        super().__init__()
        validate_dropout("none", dim, p)
        self.p = float(p)
        self.dim = dim
        self.channel_axis = channel_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.dim == "element":
            return F.dropout(x, self.p, training=True)
        shape = [1] * x.ndim
        shape[0] = x.shape[0]
        shape[self.channel_axis] = x.shape[self.channel_axis]
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}, channel_axis={self.channel_axis}"
