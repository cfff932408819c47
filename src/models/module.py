"""The LightningModule: L1 loss, Adam + cosine schedule, validation PSNR-Y, per-step seeding for exact resume."""
from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio

from src import seeding
from src.models.loading import build_backbone


def y_channel(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma on the [0, 1] scale, as MATLAB's rgb2ycbcr (16..235 range)."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + 16.0) / 255.0


def panel_strip(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, crop: int) -> torch.Tensor:
    """LR (nearest-upsampled) | SR | HR side by side: a centre crop of `crop` HR pixels, (3, crop, 3*crop)."""
    scale = hr.shape[-1] // lr.shape[-1]
    h, w = hr.shape[-2:]
    c = min(crop, h, w) // scale * scale
    top, left = (h - c) // 2 // scale * scale, (w - c) // 2 // scale * scale
    lr_up = F.interpolate(lr[None, :, top // scale:(top + c) // scale, left // scale:(left + c) // scale],
                          scale_factor=scale, mode="nearest")[0]
    return torch.cat([lr_up, sr[:, top:top + c, left:left + c], hr[:, top:top + c, left:left + c]], dim=-1).clamp(0, 1)


class NonFiniteLossError(RuntimeError):
    pass


class SRModule(pl.LightningModule):
    """Trains one backbone. All arguments are plain dicts so checkpoints load with `weights_only=True`.

    Args:
        backbone: backbone config with `_target_`: architecture arguments only (see conf/backbone).
        optimizer: optimizer config with `_target_` and `_partial_: true`.
        scheduler: LR scheduler config with `_target_` and `_partial_: true`, stepped every iteration; or None.
        scale: SR factor, passed to the backbone and used for the border cropped from validation PSNR.
        seed: seeds the per-step global RNG (dropout masks) so a resumed run draws the same masks.
        dropout: the dropout node `{position, dim, p}` passed to the backbone; None = no dropout.
    """

    def __init__(self, backbone: Mapping[str, Any], optimizer: Mapping[str, Any],
                 scheduler: Mapping[str, Any] | None = None, scale: int = 4, seed: int = 0,
                 panel_images: int = 3, panel_crop: int = 96, dropout: Mapping[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_backbone(backbone, scale=scale, dropout=dropout)
        self.val_psnr = MeanMetric()
        self._panel: list[torch.Tensor] = []

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout masks come from the global RNG; reseeding it from (seed, step, rank, micro-batch) makes them a
        # function of where the batch sits, so a resumed run matches an uninterrupted one bit for bit, and the
        # micro-batches of one accumulated step draw different masks.
        micro = seeding.micro_batch(batch_idx, self.trainer.accumulate_grad_batches)
        seeding.seed_global(self.hparams.seed, "dropout", self.global_step, self.global_rank, micro)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        lr, hr = batch
        loss = F.l1_loss(self.net(lr), hr)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.global_step}: training stopped; the last good checkpoint "
                f"is kept (lower module.optimizer.lr, check the data, or disable bf16)")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        lr, hr = batch
        sr = (self.net(lr).clamp(0, 1) * 255).round() / 255  # scored as the saved 8-bit image would be
        b = self.hparams.scale
        sr_y, hr_y = y_channel(sr)[..., b:-b, b:-b], y_channel(hr)[..., b:-b, b:-b]
        self.val_psnr.update(peak_signal_noise_ratio(sr_y, hr_y, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        # Panels only where a logger can show images (W&B), not for CSV-only runs.
        if batch_idx < self.hparams.panel_images and any(hasattr(lg, "log_image") for lg in self.loggers):
            self._panel.append(panel_strip(lr[0], sr[0], hr[0], self.hparams.panel_crop))

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True, sync_dist=True)  # already synced; silences a DDP warning
        self.val_psnr.reset()
        panel, self._panel = self._panel, []
        for logger in self.loggers:
            if panel and hasattr(logger, "log_image") and self.trainer.is_global_zero:
                # The same validation crops every time, so the panel shows how the output evolves.
                images = [(p.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype("uint8") for p in panel]
                logger.log_image("val/panel", images, step=self.global_step,
                                 caption=[f"LR | SR | HR #{i}" for i in range(len(images))])

    def configure_optimizers(self):
        # The configs say `_partial_: true` (they are completed here with params/optimizer); drop it and pass
        # the missing argument directly.
        optimizer = instantiate({**self.hparams.optimizer, "_partial_": False}, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate({**self.hparams.scheduler, "_partial_": False}, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
