#!/usr/bin/env bash
# One GPU session's measurements in one call (see /work/.library/device/METHOD.md: few, full calls):
# the CUDA tests, the hash-grid kernel and training-step speed, and lego-200 PSNR in 60 s.
#   OUT=/tmp/gpu LEGO=../shared/data/lego-200 bash bench/gpu.sh
# Python packages the machine lacks travel as wheels in .whl/ (kornia, omegaconf, plyfile).
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
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_hashgrid.py tests/test_nerf.py 2>&1 | tail -8 | tee "$OUT/tests.txt"
echo "== speed"; date
timeout 150 python3 bench/nerf.py --skip-speed 2>&1 | tee "$OUT/speed.txt"
lego() {  # name, then nerf config overrides
  local name=$1; shift
  echo "== lego-200 60 s: $name $*"; date
  local sets=(); for s in "$@"; do sets+=(--set "$s"); done
  timeout 150 python3 bench/nerf.py --skip-speed --skip-gpu --quality lego --budget 60 --lego "$LEGO" \
    --workdir "/tmp/w-$name" --set device=cuda ${sets[@]+"${sets[@]}"} 2>&1 | tail -3 | tee "$OUT/lego-$name.txt"
}
GPU_SIZED=(model.grid.log2_table_size=19 model.grid.finest_resolution=2048 samples_per_batch=262144 max_rays=65536 initial_rays=8192)
lego gpu-bf16 "${GPU_SIZED[@]}"
lego gpu-fp32 "${GPU_SIZED[@]}" mixed_precision=false
lego cpu-config
date
