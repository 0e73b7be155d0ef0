#!/usr/bin/env bash
# One call that checks and times AWQ on one H200 (JSON in $OUT, a short summary last on stdout):
#   1. the layer table (scripts/bench_awq_matmul.py): dense bf16, XLA int4, the XLA dequantize+GEMM,
#      and the two Pallas kernels over several launch configurations, every output checked against
#      a float32 reference;
#   2. 8B-Llama decode (scripts/benchmark_latency.py, random weights), bf16 and AWQ with bf16
#      activations, batch 1 and 32, in the same call;
#   3. the GPU-only AWQ tests (`-m gpu`), when pytest is installed.
# Usage: OUT=results bash scripts/awq_gpu_check.sh
#   BENCH_ARGS="--tuned"   only the default kernel configurations; the full launch-configuration sweep
#                          takes about 165 s per shape on the H200 (four row counts, 24 configurations)
#   LATENCY="awq bf16"     which latency runs (empty: none);  GPU_TESTS=0 skips 3
#                          (bf16 batch 1 + 32 took 50 s; AWQ needs more than 100 s: LATENCY_TIMEOUT)
set -u
OUT=${OUT:-results}
LOGS=${LOGS:-/tmp/jaxllm-awq-logs}
mkdir -p "$OUT" "$LOGS"
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp "jax $(python -c 'import jax; print(jax.__version__, jax.devices()[0].device_kind)') $(date +%F)"

stamp "layer table"
timeout "${BENCH_TIMEOUT:-240}" python scripts/bench_awq_matmul.py --out "$OUT" --budget-s "${BENCH_BUDGET:-200}" \
  ${BENCH_ARGS:-} > "$LOGS/bench.log" 2>&1; stamp "rc=$?"
grep -E 'FAILED|Error' "$LOGS/bench.log" | cut -c1-400 | head -20


for q in ${LATENCY-awq bf16}; do
  stamp "latency $q"
  extra=""; [ "$q" = awq ] && extra="-q awq"
  JAXLLM_PRECOMPILE=off timeout "${LATENCY_TIMEOUT:-240}" python scripts/benchmark_latency.py --config llama-3-8b \
    --batch-size 1,32 --input-len 128 --output-len 128 --iters 2 $extra --output-json "$OUT/latency_$q.json" \
    > "$LOGS/latency_$q.log" 2>&1
  stamp "rc=$?"
  grep -E 'Error|WARNING|warning: AWQ' "$LOGS/latency_$q.log" | cut -c1-400 | head -8
done

if [ "${GPU_TESTS:-1}" = 1 ] && python -c "import pytest" 2>/dev/null; then
  stamp "GPU-only AWQ tests"
  timeout 120 python -m pytest -q -m gpu tests/quantization > "$LOGS/gpu_tests.log" 2>&1; stamp "rc=$?"
  tail -3 "$LOGS/gpu_tests.log" | cut -c1-300
fi
cp "$LOGS"/*.log "$OUT"/ 2>/dev/null
stamp "summary"
for q in ${LATENCY-awq bf16}; do
  [ -f "$OUT/latency_$q.json" ] && python - "$OUT/latency_$q.json" "$q" <<'PY'
import json, sys
rs = json.load(open(sys.argv[1])); rs = rs if isinstance(rs, list) else [rs]
for r in rs:
    print(f"latency {sys.argv[2]} batch {r['batch_size']}: {r['decode_ms_per_step']:.2f} ms/step, weights "
          f"{r['weights_GB']:.2f} GB, {r.get('awq_kernel_checks', '')}"[:600])
PY
done
sed -n '/^| KxN/,$p' "$LOGS/bench.log" | cut -c1-200
