"""SwinIR for classical SR (pixel-shuffle upsampler) with configurable dropout.

State-dict keys, buffers (``relative_position_index``, ``attn_mask``) and initialisation follow the official
SwinIR (``models/network_swinir.py``), so its published classical-SR weights load with ``strict=True``.
Left out: absolute position embedding, ``3conv`` residual connections, the other upsamplers and the
unused in-block dropouts (parameter-free, so no keys are lost).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from src.models.dropout import dropout_sites
from src.tiling import pad_to_multiple


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (official SwinIR uses timm's DropPath)."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep.div_(1.0 - rate)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) of 0 / -100 or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)
        if mask is None:
            q, k, v, bias = qkv[0], qkv[1], qkv[2], bias.unsqueeze(0)
        else:
            # Group windows per image so the per-window mask broadcasts over batch and heads.
            nw = mask.shape[0]
            q, k, v = (t.view(bw // nw, nw, self.num_heads, n, -1) for t in qkv)
            bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, each pre-norm with a residual add."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio, drop_path_rate=0.0):
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:
            # As official: a window covering the whole training patch is not shifted.
            window_size, shift_size = min(input_resolution), 0
        self.window_size, self.shift_size = window_size, shift_size
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self.calculate_mask(input_resolution) if shift_size > 0 else None)

    def calculate_mask(self, x_size) -> torch.Tensor:
        """Mask (nW, N, N) keeping attention inside the regions that the cyclic shift glued together."""
        h, w = x_size
        ws, ss = self.window_size, self.shift_size
        img = torch.zeros(1, h, w, 1)
        cuts = (slice(0, -ws), slice(-ws, -ss), slice(-ss, None))
        for i, hs in enumerate(cuts):
            for j, wsl in enumerate(cuts):
                img[:, hs, wsl, :] = i * 3 + j
        win = window_partition(img, ws).squeeze(-1)
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "attn_mask"
        if key in state_dict and self.attn_mask is not None:
            # The mask is derived from img_size; a checkpoint trained on other patches carries another shape.
            state_dict[key] = self.attn_mask
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        if self.shift_size == 0:
            mask = None
        elif tuple(x_size) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = self.calculate_mask(x_size).to(x.device)
        y = self.attn(window_partition(y, self.window_size), mask)
        y = window_reverse(y, self.window_size, h, w)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + drop_path(y.reshape(b, h * w, c), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating plain and shifted windows."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop_path_rates):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio, drop_path_rates[i])
            for i in range(depth)
        )

    def forward(self, x, x_size):
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, a 3x3 conv, a residual add; ``dropout`` on the conv output."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio, drop_path_rates,
                 dropout: nn.Module | None = None):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio,
                                         drop_path_rates)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.dropout = dropout if dropout is not None else nn.Identity()

    def forward(self, x, x_size):
        b, _, c = x.shape
        y = self.residual_group(x, x_size).transpose(1, 2).reshape(b, c, *x_size)
        return self.dropout(self.conv(y)).flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, H*W, C), layer-normed (patch size 1, as SwinIR for SR)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.flatten(2).transpose(1, 2))


class SwinIR(nn.Module):
    """SwinIR, classical SR variant (``upsampler='pixelshuffle'``, ``resi_connection='1conv'``).

    Args:
        img_size (int | tuple): Training patch size (LR); fixes the stored ``attn_mask``. Other input sizes
            work (the mask is recomputed; inputs are reflect-padded to a multiple of the window). Default: 64.
        in_chans (int): Input/output channels. Default: 3.
        embed_dim (int): Token dimension. Default: 180.
        depths (list[int]): Swin blocks per RSTB. Default: [6] * 6.
        num_heads (list[int]): Attention heads per RSTB. Default: [6] * 6.
        window_size (int): Attention window. Default: 8.
        mlp_ratio (float): MLP hidden size / embed_dim. Default: 2.
        scale (int): SR factor, 2, 3, 4 or 8. Default: 4.
        img_range (float): Pixel range the network works in. Default: 1.
        drop_path_rate (float): Stochastic depth, linearly increasing over blocks. The official default is 0.1;
            here 0 so that ``dropout_p=0`` is the only stochastic setting in training. Default: 0.
        dropout_position (str): See ``src.models.dropout``. A trunk block is one RSTB (6 by default, so only
            ``b4`` of the ``bN`` positions fits). ``last``: on the input of ``conv_last`` (64 channels after
            the upsampler, as the paper's supplementary); ``bN``: on the tokens after RSTB N (channel dropout
            zeroes a feature channel at every token); ``quarter``/``half``/``all``: inside the last ceil(n/4) /
            ceil(n/2) / all RSTBs, on the output of their conv before the residual add. Default: none.
        dropout_dim (str): ``channel`` or ``element``. Default: channel.
        dropout_p (float): Drop probability in [0, 1). Default: 0.

    The defaults are the paper's classical x4 model (SwinIR-M): 11,900,199 parameters.
    """

    def __init__(self, img_size=64, in_chans=3, embed_dim=180, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size=8, mlp_ratio=2.0, scale=4, img_range=1.0,
                 drop_path_rate=0.0, dropout_position="none", dropout_dim="channel", dropout_p=0.0):
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]  # Hydra passes ListConfig
        if scale not in (2, 3, 4, 8):
            raise ValueError(f"scale={scale!r} is not supported by SwinIR; allowed: 2, 3, 4, 8")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths={list(depths)} and num_heads={list(num_heads)} must have equal lengths")
        if any(embed_dim % h for h in num_heads):
            raise ValueError(f"embed_dim={embed_dim} must be divisible by every num_heads={list(num_heads)}")
        sites = dropout_sites(dropout_position, dropout_dim, dropout_p, len(depths),
                              f"SwinIR ({len(depths)} RSTB groups)")
        self.scale, self.img_range, self.window_size = scale, img_range, window_size
        self.pad_multiple = window_size  # attention windows must tile the input
        self.placement = sites.placement
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans
        # Not persistent: the official model keeps the mean out of its state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        num_feat = 64
        resolution = _pair(img_size)
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear, as official

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(embed_dim, resolution, depth, heads, window_size, mlp_ratio,
                                    rates[start:start + depth], sites.block(i)))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        ups = []
        for factor in [3] if scale == 3 else [2] * (scale.bit_length() - 1):
            ups += [nn.Conv2d(num_feat, factor * factor * num_feat, 3, 1, 1), nn.PixelShuffle(factor)]
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        self.dropout_after = sites.after(channel_axis=-1)  # on tokens (B, L, C)
        self.dropout_last = sites.last()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens, x_size)
            if i == self.placement.after_block:
                tokens = self.dropout_after(tokens)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size)  # windows must tile the input; reflect as the official test code
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.upsample(self.conv_before_upsample(x))
        if self.dropout_last is not None:
            x = self.dropout_last(x)
        x = self.conv_last(x) / self.img_range + self.mean
        return x[..., : h * self.scale, : w * self.scale]
