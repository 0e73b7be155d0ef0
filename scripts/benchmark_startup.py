"""Time from process start to the first generated token, with a cold and a warm compilation cache.

    PYTHONPATH=.:scripts python scripts/benchmark_startup.py --config llama-3-8b

Each start is a new Python process (`python -c ...`) timed from launch to the first token of one
request; the first start fills a fresh cache folder, the second finds it. Reports XLA compilations
of each (the warm one should have none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import model_folder

CHILD = """
import json, sys, time
from jaxllm import LLM, SamplingParams
from jaxllm.runner import compile_counter
llm = LLM(sys.argv[1], load_format=sys.argv[2], compilation_cache_dir=sys.argv[3], max_model_len=int(sys.argv[4]),
          skip_tokenizer_init=True, max_num_seqs=int(sys.argv[5]))
out = llm.generate({"prompt_token_ids": list(range(1, 129))}, SamplingParams(max_tokens=1, detokenize=False),
                   use_tqdm=False)
print(json.dumps({"compilations": compile_counter.num_compilations(), "compile_s": compile_counter.seconds_building()}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model")
    src.add_argument("--config")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    args = p.parse_args()
    folder, load_format = model_folder(args)
    cache = tempfile.mkdtemp(prefix="jaxllm-startup-cache-")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    results = {}
    for name in ("cold", "warm"):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, folder, load_format, cache, str(args.max_model_len),
                               str(args.max_num_seqs)], capture_output=True, text=True, env=env, check=True)
        elapsed = time.perf_counter() - t
        results[name] = {"process_start_to_first_token_s": elapsed, **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(name, json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
