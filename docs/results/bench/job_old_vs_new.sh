#!/bin/bash
# A repro_small job (300 steps, Set5+Set14, both protocols) from the tree before the speed work (OLD_TREE: a checkout of 92228f4^) and from the current one (NEW_TREE), side by side, one core each; SR_DATA_ROOT as for training.
run() {  # tree tag (EXTRA: overrides the old tree needs to match)
  cd $1
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 SR_DATA_ROOT=${SR_DATA_ROOT:?} SR_RUNS_DIR=/tmp/sbs/$2 SR_CACHE_DIR=/tmp/sbs/cache-$2 WANDB_MODE=disabled
  s=$(date +%s.%N)
  .venv/bin/python -m src.train experiment=repro_small $EXTRA trainer.max_steps=300 'data.test_sets=[Set5,Set14]' eval.protocol=both > /tmp/sbs/$2.log 2>&1
  e=$(date +%s.%N); echo "$2 rc=$? wall=$(echo "$e - $s" | bc)"
}
rm -rf /tmp/sbs; mkdir -p /tmp/sbs
EXTRA=degradation.jpeg=real run "$OLD_TREE" old & run "$NEW_TREE" new & wait
