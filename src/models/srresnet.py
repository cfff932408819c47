"""MSRResNet (BasicSR's modified SRResNet) with configurable dropout; state-dict keys as BasicSR."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.models.dropout import dropout_sites


@torch.no_grad()
def scaled_kaiming_(modules: list[nn.Module], scale: float = 0.1) -> None:
    """BasicSR's ``default_init_weights``: Kaiming-normal convs scaled down, zero bias.

    The 0.1 scale keeps each residual branch near zero at the start so deep trunks train stably.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.zero_()


class ResidualBlockNoBN(nn.Module):
    """Conv-ReLU-Conv residual block without BN; ``dropout`` sits on the branch output before the add.

    Putting the "dropped residual block" dropout (paper Fig. 3c) after ``conv2`` drops what the block adds
    while the identity path carries the features through untouched.
    """

    def __init__(self, num_feat: int = 64, dropout: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = dropout if dropout is not None else nn.Identity()
        scaled_kaiming_([self.conv1, self.conv2], 0.1)

    def forward(self, x):
        return x + self.dropout(self.conv2(self.relu(self.conv1(x))))


class MSRResNet(nn.Module):
    """Modified SRResNet (BasicSR ``MSRResNet``): residual blocks without BN, pixel-shuffle upsampling.

    Args:
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int): Feature channels. Default: 64.
        num_block (int): Residual blocks in the trunk (``body``). Default: 16.
        scale (int): SR factor, 2, 3 or 4. Default: 4.
        dropout_position (str): See ``src.models.dropout``. ``last``: on the input of ``conv_last``, i.e.
            after ``lrelu(conv_hr(.))``; ``bN``: after ``body[N-1]``; ``quarter``/``half``/``all``: inside the
            residual branch (after ``conv2``) of the last ceil(n/4) / ceil(n/2) / all blocks. Default: none.
        dropout_dim (str): ``channel`` or ``element``. Default: channel.
        dropout_p (float): Drop probability in [0, 1). Default: 0.

    At x4 with the defaults the network has 1,517,571 parameters.
    """

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, scale=4,
                 dropout_position="none", dropout_dim="channel", dropout_p=0.0):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale={scale!r} is not supported by MSRResNet; allowed: 2, 3, 4")
        sites = dropout_sites(dropout_position, dropout_dim, dropout_p, num_block,
                              f"MSRResNet (num_block={num_block})")
        self.scale = scale
        self.placement = sites.placement

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        # body stays a Sequential of blocks with BasicSR's indices so checkpoints load with strict=True.
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, sites.block(i)) for i in range(num_block)))
        if scale == 4:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * scale * scale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(scale)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)
        # Parameter-free, so neither adds state-dict keys.
        self.dropout_after = sites.after()
        self.dropout_last = sites.last()

        scaled_kaiming_([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if scale == 4:
            scaled_kaiming_([self.upconv2], 0.1)

    def forward(self, x):
        feat = self.lrelu(self.conv_first(x))
        for i, block in enumerate(self.body):
            feat = block(feat)
            if i == self.placement.after_block:
                feat = self.dropout_after(feat)
        out = self.lrelu(self.pixel_shuffle(self.upconv1(feat)))
        if self.scale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.lrelu(self.conv_hr(out))
        if self.dropout_last is not None:
            out = self.dropout_last(out)
        out = self.conv_last(out)
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
