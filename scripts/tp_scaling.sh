#!/usr/bin/env bash
# Tensor-parallel decode on an 8B-Llama shape (random bf16 weights): TP=1..N, batch 1 and 64.
# Usage (on a machine with N GPUs): OUT=results bash scripts/tp_scaling.sh 1 2 4
set -u
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1
mkdir -p "${OUT:-.}"
for tp in "$@"; do
  for b in 1 64; do
    timeout 240 python scripts/benchmark_latency.py --config llama-3-8b --batch-size "$b" --input-len 128 \
      --output-len 64 --iters 2 -tp "$tp" --output-json "${OUT:-.}/tp${tp}_b${b}.json" 2>&1 \
      | grep -E '"(decode_ms_per_step|roofline_ms_per_step|ratio_to_roofline)"|Error' | tr -d '\n'; echo " tp=$tp b=$b"
  done
done
python - "$@" <<'PY'
import json, os, sys
out = os.environ.get("OUT", ".")
res = {(tp, b): json.load(open(f"{out}/tp{tp}_b{b}.json")) for tp in sys.argv[1:] for b in (1, 64)
       if os.path.exists(f"{out}/tp{tp}_b{b}.json")}
base = {b: res.get((sys.argv[1], b)) for b in (1, 64)}
for (tp, b), r in sorted(res.items()):
    ref = base[b]
    same = sum(x == y for x, y in zip(r["greedy_tokens_prompt0"], ref["greedy_tokens_prompt0"])) if ref else None
    speed = ref["decode_ms_per_step"] / r["decode_ms_per_step"] if ref else None
    print(f"tp={tp} batch={b}: {r['decode_ms_per_step']:.2f} ms/step, {r['output_tokens_per_s']:.0f} tok/s, "
          f"speedup vs tp={sys.argv[1]} {speed:.2f}x, greedy tokens equal to tp={sys.argv[1]}: {same}/{len(r['greedy_tokens_prompt0'])}")
PY
