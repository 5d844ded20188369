#!/usr/bin/env bash
# One GPU session's measurements in one call (see /work/.library/device/METHOD.md: few, full calls):
# the CUDA tests, the hash-grid kernel and training-step speed, and lego-200 PSNR in 60 s.
#   OUT=/tmp/gpu LEGO=../shared/data/lego-200 bash bench/gpu.sh
# Python packages the machine lacks travel as wheels in .whl/ (kornia, kornia_rs, omegaconf, plyfile)
# and ../shared does not travel: copy lego-200 into an ignored folder first, e.g. .gpudata/, name both
# in the device call's carry and run:  OUT=$OUT LEGO=.gpudata/lego-200 bash bench/gpu.sh
# (.whl/ and .gpudata/ listed in .git/info/exclude; delete .gpudata/ afterwards).
# About 5-6 minutes on an H200 (first run 2026-11-30: bench/RESULTS.md, "GPU: NVIDIA H200").
set -u
export PYTHONUNBUFFERED=1 RECON_QUIET=1
OUT=${OUT:-/tmp/recon-gpu}
LEGO=${LEGO:-../shared/data/lego-200}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
echo "== CUDA tests"; date
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_hashgrid.py tests/stages/test_idr.py -k "cuda or triton" 2>&1 \
  | tail -8 | tee "$OUT/tests.txt"
echo "== speed"; date
timeout 150 python3 bench/nerf.py --skip-speed 2>&1 | tee "$OUT/speed.txt"
lego() {  # quality item (lego-gpu, lego, lego-fourier), then nerf config overrides
  local item=$1; shift
  echo "== $item 60 s: $*"; date
  local sets=(); for s in "$@"; do sets+=(--set "$s"); done
  timeout 150 python3 bench/nerf.py --skip-speed --skip-gpu --quality "$item" --budget 60 --fourier-budget 60 \
    --lego "$LEGO" --workdir "/tmp/w-$item" --set device=cuda ${sets[@]+"${sets[@]}"} 2>&1 | tail -3 | tee "$OUT/$item.txt"
}
lego lego-gpu
lego lego-fourier
date
