#!/usr/bin/env bash
# Tensor-parallel scaling of decode on one host: batch-1 step time and batch-64 throughput at each TP size
# (random weights of the CONFIG shape, bf16), against TP=1 of the same run; a Markdown table in $OUT.
# Usage (N GPUs):  OUT=results bash scripts/tp_scaling.sh 1 2 4        (default sizes: 1 2 4 up to N)
# CPU dry run:     CONFIG=tiny DTYPE=float32 XLA_FLAGS=--xla_force_host_platform_device_count=4 \
#                  INPUT_LEN=16 OUTPUT_LEN=8 OUT=/tmp/tp bash scripts/tp_scaling.sh 1 2 4
# Targets (8B shape): batch-1 step at most 0.60x (TP=2) and 0.35x (TP=4) of TP=1; batch-64 throughput at
# least 1.8x and 3.4x. The table also says whether greedy tokens equal TP=1's.
set -u
OUT=${OUT:-results}
CONFIG=${CONFIG:-llama-3-8b}
DTYPE=${DTYPE:-bfloat16}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-64}
ITERS=${ITERS:-2}
BATCHES=${BATCHES:-1 64}
LOGS=${LOGS:-/tmp/jaxllm-tp-scaling-logs}
mkdir -p "$OUT" "$LOGS"
export PYTHONPATH=.:scripts${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ $# -eq 0 ]; then
  n=$(python -c 'import jax; print(jax.device_count())')
  set -- $(for tp in 1 2 4 8; do [ "$tp" -le "$n" ] && echo "$tp"; done)
fi
for tp in "$@"; do
  for b in $BATCHES; do
    log="$LOGS/tp${tp}_b${b}.log"
    timeout 600 python scripts/benchmark_latency.py --config "$CONFIG" --dtype "$DTYPE" --batch-size "$b" \
      --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --iters "$ITERS" -tp "$tp" \
      --output-json "$OUT/tp${tp}_b${b}.json" >"$log" 2>&1 \
      || { echo "tp=$tp batch=$b failed (exit $?), last lines of $log:"; tail -5 "$log"; }
  done
done
python scripts/tp_scaling_table.py "$OUT" $BATCHES -- "$@" | tee "$OUT/tp_scaling.md"
