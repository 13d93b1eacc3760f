#!/usr/bin/env bash
# GPU benchmark (issue 5): ResNet-50 224 px, bf16 autocast, channels_last, synthetic data:
# images/s of MRL / MRL-E over the plain model, eager and torch.compile'd, and FAISS GPU
# search when faiss-gpu is importable. Runs only where torch sees a CUDA GPU (exits 0 with a
# message otherwise); finishes within 8 minutes (the Python side keeps a 450 s budget).
#
#   bash scripts/gpu_bench.sh [--quick]         # from the repository root
#   bash scripts/gpu_bench.sh --search [--n 1000000] [--dim 2048] [--queries 10000]
#        [--backend auto|torch] [--dry-run]     # exact vs funnel search on the GPU, queries/s
#        (scripts/bench/gpu_search.py; --search without a GPU fails with a message, exit 1;
#        --dry-run prints the plan only and needs no GPU). Writes ${OUT:-results}/gpu_search_bench.json
#
# Needs a python with torch + timm + pytorch-lightning + torchmetrics ($PYTHON, else python3,
# else .venv/bin/python); the repo's src/ goes on PYTHONPATH, nothing is installed.
# Writes ${OUT:-results}/gpu_bench.json and prints the table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" = "--search" ]; then
  shift
  PY="${PYTHON:-}"
  for cand in "${PYTHON:-}" .venv/bin/python python3; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch, faiss" 2>/dev/null \
      && { PY="$cand"; break; }
  done
  if [ -z "$PY" ]; then
    echo "gpu_bench --search: no python with torch and faiss found (set PYTHON=...)" >&2
    exit 1
  fi
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  exec timeout 540 "$PY" -m scripts.bench.gpu_search --out "${OUT:-results}/gpu_search_bench.json" "$@"
fi

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
