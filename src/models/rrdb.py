"""RRDBNet (ESRGAN / Real-ESRGAN generator, BasicSR layout) with configurable dropout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.models.dropout import dropout_sites
from src.models.srresnet import scaled_kaiming_
from src.tiling import pad_to_multiple


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; the branch is scaled by 0.2 before the skip add (as ESRGAN)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"conv{k}", nn.Conv2d(num_feat + (k - 1) * num_grow_ch, num_grow_ch, 3, 1, 1))
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        scaled_kaiming_([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block; ``dropout`` acts on the branch (three RDBs) before the 0.2 scale."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32, dropout: nn.Module | None = None):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.dropout = dropout if dropout is not None else nn.Identity()

    def forward(self, x):
        return self.dropout(self.rdb3(self.rdb2(self.rdb1(x)))) * 0.2 + x


class RRDBNet(nn.Module):
    """RRDBNet as in BasicSR (ESRGAN, extended to x1/x2 by pixel-unshuffling the input).

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        scale (int): 1, 2 or 4 (the trunk always upsamples x4; x2/x1 unshuffle the input first).
            x3 is not possible in this architecture. Default: 4.
        num_feat (int): Feature channels. Default: 64.
        num_block (int): RRDB blocks in the trunk (``body``). Default: 23.
        num_grow_ch (int): Growth channels of the dense blocks. Default: 32.
        dropout_position (str): See ``src.models.dropout``. ``last``: on the input of ``conv_last`` (after
            ``lrelu(conv_hr(.))``); ``bN``: after RRDB block N (``body[N-1]``), the block index as for
            SRResNet, so with 23 blocks ``b16`` sits at about 70% of the trunk depth, before ``conv_body``;
            ``quarter``/``half``/``all``: inside the branch of the last 6 / 12 / 23 RRDBs (ceil of n/4, n/2),
            on the output of the three RDBs before the 0.2 residual scale. Default: none.
        dropout_dim (str): ``channel`` or ``element``. Default: channel.
        dropout_p (float): Drop probability in [0, 1). Default: 0.

    At x4 with the defaults the network has 16,697,987 parameters.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32,
                 dropout_position="none", dropout_dim="channel", dropout_p=0.0):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"scale={scale!r} is not supported by RRDBNet; allowed: 1, 2, 4")
        sites = dropout_sites(dropout_position, dropout_dim, dropout_p, num_block,
                              f"RRDBNet (num_block={num_block})")
        self.scale = scale
        self.placement = sites.placement

        unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.unshuffle = unshuffle
        self.pad_multiple = unshuffle  # x2/x1 unshuffle the input: its sides must divide by 2/4
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch, sites.block(i)) for i in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.dropout_after = sites.after()
        self.dropout_last = sites.last()

    def forward(self, x):
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.unshuffle)  # odd sides at x2 are reflect-padded, then cropped from the output
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        trunk = feat
        for i, block in enumerate(self.body):
            trunk = block(trunk)
            if i == self.placement.after_block:
                trunk = self.dropout_after(trunk)
        feat = feat + self.conv_body(trunk)
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_hr(feat))
        if self.dropout_last is not None:
            feat = self.dropout_last(feat)
        return self.conv_last(feat)[..., : h * self.scale, : w * self.scale]
