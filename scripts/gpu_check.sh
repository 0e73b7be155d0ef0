#!/usr/bin/env bash
# One call that checks and times the GPU paths on one H200 (results in $OUT, summaries on stdout):
#   1. AWQ matmuls at decode sizes: the matrix-vector kernel vs XLA vs bf16 dense (each checked
#      against a float32 reference);
#   2. 8B-Llama decode, bf16 (fused projections), batch 1 and 32;
#   3. 8B-Llama decode, AWQ (fp16 activations), batch 1 and 32 (the kernels pass their first-use
#      check or XLA runs; the JSON says which);
#   4. start-up from safetensors and from a converted checkpoint, cold and warm;
#   5. the GPU-only tests (kernels against their references), when pytest is installed.
# The checkpoint for 4 is written and converted on the CPU while 1-3 use the GPU.
# Usage: OUT=results bash scripts/gpu_check.sh
set -u
OUT=${OUT:-results}
CONFIG=${CONFIG:-llama-3-8b}  # CONFIG=tiny AWQ_BENCH_ARGS=--small: a dry run on the CPU
LOGS=${LOGS:-/tmp/jaxllm-gpu-check-logs}  # full logs stay here; $OUT gets the JSON results (at most 8 files)
mkdir -p "$OUT" "$LOGS"
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp "jax $(python -c 'import jax; print(jax.__version__, jax.devices()[0].device_kind)')"

WORK=${WORK:-/tmp/jaxllm-startup}
STARTUP="python scripts/benchmark_startup.py --config $CONFIG --work-dir $WORK"
(JAX_PLATFORMS=cpu timeout 400 $STARTUP --from safetensors,converted --prepare-only > "$LOGS/prepare.log" 2>&1; echo "rc=$?" >> "$LOGS/prepare.log") &
PREP=$!

stamp "awq matmul"
timeout 120 python scripts/bench_awq_matmul.py --rows 1 8 --impls awq_xla,awq_gemv --out "$OUT" ${AWQ_BENCH_ARGS:-} \
  > "$LOGS/awq_matmul.log" 2>&1; stamp "rc=$?"
grep -E '^\||^# copy|"error"' "$LOGS/awq_matmul.log" | cut -c1-400

for q in bf16 awq; do
  stamp "latency $q"
  extra=""; [ "$q" = awq ] && extra="-q awq --dtype float16"
  JAXLLM_PRECOMPILE=off timeout 200 python scripts/benchmark_latency.py --config "$CONFIG" --batch-size 1,32 --input-len 128 \
    --output-len 128 --iters 2 $extra --output-json "$OUT/latency_$q.json" > "$LOGS/latency_$q.log" 2>&1
  stamp "rc=$?"
  grep -E '^\{"batch_size"|Error|WARNING' "$LOGS/latency_$q.log" | cut -c1-600
done

stamp "waiting for the checkpoint"; wait "$PREP"; cat "$LOGS/prepare.log" | grep -E '^\{|rc=|Error' | cut -c1-300
stamp "startup"
formats=safetensors; grep -q '"jaxllm convert"' "$LOGS/prepare.log" && formats=safetensors,converted
$STARTUP --from $formats --out "$OUT" > "$LOGS/startup.log" 2>&1; stamp "rc=$?"
grep -E '^\{|Error' "$LOGS/startup.log" | cut -c1-900
if [ "${GPU_TESTS:-1}" = 1 ] && python -c "import pytest" 2>/dev/null; then
  stamp "GPU-only tests"
  timeout 240 python -m pytest -q -m gpu tests/kernels tests/quantization > "$LOGS/gpu_tests.log" 2>&1; stamp "rc=$?"
  tail -5 "$LOGS/gpu_tests.log" | cut -c1-300
fi
stamp done
