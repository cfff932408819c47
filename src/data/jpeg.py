"""A real baseline JPEG codec in torch (encode + decode, 4:2:0), batched with one quality per sample, on any device.

It does what libjpeg(-turbo) does with its defaults (what OpenCV and PIL write), in integer steps where libjpeg
rounds: 8-bit input; JFIF RGB -> YCbCr rounded to integers; 2x2 chroma averaging with libjpeg's alternating
rounding bias; 8x8 DCT; quantisation with the IJG tables scaled by the integer quality and *hard* rounding (half
away from zero); dequantisation, inverse DCT, rounding and clamping to 0..255; libjpeg's "fancy" (triangle)
chroma upsampling with its rounding; YCbCr -> RGB with libjpeg's fixed-point rounding. The DCTs are exact
floating-point transforms where libjpeg uses 13-bit fixed-point ones, so an output pixel can differ from
libjpeg's by a grey level now and then (tests/test_jpeg.py bounds the PSNR difference to OpenCV's encoder).
Not differentiable (the rounding has zero gradient); degradations are applied under no_grad.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU T.81 Annex K tables (the IJG defaults), natural (row-major) order.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's jpeg_set_quality: (B,) integer qualities in 1..100 -> luma and chroma tables, (B, 8, 8) each."""
    q = quality.to(torch.float64).round().clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q).view(-1, 1, 1)

    def table(base):
        t = torch.tensor(base, dtype=torch.float64, device=quality.device).view(1, 8, 8)
        return torch.floor((t * scale + 50) / 100).clamp(1, 255)  # force_baseline: at most 255

    return table(_LUMA), table(_CHROMA)


def _dct_matrix(device, dtype) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)  # orthonormal: the JPEG FDCT is m @ block @ m.T


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    b, h, w = x.shape
    return x.view(b, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(x: torch.Tensor) -> torch.Tensor:
    b, nh, nw = x.shape[:3]
    return x.transpose(2, 3).reshape(b, nh * 8, nw * 8)


def _codec_plane(plane: torch.Tensor, table: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Integer samples 0..255 (B, H, W), H and W multiples of 8 -> the decoded integer samples."""
    blocks = _blocks(plane - 128)
    coef = m @ blocks @ m.T
    t = table[:, None, None].to(coef.dtype)
    rec = m.T @ (_round_half_away(coef / t) * t) @ m
    return (_unblocks(rec) + 128).round().clamp(0, 255)  # libjpeg's range limit after the IDCT


def _downsample_h2v2(c: torch.Tensor) -> torch.Tensor:
    # jcsample.c h2v2_downsample: (sum of 4 + bias) >> 2, bias 1, 2, 1, 2, ... along each output row.
    b, h, w = c.shape
    s = c.view(b, h // 2, 2, w // 2, 2).sum((2, 4))
    bias = torch.tensor([1.0, 2.0], dtype=c.dtype, device=c.device).repeat(w // 4 + 1)[: w // 2]
    return torch.floor((s + bias) / 4)


def _upsample_h2v2_fancy(c: torch.Tensor) -> torch.Tensor:
    # jdsample.c h2v2_fancy_upsample: vertically 3 * nearer row + farther row (edge rows repeated), then
    # horizontally (3 * nearer + farther + 8) >> 4 / (... + 7) >> 4; the outermost columns use 4 * own + 8 / + 7.
    b, h, w = c.shape
    padded = F.pad(c[:, None], (0, 0, 1, 1), mode="replicate")[:, 0]
    up, down = 3 * c + padded[:, :-2], 3 * c + padded[:, 2:]
    rows = torch.stack([up, down], dim=2).reshape(b, 2 * h, w)           # column sums of each output row
    left = torch.cat([rows[..., :1], rows[..., :-1]], dim=-1)            # the neighbour column (edge: itself)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], dim=-1)
    even = torch.floor((3 * rows + left + 8) / 16)
    odd = torch.floor((3 * rows + right + 7) / 16)
    return torch.stack([even, odd], dim=-1).reshape(b, 2 * h, 2 * w)


def jpeg_real(x: torch.Tensor, quality) -> torch.Tensor:
    """Encode and decode each sample of a (B, 3, H, W) batch in [0, 1] as baseline JPEG with its own quality
    (B,) (rounded to an integer in 1..100, as libjpeg takes it); returns 8-bit values in [0, 1]."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg_real: expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    q = torch.as_tensor(quality, device=x.device).reshape(-1)
    if q.numel() == 1:
        q = q.expand(x.shape[0])
    if q.numel() != x.shape[0]:
        raise ValueError(f"jpeg_real: got {q.numel()} qualities for a batch of {x.shape[0]}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, _, h, w = x.shape
    rgb = torch.clamp((x.to(dtype) * 255).round(), 0, 255)  # what an 8-bit image file would hold
    # libjpeg pads a partial MCU (16 x 16 with 4:2:0) by repeating the last column and row.
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    r, g, bl = rgb.unbind(1)
    y = torch.floor(0.299 * r + 0.587 * g + 0.114 * bl + 0.5)
    cb = torch.floor(-0.168735892 * r - 0.331264108 * g + 0.5 * bl + 128 + 0.5 - 1e-6)
    cr = torch.floor(0.5 * r - 0.418687589 * g - 0.081312411 * bl + 128 + 0.5 - 1e-6)
    luma_t, chroma_t = quant_tables(q)
    m = _dct_matrix(x.device, dtype)
    y = _codec_plane(y, luma_t, m)
    # The decoder upsamples only the chroma samples that cover the image (ceil(h/2) x ceil(w/2)), repeating their
    # edge, not the padding the encoder coded.
    ch, cw = (h + 1) // 2, (w + 1) // 2
    cb = _upsample_h2v2_fancy(_codec_plane(_pad8(_downsample_h2v2(cb)), chroma_t, m)[:, :ch, :cw])
    cr = _upsample_h2v2_fancy(_codec_plane(_pad8(_downsample_h2v2(cr)), chroma_t, m)[:, :ch, :cw])
    y, cb, cr = y[:, :h, :w], cb[:, :h, :w] - 128, cr[:, :h, :w] - 128
    out = torch.stack([y + torch.floor(1.402 * cr + 0.5),
                       y + torch.floor(-0.344136286 * cb - 0.714136286 * cr + 0.5),
                       y + torch.floor(1.772 * cb + 0.5)], dim=1).clamp(0, 255)
    return (out / 255).to(x.dtype)


def _pad8(c: torch.Tensor) -> torch.Tensor:
    ph, pw = -c.shape[1] % 8, -c.shape[2] % 8
    return F.pad(c[:, None], (0, pw, 0, ph), mode="replicate")[:, 0] if ph or pw else c
