#!/usr/bin/env bash
# The GPU benchmark suite, as run for docs/benchmarks.md. Results land in ${OUT:-benchmarks/results}.
# Usage: bash benchmarks/gpu_suite.sh [llm] [vision] [tests] [capacity-tokens] [capacity-frames]
set -uo pipefail
out=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1
for step in "$@"; do
  echo "=== $step"
  case $step in
    llm) timeout 270 python3 benchmarks/llm_throughput.py --out "$out/llm_throughput.json" ;;
    vision) timeout 120 python3 benchmarks/vision_throughput.py --seconds 1 --out "$out/vision_throughput.json" ;;
    tests) timeout 150 python3 -m pytest -q -p no:cacheprovider --durations=5 -m gpu "${GPU_TESTS:-tests/}" ;;
    capacity-tokens) timeout 150 python3 benchmarks/capacity.py --vision tokens --frames 10000,100000 \
                       --budget-s 120 --out "$out/capacity_tokens.json" ;;
    capacity-frames) timeout 560 python3 benchmarks/capacity.py --vision frames --frames 100000 \
                       --transv uni_7_0.5-attn_39_0.9 --out "$out/capacity_frames.json" ;;
    *) echo "unknown step $step" ;;
  esac
done
