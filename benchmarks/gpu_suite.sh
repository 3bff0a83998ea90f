#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md. Results land in ${OUT:-benchmarks/results}.
# Usage: bash benchmarks/gpu_suite.sh STEP [STEP ...]
#   llm vision tests capacity-tokens capacity-frames      speed (llm: with prefill profiles), GPU tests,
#                    frames per GPU
#                    (capacity-tokens: CAPACITY_FRAMES, CAPACITY_TRANSV, CAPACITY_BUDGET_S pick the runs)
#   probe-embedded   24 steps of configs/embedded.yaml: step time, data wait, a profile of steps 20-22
#                    (PROBE_SET="--set train.micro_batch_tokens=65536 --set data.lookahead=64" tries a variant)
#   embedded         train the embedded model on from EMBEDDED_FROM (default the shipped embedded model; its TransV kept) for
#                    EMBEDDED_SECONDS (default 420) at a constant learning rate, on the data order of EMBEDDED_SEED
#                    (required: a new one for every segment, or it sees the samples of the last one again;
#                    EMBEDDED_DATA: YAML lists of datasets (files, concatenated) in place of the config's mix, e.g.
#                    configs/embedded-motion-only.yaml; EMBEDDED_SET: more overrides), then export it in bf16
#                    to OUT/embedded, with its metrics and a profile of steps 6-8; EMBEDDED_VISION_STEPS=N
#                    first pretrains the vision front on labelled frames for N steps (timeviper.synth.pretrain_vision;
#                    EMBEDDED_VISION_ARGS: more of its options, e.g. "--token-loss --needle-share 0.25 --anchor 10")
#   embedded-sweep   the shipped (or SWEEP_MODEL) model's quality by video length on the GPU, cells written as they
#                    finish: SWEEP_TASKS (default needle), SWEEP_FRAMES (1000,10000,100000), SWEEP_ITEMS (30),
#                    SWEEP_TRANSV (default), SWEEP_LOGN (the model's own logn attention length; none or N),
#                    SWEEP_WORKERS (1: processes sharing the GPU, each with a model)
#   tiny-gpu         configs/tiny-gpu.yaml on one GPU (300 steps; the loss must fall)
#   tiny-fsdp        the same on two GPUs (FSDP2), compared with tiny-gpu's losses
#   train-throughput Nano-9B + so400m training speed and MFU over every GPU (FSDP2; bf16 weights on one GPU)
#   triton-restore / triton-save   unpack benchmarks/triton-autotune.tgz into the Triton cache / pack the
#                    cache's autotuning results (*.autotune.json: a few kB, not the 36 MB of compiled kernels)
#                    into OUT: with them a fresh machine compiles only the chosen config of each fla kernel
#                    instead of benchmarking every candidate (the results hold for one GPU kind, Triton and fla
#                    version: elsewhere they are simply not found); e.g. `gpu_suite.sh triton-restore embedded`
set -uo pipefail
out=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
train="python3 -m timeviper.cli train"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
for step in "$@"; do
  echo "=== $step"
  case $step in
    llm) timeout 400 python3 benchmarks/llm_throughput.py --out "$out/llm_throughput.json" --profile "$out/profile" ;;
    vision) timeout 120 python3 benchmarks/vision_throughput.py --seconds 1 --out "$out/vision_throughput.json" ;;
    tests) timeout 560 python3 -m pytest -q -p no:cacheprovider --durations=10 -m gpu "${GPU_TESTS:-tests/}" ;;
    capacity-tokens) budget=${CAPACITY_BUDGET_S:-240}  # runs predicted to end later are skipped
                     timeout $((budget + 60)) python3 benchmarks/capacity.py --vision tokens \
                       --frames "${CAPACITY_FRAMES:-2000,10000,100000}" \
                       --transv "${CAPACITY_TRANSV:-none,uni_7_0.5,uni_7_0.5-attn_39_0.9}" \
                       --budget-s "$budget" --out "$out/capacity_tokens.json" ;;
    capacity-frames) timeout 560 python3 benchmarks/capacity.py --vision frames --frames 100000 \
                       --transv uni_7_0.5-attn_39_0.9 --out "$out/capacity_frames.json" ;;
    probe-embedded)
      timeout 300 $train --config configs/embedded.yaml --output /tmp/probe-embedded --max-steps 24 \
        --set logging.every=2 --set "logging.profile_steps=[20, 22]" ${PROBE_SET:-}
      cp /tmp/probe-embedded/metrics.jsonl "$out/probe_embedded.jsonl"
      cp /tmp/probe-embedded/profile/ops-rank-0.txt "$out/probe_embedded_ops.txt" ;;
    embedded)
      rm -rf /tmp/embedded /tmp/embedded-vision  # a segment starts afresh from EMBEDDED_FROM
      from=${EMBEDDED_FROM:-src/timeviper/assets/embedded}
      if [ -n "${EMBEDDED_VISION_STEPS:-}" ]; then
        timeout 240 python3 -m timeviper.synth.pretrain_vision --model "$from" --out /tmp/embedded-vision \
          --steps "$EMBEDDED_VISION_STEPS" --workers 12 --seed "$EMBEDDED_SEED" ${EMBEDDED_VISION_ARGS:-} || exit 1
        cp /tmp/embedded-vision/vision_pretraining.json "$out/"
        from=/tmp/embedded-vision
      fi
      $train --config configs/embedded.yaml --output /tmp/embedded --max-seconds "${EMBEDDED_SECONDS:-420}" \
        --set model.tiny=null --set model.pretrained="$from" --set model.transv=null \
        --set optim.scheduler=constant --set train.max_steps=100000 --set optim.warmup_ratio=0.0005 \
        --set train.seed="${EMBEDDED_SEED:?each segment needs a data seed of its own}" \
        --set logging.every=10 --set "logging.profile_steps=[6, 8]" \
        ${EMBEDDED_DATA:+--set "data.datasets=$(cat $EMBEDDED_DATA)"} ${EMBEDDED_SET:-}
      cp /tmp/embedded/metrics.jsonl "$out/embedded_metrics.jsonl"
      cp /tmp/embedded/profile/ops-rank-0.txt "$out/embedded_ops.txt"
      python3 -m timeviper.cli export /tmp/embedded --out "$out/embedded" --dtype bfloat16 ;;
    embedded-sweep)
      timeout 560 python3 -m timeviper.eval.synth_sweep --model "${SWEEP_MODEL:-src/timeviper/assets/embedded}" \
        --tasks "${SWEEP_TASKS:-needle}" --frames "${SWEEP_FRAMES:-1000,10000,100000}" --items "${SWEEP_ITEMS:-30}" \
        --transv "${SWEEP_TRANSV:-default}" --logn-length "${SWEEP_LOGN:-default}" --device cuda \
        --workers "${SWEEP_WORKERS:-1}" \
        --out "$out/embedded_sweep${SWEEP_LOGN:+_logn-$SWEEP_LOGN}.json" ;;
    tiny-gpu)
      timeout 400 $train --config configs/tiny-gpu.yaml --output /tmp/tiny-gpu-1
      cp /tmp/tiny-gpu-1/metrics.jsonl "$out/tiny_gpu_1.jsonl" ;;  # the steps logged, even if cut short
    tiny-fsdp)
      timeout 400 torchrun --standalone --nproc_per_node 2 -m timeviper.cli train --config configs/tiny-gpu.yaml \
        --output /tmp/tiny-gpu-2 && cp /tmp/tiny-gpu-2/metrics.jsonl "$out/tiny_gpu_2.jsonl" \
        && python3 scripts/compare_losses.py "$out/tiny_gpu_1.jsonl" "$out/tiny_gpu_2.jsonl" --tolerance 0.05 ;;
    train-throughput) one_gpu=$([ "$gpus" = 1 ] && echo --bf16-weights)  # AdamW in fp32 needs 144 GB: FSDP2 or bf16 states
                      timeout 500 torchrun --standalone --nproc_per_node "$gpus" benchmarks/train_throughput.py \
                        $one_gpu --out "$out/train_throughput_${gpus}gpu.json" ;;
    triton-restore) mkdir -p "$TRITON_CACHE_DIR" && tar -xzf benchmarks/triton-autotune.tgz -C "$TRITON_CACHE_DIR" ;;
    triton-save) (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar -czf - -T -) > "$out/triton-autotune.tgz" \
                   && tar -tzf "$out/triton-autotune.tgz" | wc -l && ls -la "$out/triton-autotune.tgz" ;;
    *) echo "unknown step $step" ;;
  esac
done
