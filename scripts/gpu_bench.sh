#!/usr/bin/env bash
# GPU benchmark (issue 5): ResNet-50 224 px, bf16 autocast, channels_last, synthetic data:
# images/s of MRL / MRL-E over the plain model, eager and torch.compile'd, and FAISS GPU
# search when faiss-gpu is importable. Runs only where torch sees a CUDA GPU (exits 0 with a
# message otherwise); finishes within 8 minutes (the Python side keeps a 450 s budget).
#
#   bash scripts/gpu_bench.sh [--quick]         # from the repository root
#
# Needs a python with torch + timm + pytorch-lightning + torchmetrics ($PYTHON, else python3,
# else .venv/bin/python); the repo's src/ goes on PYTHONPATH, nothing is installed.
# Writes ${OUT:-results}/gpu_bench.json and prints the table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# first python that imports torch: exit status 0 = sees a GPU, 3 = no GPU, other = no torch
PY=""
for cand in "${PYTHON:-}" python3 .venv/bin/python; do
  [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
  rc=0
  "$cand" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null || rc=$?
  if [ "$rc" = 0 ]; then PY="$cand"; break; fi
  if [ "$rc" = 3 ]; then
    echo "gpu_bench: no CUDA GPU visible to torch ($cand); skipping the GPU benchmark"
    exit 0
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_bench: no python with torch found (set PYTHON=...); nothing to run"
  exit 0
fi

OUT_DIR="${OUT:-results}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 470 "$PY" -m scripts.bench --gpu --gpu-budget-s 420 --out "$OUT_DIR/gpu_bench.json" "$@"
