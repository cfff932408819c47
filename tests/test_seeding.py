"""Named random streams: distinct per stream and position, stable, and used by the training loop as documented."""
import ast
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, TINY, compose_train
from src import seeding


def test_streams_at_the_same_position_never_share_a_seed():
    seeds = {(s, step, rank, micro): seeding.stream_seed(7, s, step, rank, micro)
             for s in seeding.STREAMS for step in range(4) for rank in range(2) for micro in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    # the collision that once made dropout masks equal the degradations of micro-batch 1
    assert seeding.stream_seed(0, "dropout", 3, 0, 0) != seeding.stream_seed(0, "degradation", 3, 0, 1)


def test_stream_seed_is_a_pure_function_and_fits_63_bits():
    a = seeding.stream_seed(3, "degradation", step=10, rank=1, micro=1)
    assert a == seeding.stream_seed(3, "degradation", step=10, rank=1, micro=1)
    assert 0 <= a < 2**63
    assert a != seeding.stream_seed(4, "degradation", step=10, rank=1, micro=1)
    g1, g2 = (seeding.generator(3, "degradation", 10, 1, 1) for _ in range(2))
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
    r1, r2 = (seeding.numpy_rng(0, "crops", index=i) for i in (5, 6))
    assert r1.integers(1 << 30) != r2.integers(1 << 30)


def test_test_noise_keeps_its_released_entropy_layout():
    # test LR images, their caches and committed results depend on it
    key = [1, 2, 3, 4]
    assert np.array_equal(seeding.numpy_rng(5, "test_noise", key=key).standard_normal(4),
                          np.random.default_rng([5, 1, 2, 3, 4]).standard_normal(4))


@pytest.mark.parametrize("kwargs, match", [
    ({"stream": "masks"}, r"unknown random stream 'masks'; streams: crops, degradation, dropout"),
    ({"stream": "dropout", "step": -1}, r"non-negative .*stream 'dropout'"),
])
def test_bad_stream_or_position_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        seeding.stream_seed(0, **kwargs)


def test_micro_batch_counts_within_an_optimizer_step():
    assert [seeding.micro_batch(n, 2) for n in range(5)] == [0, 1, 0, 1, 0]
    assert [seeding.micro_batch(n, 1) for n in range(3)] == [0, 0, 0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_data_and_models_do_not_import_each_other():
    for side, other in (("data", "src.models"), ("models", "src.data")):
        for path in (REPO / "src" / side).glob("*.py"):
            bad = [m for m in _imports(path) if m == other or m.startswith(other + ".")]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


class Recorder(pl.Callback):
    """Per trained batch: (global step, degradation seed, channel mask of the dropout before conv_last)."""

    def __init__(self, module, datamodule):
        self.rows, self._seed, self._mask = [], None, None
        degrade = datamodule.degradation

        def recording(hr, generator):
            self._seed = generator.initial_seed()
            return degrade(hr, generator)

        datamodule.degradation = recording
        module.net.dropout_last.register_forward_hook(
            lambda mod, inp, out: setattr(self, "_mask", (out.abs().amax(dim=(2, 3)) > 0).clone()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append((trainer.global_step, self._seed, self._mask))


def test_accumulated_micro_batches_draw_distinct_degradations_and_masks(tmp_path):
    from src.train import build_parts
    from src.utils import build

    cfg = compose_train(TINY + [f"paths.cache={tmp_path}/cache", "trainer.max_steps=3",
                                "trainer.accumulate_grad_batches=2", "dropout.p=0.5", "seed=11"], tmp_path)
    module, datamodule = build_parts(cfg)
    recorder = Recorder(module, datamodule)
    trainer = build(cfg.trainer, logger=False, callbacks=[recorder], default_root_dir=str(tmp_path),
                    limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)

    assert trainer.global_step == 3 and len(recorder.rows) == 6  # 2 micro-batches per optimizer step
    expected = [seeding.stream_seed(11, "degradation", step, 0, micro) for step in range(3) for micro in range(2)]
    assert [seed for _, seed, _ in recorder.rows] == expected
    masks = [mask for _, _, mask in recorder.rows]
    for step in range(3):
        first, second = masks[2 * step], masks[2 * step + 1]
        assert first.shape == (2, 32)
        assert not torch.equal(first, second), f"micro-batches of step {step} drew the same dropout masks"
    # the masks are the dropout stream's: replaying (seed, step, micro) reproduces them
    torch.manual_seed(seeding.stream_seed(11, "dropout", 1, 0, 1))
    replay = torch.empty(2, 32, 1, 1).bernoulli_(0.5).view(2, 32) > 0
    assert torch.equal(replay, masks[3])
