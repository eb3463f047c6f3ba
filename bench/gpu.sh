#!/usr/bin/env bash
# Run the benchmarks on a CUDA machine in under 8 minutes; writes bench/results-gpu.json
# (and bench/RESULTS-gpu.md). UNTESTED: no CUDA machine was available when this was written;
# the same scripts were run on CPU only (bench/results.json).
#
# What runs (bench/run_all.py --profile gpu):
#   vote        bench_vote.py --quick (faiss-cpu: the vote runs on the CPU even here)
#   embeddings  EfficientNet-Lite0 on cuda, 2048 images, 32/64 px, batch 128..1024
#   models      bench_models.py --device cuda, batch 50/100/200
#   memory      bench_memory.py with model.device=cuda, embedding.device=cuda (host RSS only)
#   demo        bench_demo.py (kfp.local and in-process) with the same cuda overrides
# A hard `timeout` stops it at 470 s; run_all.py writes results-gpu.json after every
# benchmark, so a timeout keeps the figures of the benchmarks that finished.
#
# Usage: bash bench/gpu.sh            (PY=/path/to/python to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

"$PY" - <<'PYCHECK'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: no CUDA device visible to torch; use bench/run_all.py on a CPU machine")
print("CUDA device:", torch.cuda.get_device_name(0))
PYCHECK

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

timeout --signal=INT 470 "$PY" bench/run_all.py --profile gpu --device cuda \
    --set model.device=cuda --set embedding.device=cuda \
    --json bench/results-gpu.json --markdown bench/RESULTS-gpu.md --analysis "" \
    || echo "bench/gpu.sh: run_all stopped early (exit $?); bench/results-gpu.json has what finished"
