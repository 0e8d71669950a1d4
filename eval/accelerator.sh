#!/bin/sh
# Every accelerator measurement of BENCHMARKS.md's "Hierarchical models on an accelerator", in
# one go (budget: ~6 minutes on one H100/H200), so that a session lent a GPU runs it once:
#
#   sh eval/accelerator.sh 2>&1 | tee accelerator.log
#
# 1-2: the bar, every recipe at 256 rows of 256 bytes in bf16, 4 steps a compiled call (the
# flat decoder tuned the same), at the default widths and at the `gpu` variants' width;
# 3: the census of the GPU-compiled steps (launches); 4: generation, the compiled loop against
# the host loop. Each script's last line is its key=value pairs.
set -e
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python hierarchical.py --timing-only --rows 256 --dtype bfloat16 --steps-per-call 4 \
  --timing-steps 6 --root ../workdirs/accel_default --out results/hierarchical_accel_default
python hierarchical.py --timing-only --variant gpu --steps-per-call 4 --timing-steps 6 \
  --root ../workdirs/accel_gpu --out results/hierarchical_accel_gpu
python hlo_census.py --rows 256 --timing-steps 3 --root ../workdirs/accel_census \
  --out results/hlo_census_accel
python generation.py --recipes bytes_decoder,hat
