"""Interpretation tools of the paper's section 6: channel saliency maps, channel ablation and DDR + CHI.

All tools look at layer m, named by the submodule whose input is F_m (default `conv_last`).
"""
from src.analysis.ablation import Ablation, ablate_features, channel_ablation, forward_ablated
from src.analysis.common import DEFAULT_LAYER, capture_features, feature_hook, resolve_layer
from src.analysis.ddr import DDR, DDR_DEGRADATIONS, chi, compute_ddr, make_samples, pooled_features, tsne
from src.analysis.saliency import Saliency, channel_saliency, image_gradient_sum

__all__ = ["Ablation", "DDR", "DDR_DEGRADATIONS", "DEFAULT_LAYER", "Saliency", "ablate_features",
           "capture_features", "channel_ablation", "channel_saliency", "chi", "compute_ddr", "feature_hook",
           "forward_ablated", "image_gradient_sum", "make_samples", "pooled_features", "resolve_layer", "tsne"]
