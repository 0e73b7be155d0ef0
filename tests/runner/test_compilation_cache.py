"""A second start of the same model and settings, in a new process, compiles nothing."""

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from jaxllm import LLM, SamplingParams
from jaxllm.runner import compile_counter
llm = LLM(sys.argv[1], max_model_len=64, max_num_seqs=2, max_num_batched_tokens=32, compilation_cache_dir=sys.argv[2],
          precompile=sys.argv[3])
out = llm.generate(["hello world", "import os"], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                   use_tqdm=False)
print(json.dumps({"compilations": compile_counter.num_compilations(),
                  "executables": compile_counter.num_executables(),
                  "tokens": [o.outputs[0].token_ids for o in out]}))
"""


def _start(model, cache, precompile):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, model, cache, precompile], capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("precompile", ["off", "wait"])
def test_warm_start_compiles_nothing(tiny_model_dir, tmp_path, precompile):
    cache = str(tmp_path / "xla-cache")
    cold = _start(tiny_model_dir, cache, precompile)
    warm = _start(tiny_model_dir, cache, precompile)
    assert cold["compilations"] > 0
    assert warm["compilations"] == 0 and warm["executables"] == cold["executables"]
    assert warm["tokens"] == cold["tokens"]
