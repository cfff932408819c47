"""The LightningModule: L1 loss, Adam + cosine schedule, validation PSNR (Y or RGB), per-step seeding for exact
resume."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio

from src import seeding
from src.metrics import Y_WEIGHTS
from src.models.loading import build_backbone

# Validation metrics: name -> the suffix of the logged keys (`val/psnr` stays PSNR-Y, as every earlier run logged it).
VAL_METRICS = {"psnr_y": "psnr", "psnr_rgb": "psnr_rgb"}


def y_channel(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma on the [0, 1] scale, as MATLAB's rgb2ycbcr (16..235 range)."""
    w = x.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1)
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


PANEL_LABELS = ("LR (nearest)", "SR", "HR")
_LABEL_HEIGHT = 14  # px: one line of PIL's default bitmap font


def labelled_panel(strips: list[torch.Tensor], title: str = "") -> np.ndarray:
    """Strips of `panel_strip` stacked into one uint8 (H, W, 3) image, each under a band naming its thirds (LR, SR,
    HR) and `title` (the step): readable as a file, in TensorBoard and in W&B alike."""
    from PIL import Image, ImageDraw

    width = max(s.shape[-1] for s in strips)
    rows = []
    for i, strip in enumerate(strips):
        band = Image.new("RGB", (width, _LABEL_HEIGHT), "white")
        draw, third = ImageDraw.Draw(band), strip.shape[-1] // 3
        for k, label in enumerate(PANEL_LABELS):
            draw.text((k * third + 3, 1), label + (f"  {title} #{i}" if k == 0 and title else ""), fill="black")
        pixels = (strip.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
        canvas = np.full((pixels.shape[0], width, 3), 255, np.uint8)
        canvas[:, :pixels.shape[1]] = pixels
        rows += [np.asarray(band), canvas]
    return np.concatenate(rows, axis=0)


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
        ema_decay: decay of an exponential moving average of the weights, updated after every optimizer step
            (BasicSR: 0.999); when above 0 the average (`net_ema`) is what validation, evaluation and the loaders
            use. 0 turns it off.
        val_metric: `psnr_y` (PSNR on MATLAB's Y, the literature's; logged as `val/psnr`) or `psnr_rgb` (PSNR
            over the three RGB channels, as the official training configs validate: BasicSR's calculate_psnr,
            test_y_channel false; logged as `val/psnr_rgb`). Both on the 8-bit output, `scale` pixels cropped
            from every border (crop_border 4 at x4).

    Checkpoints carry, beside Lightning's state, the backbone in BasicSR's layout: `params` (the trained weights)
    and, with the EMA on, `params_ema` (the average), which BasicSR-style loaders prefer.
    """

    def __init__(self, backbone: Mapping[str, Any], optimizer: Mapping[str, Any],
                 scheduler: Mapping[str, Any] | None = None, scale: int = 4, seed: int = 0,
                 panel_images: int = 3, panel_crop: int = 96, dropout: Mapping[str, Any] | None = None,
                 ema_decay: float = 0.0, val_metric: str = "psnr_y"):
        super().__init__()
        if val_metric not in VAL_METRICS:
            raise ValueError(f"module.val_metric={val_metric!r}; allowed: psnr_y (PSNR on Y, logged as val/psnr), "
                             f"psnr_rgb (PSNR over RGB as the official code validates, logged as val/psnr_rgb)")
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema.decay={ema_decay}: must be in [0, 1); 0 turns the weight average off, "
                             f"BasicSR's recipes use 0.999")
        self.save_hyperparameters()
        self.net = build_backbone(backbone, scale=scale, dropout=dropout)
        # The average starts as a copy of the initial weights, as BasicSR's; it never receives gradients.
        self.net_ema = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None
        self.val_psnr = torch.nn.ModuleList()  # one mean per validation loader (set x degradation)
        self._panel: list[torch.Tensor] = []

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)

    @property
    def eval_net(self) -> torch.nn.Module:
        """The network to validate, evaluate and export: the weight average when it is on."""
        return self.net_ema if self.net_ema is not None else self.net

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)  # called once per optimizer step, after all micro-batches
        if self.net_ema is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = float(self.hparams.ema_decay)
        average, current = list(self.net_ema.parameters()), list(self.net.parameters())
        torch._foreach_mul_(average, decay)
        torch._foreach_add_(average, current, alpha=1.0 - decay)
        for mine, theirs in zip(self.net_ema.buffers(), self.net.buffers()):
            mine.copy_(theirs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # BasicSR's layout beside Lightning's. The tensors share storage with `state_dict`, and torch.save writes
        # a storage once, so this costs no space.
        checkpoint["params"] = self.net.state_dict()
        if self.net_ema is not None:
            checkpoint["params_ema"] = self.net_ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        has_ema = any(k.startswith("net_ema.") for k in checkpoint.get("state_dict", {}))
        if has_ema != (self.net_ema is not None):
            raise ValueError(
                f"the checkpoint was written with the weight average {'on' if has_ema else 'off'} but this run has "
                f"ema.decay={self.hparams.ema_decay}: resume with the ema.decay it was trained with, or start "
                f"over with force=true")

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

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        lr, hr = batch
        sr = (self.eval_net(lr).clamp(0, 1) * 255).round() / 255  # scored as the saved 8-bit image would be
        b = self.hparams.scale
        pred, target = (y_channel(sr), y_channel(hr)) if self.hparams.val_metric == "psnr_y" else (sr, hr)
        while len(self.val_psnr) <= dataloader_idx:
            self.val_psnr.append(MeanMetric().to(self.device))
        self.val_psnr[dataloader_idx].update(peak_signal_noise_ratio(
            pred[..., b:-b, b:-b], target[..., b:-b, b:-b], data_range=1.0, reduction="none", dim=(1, 2, 3)))
        # The same few crops at every validation (the first loader's first images), so they show how the output
        # evolves; on disk for every run, in W&B and TensorBoard when they log.
        if dataloader_idx == 0 and batch_idx < self.hparams.panel_images:
            self._panel.append(panel_strip(lr[0], sr[0], hr[0], self.hparams.panel_crop))

    def on_validation_epoch_end(self) -> None:
        loaders = self.trainer.val_dataloaders
        names = list(loaders) if isinstance(loaders, Mapping) else [None] * len(self.val_psnr)
        means, suffix = [], VAL_METRICS[self.hparams.val_metric]
        for name, metric in zip(names, self.val_psnr):
            if not metric.update_called:
                continue
            means.append(metric.compute())  # already synced across ranks; sync_dist below silences a DDP warning
            metric.reset()
            if name is not None:
                self.log(f"val/{name}/{suffix}", means[-1], sync_dist=True, add_dataloader_idx=False)
        if means:  # each set x degradation weighs the same in the headline
            self.log(f"val/{suffix}", torch.stack(means).mean(), prog_bar=True, sync_dist=True,
                     add_dataloader_idx=False)
        panel, self._panel = self._panel, []
        if panel and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.save_panel(panel)

    def save_panel(self, strips: list[torch.Tensor]) -> None:
        """`<run>/visualization/step-000100.png` (BasicSR users look there), and the same image in W&B and
        TensorBoard."""
        from src.utils import atomic_write_bytes

        step = self.global_step
        image = labelled_panel(strips, f"step {step}")
        folder = self.trainer.default_root_dir
        if folder:
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            atomic_write_bytes(f"{folder}/visualization/step-{step:06d}.png", buffer.getvalue())
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B: one wide image, as large as its panel shows it
                logger.log_image("val/panel", [image], step=step,
                                 caption=[f"step {step}: " + " | ".join(PANEL_LABELS) + " (rows: validation crops)"])
            elif type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image("val/panel", image, step, dataformats="HWC")

    def configure_optimizers(self):
        # The configs say `_partial_: true` (they are completed here with params/optimizer); drop it and pass
        # the missing argument directly.
        optimizer = instantiate({**self.hparams.optimizer, "_partial_": False}, params=self.net.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate({**self.hparams.scheduler, "_partial_": False}, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
