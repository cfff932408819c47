"""Memory layout (`channels_last`) changes the summation order of the convolutions, never the results beyond float
rounding: the same evaluation scores, and training reaches the same weights. (kill -9 + resume under the default
layout: tests/test_resilience.py.)"""
import copy

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import compose_train
from src.bench import BareStep
from src.data.datasets import list_images
from src.evaluation import evaluate
from src.models.srresnet import MSRResNet
from src.utils import apply_memory_format


def _layout(net) -> str:
    w = net.conv_first.weight
    return "channels_last" if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() else "nchw"


def test_set5_scores_agree_across_layouts(data_root):
    torch.manual_seed(0)
    net = MSRResNet(num_feat=32, num_block=4, scale=4).eval()  # the campaign's tiny SRResNet
    sets = {"Set5": list_images(data_root / "Set5" / "HR")[:2]}
    results = {}
    for setting in (False, True):
        model = apply_memory_format(copy.deepcopy(net), setting, "cpu")
        results[_layout(model)] = evaluate(model, sets, ["clean", "b+n+j"], scale=4)["Set5"]
    assert set(results) == {"nchw", "channels_last"}
    for d in ("clean", "b+n+j"):
        a, b = results["nchw"][d], results["channels_last"][d]
        assert a["n_images"] == b["n_images"] == 2
        assert abs(a["psnr"] - b["psnr"]) < 1e-3 and abs(a["psnr_rgb"] - b["psnr_rgb"]) < 1e-3, d
        assert abs(a["ssim"] - b["ssim"]) < 1e-5, d


def test_training_steps_reach_the_same_weights_in_either_layout(tmp_path):
    """Ten Adam steps (lr 2e-4) of the repro_small model (dropout off: its masks would be the only randomness) on
    the same batches: the weights agree to 5e-5, a quarter of one step's size, so no update went another way
    (Adam's steps have about the same size whatever the gradient's, so a rounding difference can grow)."""
    cfg = compose_train(["experiment=repro_small", "dropout.p=0"], tmp_path)
    kwargs = OmegaConf.to_container(cfg.module, resolve=True)
    cls = get_class(kwargs.pop("_target_"))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 3, 16, 16, generator=gen), torch.rand(4, 3, 64, 64, generator=gen)) for _ in range(10)]
    nets = {}
    for setting in (False, True):
        torch.manual_seed(0)
        step = BareStep(cls(**copy.deepcopy(kwargs)), torch.device("cpu"), setting)
        for lr, gt in batches:
            step(lr, gt)
        nets[_layout(step.net)] = step.net.state_dict()
    assert set(nets) == {"nchw", "channels_last"}
    a, b = nets["nchw"], nets["channels_last"]
    torch.manual_seed(0)
    start = cls(**copy.deepcopy(kwargs)).net.state_dict()
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # the steps did change the weights (10 x lr 2e-4)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-5  # measured 9e-6
