"""Runs `python -m src.train` with a probe: every training batch's LR is hashed, per rank, into
$SR_DRAWS_DIR/rank<r>.json together with the cluster environment Lightning picked. Used by the cluster tests to
see inside each DDP process without changing the training code."""
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.datamodule import SRDataModule  # noqa: E402

_transfer = SRDataModule.on_after_batch_transfer


def _probe(self, batch, dataloader_idx):
    out = _transfer(self, batch, dataloader_idx)
    trainer = self.trainer
    if trainer is not None and trainer.training:
        rank = trainer.global_rank
        path = Path(os.environ["SR_DRAWS_DIR"]) / f"rank{rank}.json"
        record = json.loads(path.read_text()) if path.is_file() else {"draws": {}}
        record.update(environment=type(trainer._accelerator_connector.cluster_environment).__name__,
                      world_size=trainer.world_size, node_rank=trainer.node_rank, local_rank=trainer.local_rank,
                      pid=os.getpid())
        record["draws"][str(trainer.global_step)] = hashlib.sha1(out[0].cpu().numpy().tobytes()).hexdigest()
        path.write_text(json.dumps(record))
    return out


SRDataModule.on_after_batch_transfer = _probe

if __name__ == "__main__":
    import runpy

    # As `python -m src.train` (Hydra finds conf/ from the module's file); sys.argv[0] stays this file, so the
    # processes Lightning starts for local DDP run the probe too.
    runpy.run_module("src.train", run_name="__main__", alter_sys=False)
