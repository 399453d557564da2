#!/usr/bin/env bash
# The one prepared check of a session lent a GPU (issue 32): under 8
# minutes on one H100 or H200. From the repository root on the device
# machine, with .carry/ carried (docs/benchmarks.md, "On a GPU"):
#   .carry/mnist/  the four MNIST .gz files
#   .carry/site/   dacite and platformdirs (pure Python; the machine's
#                  image has torch and the rest of vaelab's dependencies)
# Prints, and writes to $OUT/gpu_session.log (the device tool brings $OUT
# back): the machine, `python -m pytest -m cuda -x` (tests/test_cuda.py:
# every kind of step captured and training as eagerly, resume bit for bit,
# figures and evaluation on CUDA) and benchmarks/gpu.py (the graph bound,
# vaelab's epoch against it, every zoo model and preset on the device, the
# whole `vaelab run` with its stages and the GPU's busy share).
set -u
OUT=${OUT:-/tmp/vaelab-gpu-session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD/.carry/site" VAELAB_DATA="$PWD/.carry/mnist"
export VAELAB_NO_DOWNLOAD=1 PYTHONDONTWRITEBYTECODE=1
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, vaelab; print('torch', torch.__version__, \
torch.cuda.get_device_name(0), 'vaelab from', vaelab.__file__)"
    echo "== 1. python -m pytest -m cuda -x (limit 150 s)"
    start=$SECONDS
    timeout 150 "$PY" -m pytest -m cuda -x -q -p no:cacheprovider \
        tests/test_cuda.py
    echo "pytest: exit $?, $((SECONDS - start)) s"
    echo "== 2. benchmarks/gpu.py (limit 300 s; its whole run 120 s)"
    start=$SECONDS
    timeout 300 "$PY" benchmarks/gpu.py --run-limit 120
    echo "gpu.py: exit $?, $((SECONDS - start)) s"
} 2>&1 | tee "$OUT/gpu_session.log"
