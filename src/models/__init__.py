"""Backbones (MSRResNet, RRDBNet, SwinIR), dropout placement, the LightningModule and weight loading."""
