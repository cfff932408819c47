"""Deep degradation representations (DDR, Liu et al. 2021) and their Calinski-Harabasz index, paper Fig. 9.

Each sample is one LR input of (at most) `input_size` x `input_size` px: the centre HR crop of
input_size * scale px of a test image, degraded by one of five test degradations (default clean, blur,
noise, jpeg and b+n+j; the paper does not name its five). Its representation is F_m averaged over pixels
(global average pooling), one value per channel. CHI (scikit-learn) is computed on these C-dimensional
vectors with the degradation as cluster label (lower = weaker degradation clustering); the CHI of the 2-D
t-SNE embedding is reported beside it because the DDR paper reads its clusters off that embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from src.analysis.common import DEFAULT_LAYER, capture_features, center_crop, pyplot, save_figure, to_tensor

DDR_DEGRADATIONS = ("clean", "blur", "noise", "jpeg", "b+n+j")


@dataclass
class Sample:
    image: str
    degradation: str
    lr: np.ndarray  # uint8 (h, w, 3)


def make_samples(hr_images: list[tuple[str, np.ndarray]], degradations=DDR_DEGRADATIONS, scale: int = 4,
                 input_size: int = 128, seed: int = 0) -> list[Sample]:
    """LR inputs for every (image, degradation), as the test protocol makes them (noise drawn per image content).

    Images smaller than input_size * scale give a smaller LR input; pooled features do not depend on size.
    """
    from src.data.testsets import degrade_test_image

    samples = []
    for name, hr in hr_images:
        crop = center_crop(hr, input_size * scale, multiple=scale)
        for d in degradations:
            samples.append(Sample(name, d, degrade_test_image(crop, d, scale=scale, seed=seed)))
    return samples


@torch.no_grad()
def pooled_features(model: nn.Module, samples: list[Sample], layer: str = DEFAULT_LAYER, batch_size: int = 16,
                    device: torch.device | str = "cpu", progress: bool = True, desc: str = "ddr") -> np.ndarray:
    """(N, C) global-average-pooled F_m; samples of equal LR size share a batch."""
    by_shape: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        by_shape.setdefault(s.lr.shape, []).append(i)
    batches = [idx[k:k + batch_size] for idx in by_shape.values() for k in range(0, len(idx), batch_size)]
    out: dict[int, np.ndarray] = {}
    for idx in tqdm(batches, desc=desc, disable=not progress):
        lr = torch.cat([to_tensor(samples[i].lr, device) for i in idx])
        _, f = capture_features(model, lr, layer)
        for i, v in zip(idx, f.float().mean(dim=(2, 3)).cpu().numpy()):
            out[i] = v
    return np.stack([out[i] for i in range(len(samples))]).astype(np.float64)


def chi(features: np.ndarray, labels) -> float:
    """Calinski-Harabasz index of the label clusters in feature space."""
    from sklearn.metrics import calinski_harabasz_score

    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if not 2 <= k < len(labels):
        raise ValueError(f"CHI needs 2 <= number of clusters < number of samples; got {k} clusters, "
                         f"{len(labels)} samples")
    if np.allclose(features, features[0]):
        return 0.0  # every sample identical: no separation at all (sklearn would divide 0 by 0)
    return float(calinski_harabasz_score(features, labels))


def tsne(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding; perplexity is capped below the sample count as scikit-learn requires."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(features)


@dataclass
class DDR:
    features: np.ndarray  # (N, C)
    embedding: np.ndarray  # (N, 2)
    images: list[str]
    degradations: list[str]
    chi: float
    chi_tsne: float


def compute_ddr(model: nn.Module, samples: list[Sample], layer: str = DEFAULT_LAYER, batch_size: int = 16,
        device="cpu", seed: int = 0, perplexity: float = 30.0, progress: bool = True, desc: str = "ddr") -> DDR:
    feats = pooled_features(model, samples, layer, batch_size, device, progress, desc)
    labels = [s.degradation for s in samples]
    emb = tsne(feats, seed, perplexity)
    return DDR(feats, emb, [s.image for s in samples], labels, chi(feats, labels), chi(emb, labels))


def plot_tsne(results: dict[str, DDR], path, degradations=DDR_DEGRADATIONS):
    """Fig. 9 a-c: one t-SNE scatter per model, coloured by degradation."""
    plt = pyplot()
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.5), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (label, r) in zip(axes[0], results.items()):
        labels = np.asarray(r.degradations)
        for k, d in enumerate(degradations):
            pts = r.embedding[labels == d]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colours(k % 10), label=d, alpha=0.8)
        ax.set_title(f"{label}\nCHI {r.chi:.1f} (t-SNE {r.chi_tsne:.1f})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8, markerscale=1.5)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_chi(results: dict[str, DDR], path):
    """Fig. 9 d: CHI per model (feature space)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(results)), 3.5))
    vals = [r.chi for r in results.values()]
    bars = ax.bar(range(len(vals)), vals, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], fontsize=8)
    ax.set_xticks(range(len(vals)), list(results), rotation=20, ha="right")
    ax.set_ylabel("Calinski-Harabasz index")
    ax.set_title("Degradation clustering of pooled features (lower = weaker)")
    return save_figure(fig, path)
