#!/usr/bin/env bash
# One call that checks and times the GPU paths on one H200 (JSON results in $OUT, summaries on stdout).
# SECTIONS picks what runs, in order (default: all of them):
#   throughput  offline throughput, vLLM's protocol (scripts/benchmark_throughput.py, random weights):
#               Llama-3-8B shape 1024/1024 with the defaults (chunked prefill, prefix caching, async
#               scheduling, and vLLM's limits for GPUs of 70 GiB and more: 1024 sequences, 16,384 batched
#               tokens) and with chunked prefill and prefix caching off; Qwen2.5-1.5B shape 128/128
#               (with transformers as the peer) and 1024/128
#               (THROUGHPUT_RUNS picks among 8b_defaults small_128 small_1024_128 8b_off, and 8b_seqs256 /
#               8b_seqs512 / small_128_seqs256: the same runs at max_num_seqs 256 / 512)
#   structured  Qwen2.5-1.5B shape 128/128 with a JSON schema on every request, and on none, same run
#   profile     where the small model's decode step goes at batch 256: the device's kernels from a trace
#               (scripts/profile_decode_step.py --trace, and the step's optimized HLO), the step with XLA's scatter for the K/V write and
#               without Triton GEMM fusions; the K/V write alone (scripts/bench_kv_write.py)
#   sampler     scripts/bench_sampler.py: the sampler's cost at batch 256 over a 151,936-token vocabulary
#   serving     the online benchmark (scripts/benchmark_serving.py) against `jaxllm serve --load-format
#               dummy`, 8B shape, 1024/1024, max concurrency 1, 16, 64, 256 (needs the .whl folder carried:
#               fastapi, uvicorn and their dependencies)
#   fp8         the paged-attention kernel table with float8 pages beside bf16 pages of the same values,
#               and the 8B 1024/1024 throughput with --kv-cache-dtype fp8 (compare with 8b_defaults)
#   fp8tput     only that throughput run
#   fp8modes    that run with the decode kernel widening float8 pages to bfloat16 (the default is
#               float16), and with float8 dots
#   sweep       launch-config sweeps of the decode kernel where its defaults are untuned: float8 pages at
#               the 8B heads (B=8 L=8192, B=64 L=2048) and bf16 pages at the small model's 12/2 heads
#               (B=256 L=256)
#   ragged      scripts/bench_ragged_attention.py: launches of the ragged (prefill) kernel on 16,384-token
#               steps of fresh prompts, beside XLA
#   trace       the small model's 128/128 run traced (benchmark_throughput.py --trace): kernels, idle gaps
#   awq         scripts/awq_gpu_check.sh (AWQ layer table and 8B decode, AWQ vs bf16)
#   startup     scripts/benchmark_startup.py: 8B shape from real safetensors and a converted checkpoint
#   tests       the GPU-only tests (kernels against their references)
# Usage: OUT=results SECTIONS="throughput serving" bash scripts/gpu_check.sh
#   NUM_PROMPTS=1000 (throughput), CONFIG=tiny for a dry run on the CPU.
set -u
OUT=${OUT:-results}
CONFIG=${CONFIG:-llama-3-8b}
SMALL=${SMALL:-qwen2.5-1.5b}
NUM_PROMPTS=${NUM_PROMPTS:-1000}
SECTIONS=${SECTIONS:-profile sampler throughput structured serving fp8 sweep awq startup tests}
THROUGHPUT_RUNS=${THROUGHPUT_RUNS:-8b_defaults small_128 small_1024_128 8b_off}
LOGS=${LOGS:-/tmp/jaxllm-gpu-check-logs}  # full logs stay here; $OUT gets the results (at most 8 files)
mkdir -p "$OUT" "$LOGS"
export PYTHONPATH=.:scripts${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
stamp "jax $(python -c 'import jax; print(jax.__version__, jax.devices()[0].device_kind)') $(date +%F)"

summary() {  # the headline numbers of a benchmark_throughput JSON
  python - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["args"]
print(f"  {a.get('config')} {a['input_len']}/{a['output_len']} seqs={r.get('max_num_seqs', a.get('max_num_seqs'))} "
      f"tokens={r.get('max_num_batched_tokens', a.get('max_num_batched_tokens'))} chunked={a.get('enable_chunked_prefill')} "
      f"prefix={a.get('enable_prefix_caching')} async={a.get('async_scheduling')}: "
      f"{r['output_tokens_per_s']:.0f} out tok/s ({100 * r['ratio_to_roofline']:.1f}% of {r['roofline_output_tokens_per_s']:.0f}), "
      f"{r['steps']} steps, {r['steps_waited_for_host']} waited, {r['preemptions']} preemptions, pool {r['pool_tokens']} tokens, "
      f"hf {r.get('hf_output_tokens_per_s')}, structured {r.get('structured_requests')}")
PY
}

throughput() {  # name, extra args
  local name=$1; shift
  case " $THROUGHPUT_RUNS structured_0 structured_1 8b_fp8 8b_fp8_bf16 8b_fp8_dots " in *" $name "*) ;; *) return ;; esac
  stamp "throughput $name"
  timeout "${THROUGHPUT_TIMEOUT:-300}" python scripts/benchmark_throughput.py --num-prompts "$NUM_PROMPTS" \
    --output-json "$OUT/throughput_$name.json" "$@" > "$LOGS/throughput_$name.log" 2>&1
  stamp "rc=$?"
  grep -E 'Error|error:' "$LOGS/throughput_$name.log" | cut -c1-300 | tail -3
  [ -f "$OUT/throughput_$name.json" ] && summary "$OUT/throughput_$name.json"
}

for section in $SECTIONS; do
  case $section in
    throughput)
      throughput 8b_defaults --config "$CONFIG" --input-len 1024 --output-len 1024
      throughput small_128 --config "$SMALL" --input-len 128 --output-len 128 --hf-peer-prompts 64
      throughput small_1024_128 --config "$SMALL" --input-len 1024 --output-len 128
      throughput 8b_off --config "$CONFIG" --input-len 1024 --output-len 1024 --no-enable-chunked-prefill \
        --no-enable-prefix-caching
      throughput 8b_seqs256 --config "$CONFIG" --input-len 1024 --output-len 1024 --max-num-seqs 256 \
        --max-num-batched-tokens 2048
      throughput 8b_seqs512 --config "$CONFIG" --input-len 1024 --output-len 1024 --max-num-seqs 512
      throughput small_128_seqs256 --config "$SMALL" --input-len 128 --output-len 128 --max-num-seqs 256 \
        --max-num-batched-tokens 2048
      ;;
    structured)
      throughput structured_1 --config "$SMALL" --input-len 128 --output-len 128 --structured-output-ratio 1
      throughput structured_0 --config "$SMALL" --input-len 128 --output-len 128
      ;;
    profile)
      prof() {  # log name, then extra arguments of profile_decode_step.py
        local name=$1; shift
        timeout 200 python scripts/profile_decode_step.py --config "$SMALL" --batch-size 256 --context 192 "$@" \
          > "$LOGS/$name.log" 2>&1; stamp "$name rc=$?"
        grep -vE 'Loading|it/s\]|cuda_timer' "$LOGS/$name.log" | cut -c1-220 | tail -"${PROFILE_LINES:-2}"
      }
      stamp "profile: $SMALL decode step, batch 256, context 192"
      PROFILE_LINES=40 prof profile --trace /tmp/jaxllm-trace --hlo "$LOGS/decode_step_hlo.txt"
      cp "$LOGS/profile.log" "$OUT/"; gzip -c "$LOGS/decode_step_hlo.txt" > "$OUT/decode_step_hlo.txt.gz"
      prof profile_xla_kv_write --kv-write xla
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" prof profile_no_triton_gemm
      timeout 150 python scripts/bench_kv_write.py > "$LOGS/kv_write.log" 2>&1; stamp "kv write rc=$?"
      grep -E '^\||^jax|Error' "$LOGS/kv_write.log" | cut -c1-300
      ;;
    sampler)
      stamp "sampler"
      timeout 120 python scripts/bench_sampler.py --output-json "$OUT/sampler.json" > "$LOGS/sampler.log" 2>&1
      stamp "rc=$?"; grep -E '^\||^jax|Error' "$LOGS/sampler.log" | cut -c1-300
      ;;
    sweep)
      stamp "sweep: float8 pages, 32/8 heads"
      timeout 400 python scripts/bench_paged_attention.py --kv-cache-dtype fp8 --sweep --shapes 8x8192,64x2048 \
        --out "$OUT" --tag sweep_fp8 > "$LOGS/sweep_fp8.log" 2>&1; stamp "rc=$?"
      grep -vE '^\s*$' "$LOGS/sweep_fp8.log" | grep -E 'best|TB/s|Error' | cut -c1-200 | tail -30
      stamp "sweep: bf16 pages, 12/2 heads"
      timeout 200 python scripts/bench_paged_attention.py --sweep --shapes 256x256 --heads 12/2 \
        --out "$OUT" --tag sweep_small > "$LOGS/sweep_small.log" 2>&1; stamp "rc=$?"
      grep -vE '^\s*$' "$LOGS/sweep_small.log" | grep -E 'best|TB/s|Error' | cut -c1-200 | tail -20
      ;;
    ragged)
      stamp "ragged: prefill launches, 32/8 and 12/2 heads, 16,384-token steps"
      timeout 400 python scripts/bench_ragged_attention.py --out "$OUT" > "$LOGS/ragged.log" 2>&1; stamp "rc=$?"
      grep -E '^\||Error' "$LOGS/ragged.log" | cut -c1-200 | tail -40
      ;;
    trace)
      stamp "trace: the small model's 128/128 run, device kernels and idle gaps"
      timeout 200 python scripts/benchmark_throughput.py --config "$SMALL" --input-len 128 --output-len 128 \
        --num-prompts "$NUM_PROMPTS" --trace /tmp/jaxllm-trace > "$LOGS/trace.log" 2>&1; stamp "rc=$?"
      grep -E '^(device|idle|longest|  [0-9]|\|)|output_tokens_per_s' "$LOGS/trace.log" | cut -c1-200 | head -45
      ;;
    fp8tput)
      throughput 8b_fp8 --config "$CONFIG" --input-len 1024 --output-len 1024 --kv-cache-dtype fp8
      ;;
    fp8modes)
      throughput 8b_fp8_bf16 --config "$CONFIG" --input-len 1024 --output-len 1024 --kv-cache-dtype fp8 \
        --fp8-compute-dtype bfloat16
      throughput 8b_fp8_dots --config "$CONFIG" --input-len 1024 --output-len 1024 --kv-cache-dtype fp8 \
        --fp8-compute-dtype float8_e4m3fn
      ;;
    serving)
      stamp "serving"
      timeout "${SERVING_TIMEOUT:-420}" python scripts/benchmark_serving.py --config "$CONFIG" \
        --server-args "--max-num-seqs 256 --max-model-len 2048 --precompile wait --disable-log-stats --disable-uvicorn-access-log" \
        --random-input-len 1024 --random-output-len 1024 --num-prompts "${SERVING_PROMPTS:-4,32,128,512}" \
        --max-concurrency 1,16,64,256 --ignore-eos --save-result --result-dir "$OUT" > "$LOGS/serving.log" 2>&1
      stamp "rc=$?"
      grep -vE '^\s*$' "$LOGS/serving.log" | grep -E 'concurrency|tok/s|TTFT|TPOT|ITL|Error|error' | cut -c1-200 | tail -60
      ;;
    fp8)
      stamp "fp8 kernel table"
      timeout 240 python scripts/bench_paged_attention.py --kv-cache-dtype fp8 --out "$OUT" --tag bench_fp8 \
        > "$LOGS/bench_fp8.log" 2>&1; stamp "rc=$?"
      grep -E '^\||Error' "$LOGS/bench_fp8.log" | cut -c1-300 | tail -30
      throughput 8b_fp8 --config "$CONFIG" --input-len 1024 --output-len 1024 --kv-cache-dtype fp8
      ;;
    awq)
      stamp "awq"; OUT="$OUT" LOGS="$LOGS/awq" bash scripts/awq_gpu_check.sh 2>&1 | tail -40
      ;;
    startup)
      stamp "startup"
      timeout 300 python scripts/benchmark_startup.py --config "$CONFIG" --work-dir /tmp/jaxllm-startup \
        --from safetensors,converted --prepare-only > "$LOGS/startup_prepare.log" 2>&1; stamp "prepared rc=$?"
      timeout 400 python scripts/benchmark_startup.py --config "$CONFIG" --work-dir /tmp/jaxllm-startup \
        --from safetensors,converted --precompile background --out "$OUT" > "$LOGS/startup.log" 2>&1; stamp "rc=$?"
      grep -E '^\{|Error|^phase|^\|' "$LOGS/startup.log" | cut -c1-300 | tail -40
      ;;
    tests)
      if python -c "import pytest" 2>/dev/null; then
        stamp "GPU-only tests"
        timeout 240 python -m pytest -q -m gpu tests/kernels tests/quantization > "$LOGS/gpu_tests.log" 2>&1
        stamp "rc=$?"; tail -5 "$LOGS/gpu_tests.log" | cut -c1-300
      fi
      ;;
  esac
done
stamp done
