"""Stored step executables: a second start in a new process loads every bucket without tracing or compiling,
and a damaged or misplaced entry is compiled again with a warning, never an error."""

import json
import os
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
pre = llm.runner.precompiler
print(json.dumps({"compilations": compile_counter.num_compilations(), "step_traces": compile_counter.num_traces("_step"),
                  "loaded": pre.loaded if pre else 0, "buckets": llm.runner.num_buckets,
                  "tokens": [o.outputs[0].token_ids for o in out]}))
"""


def _start(model, cache, precompile):
    env = dict(os.environ, JAXLLM_EXECUTABLE_CACHE="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, model, cache, precompile], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _entries(cache):
    folder = os.path.join(cache, "executables")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jaxexe"))


def test_second_start_loads_every_bucket_and_a_bad_entry_is_rebuilt(tiny_model_dir, tmp_path):
    cache = str(tmp_path / "cache")
    cold, _ = _start(tiny_model_dir, cache, "wait")
    assert cold["compilations"] > 0 and cold["step_traces"] == cold["buckets"]
    assert len(_entries(cache)) == cold["buckets"]

    warm, _ = _start(tiny_model_dir, cache, "wait")
    assert warm["step_traces"] == 0 and warm["compilations"] == 0
    assert warm["loaded"] == warm["buckets"]
    assert warm["tokens"] == cold["tokens"]

    first, second, third = _entries(cache)[:3]
    with open(first, "r+b") as f:  # damaged: garbage in the middle of the file
        f.seek(os.path.getsize(first) // 2)
        f.write(b"\0not an executable\0" * 8)
    with open(third, "rb") as f:  # misplaced: another bucket's entry under this key
        data = f.read()
    with open(second, "wb") as f:
        f.write(data)
    again, stderr = _start(tiny_model_dir, cache, "wait")
    assert stderr.count("cannot be used") == 2, stderr[-3000:]
    assert again["step_traces"] == 2 and again["loaded"] == again["buckets"] - 2
    assert again["tokens"] == cold["tokens"]

    healed, _ = _start(tiny_model_dir, cache, "wait")
    assert healed["step_traces"] == 0 and healed["loaded"] == healed["buckets"]


def test_lazy_mode_stores_what_it_compiles_and_loads_it_next_time(tiny_model_dir, tmp_path):
    cache = str(tmp_path / "cache")
    cold, _ = _start(tiny_model_dir, cache, "off")
    assert cold["loaded"] == 0 and 0 < cold["step_traces"] < cold["buckets"]  # only the buckets it needed
    warm, _ = _start(tiny_model_dir, cache, "off")
    assert warm["step_traces"] == 0 and warm["compilations"] == 0
    assert warm["loaded"] == cold["step_traces"] == len(_entries(cache))
    assert warm["tokens"] == cold["tokens"]


def test_keys_follow_everything_that_selects_a_program(tmp_path, monkeypatch):
    from jaxllm.runner.executable_store import ExecutableStore

    store = ExecutableStore(str(tmp_path))
    key = store.key({"model": "a"}, "decode step for 1 sequences")
    assert key == ExecutableStore(str(tmp_path)).key({"model": "a"}, "decode step for 1 sequences")
    assert key != store.key({"model": "b"}, "decode step for 1 sequences")
    assert key != store.key({"model": "a"}, "decode step for 2 sequences")
    monkeypatch.setenv("JAXLLM_FUSE_PROJECTIONS", "0")
    assert key != ExecutableStore(str(tmp_path)).key({"model": "a"}, "decode step for 1 sequences")
    assert store.load(key, []) is None  # absent: nothing to warn about


@pytest.mark.parametrize("value", ["0", "off"])
def test_turned_off(value, monkeypatch, tmp_path):
    from jaxllm.runner.executable_store import open_store

    monkeypatch.setenv("JAXLLM_EXECUTABLE_CACHE", value)
    assert open_store(str(tmp_path)) is None
    monkeypatch.setenv("JAXLLM_EXECUTABLE_CACHE", "1")
    assert open_store(str(tmp_path)).folder == str(tmp_path / "executables")
    assert open_store("") is None
