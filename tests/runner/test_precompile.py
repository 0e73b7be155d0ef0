"""Ahead-of-time compilation of every step bucket (runner/precompile.py, runner/abstract_params.py)."""

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.runner import abstract_params, compile_counter
from jaxllm.runner.precompile import Precompiler, resolve_mode

# Small buckets: decode 1, 2, 4; prefill 16, 32, 64 tokens in two layouts -> 9 executables.
ENGINE = dict(max_model_len=128, max_num_seqs=4, max_num_batched_tokens=64)


def _workload():
    """Mixed prompt lengths and batch sizes: chunked prompts (> 64 tokens), shared prefixes (ragged
    prefill after cached pages), decode batches of 1 to 4, greedy and seeded sampling."""
    rng = np.random.default_rng(0)
    shared = rng.integers(3, 390, size=40).tolist()
    prompts = [{"prompt_token_ids": rng.integers(3, 390, size=int(n)).tolist()} for n in (1, 5, 17, 33, 70, 100)]
    prompts += [{"prompt_token_ids": shared + [7] * k} for k in (1, 9)]
    params = [SamplingParams(temperature=0, max_tokens=int(m), ignore_eos=True) for m in (3, 9, 1, 6, 4, 12, 5, 2)]
    params[2] = SamplingParams(temperature=0.8, seed=11, max_tokens=7, ignore_eos=True)
    return prompts, params


def _generate(llm, prompts, params):
    first = llm.generate(prompts[:1], params[:1], use_tqdm=False)  # one alone, then the rest together
    return [o.outputs[0].token_ids for o in first + llm.generate(prompts[1:], params[1:], use_tqdm=False)]


def _steps_built_since(before) -> int:
    """Model-step executables built since `before` (other tests in this process may build unrelated ones)."""
    new = compile_counter.executables_by_name() - before
    return sum(n for name, n in new.items() if name == "jit(_step)")


def test_precompile_covers_every_bucket_then_nothing_compiles(tiny_model_dir):
    llm = LLM(tiny_model_dir, precompile="background", **ENGINE)
    runner = llm.runner
    assert runner.precompiler is not None and runner.precompiler.total == runner.num_buckets == 9
    prompts, params = _workload()
    early = _generate(llm, prompts[:2], params[:2])  # runs while buckets may still be compiling
    runner.precompiler.wait(timeout=600)
    before = compile_counter.executables_by_name()
    tokens = _generate(llm, prompts, params)
    assert _steps_built_since(before) == 0, "a step compiled after precompilation"
    assert early == tokens[:2]

    lazy = LLM(tiny_model_dir, precompile="off", **ENGINE)
    assert lazy.runner.precompiler is None
    assert _generate(lazy, prompts, params) == tokens


def test_wait_mode_returns_compiled_and_a_failure_raises(tiny_model_dir, monkeypatch, caplog):
    llm = LLM(tiny_model_dir, precompile="wait", **ENGINE)
    assert llm.runner.precompiler.done and llm.runner.precompiler.error is None

    real = Precompiler._compile

    def broken(self, bucket):
        if bucket.name == "decode step for 2 sequences":
            raise ValueError("simulated compiler failure")
        return real(self, bucket)

    monkeypatch.setattr(Precompiler, "_compile", broken)
    with pytest.raises(RuntimeError, match="decode step for 2 sequences ahead of time failed.*simulated"):
        LLM(tiny_model_dir, precompile="wait", **ENGINE)
    llm = LLM(tiny_model_dir, precompile="background", **ENGINE)
    with pytest.raises(RuntimeError, match="simulated compiler failure"):
        llm.runner.precompiler.wait(timeout=600)  # no hang: every other bucket finishes, then it raises
    # Only the steps that need the failed bucket fail, as after a failed lazy compilation: the engine
    # retries a failed 2-sequence decode one sequence at a time, in the working 1-sequence bucket.
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    pair = llm.generate(["hello", "import os"], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in pair] == [3, 3]
    assert "Model step failed (Compiling the decode step for 2 sequences ahead of time failed" in caplog.text
    assert not llm.llm_engine.has_unfinished_requests()


def test_a_wrong_prediction_is_caught_and_compiled_again(tiny_model_dir, monkeypatch, caplog):
    real = abstract_params.predict

    def off_by_one(runner, load_format):
        tree = real(runner, load_format)
        tree["embed"] = tree["embed"].update(shape=(tree["embed"].shape[0] + 1, tree["embed"].shape[1]))
        return tree

    monkeypatch.setattr(abstract_params, "predict", off_by_one)
    llm = LLM(tiny_model_dir, precompile="wait", **ENGINE)
    assert "differ from their prediction" in caplog.text and "embed" in caplog.text
    before = compile_counter.executables_by_name()
    out = llm.generate(["hello world"], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3 and _steps_built_since(before) == 0


@pytest.mark.parametrize("load", ["safetensors", "dummy", "int8", "tp2", "tp4"])
def test_predicted_parameters_equal_the_loaded_ones(tiny_model_dir, load):
    kwargs = dict(max_model_len=64, max_num_seqs=2, precompile="off")
    kwargs |= {"dummy": dict(load_format="dummy"), "int8": dict(quantization="int8"),
               "tp2": dict(tensor_parallel_size=2), "tp4": dict(tensor_parallel_size=4)}.get(load, {})
    runner = LLM(tiny_model_dir, skip_tokenizer_init=True, **kwargs).runner
    predicted = abstract_params.predict(runner, kwargs.get("load_format", "auto"))
    assert predicted is not None
    assert abstract_params.difference(predicted, abstract_params.abstract(runner.params)) is None


def test_predicted_parameters_of_a_converted_checkpoint(tiny_model_dir, tmp_path):
    from jaxllm.converted_checkpoint import convert

    out = convert(tiny_model_dir, str(tmp_path / "converted"), dtype="bfloat16")
    for tp in (1, 4):
        runner = LLM(out, max_model_len=64, max_num_seqs=2, skip_tokenizer_init=True, precompile="off",
                     tensor_parallel_size=tp).runner
        predicted = abstract_params.predict(runner, "auto")
        assert abstract_params.difference(predicted, abstract_params.abstract(runner.params)) is None


def test_precompiled_tensor_parallel_steps(tiny_model_dir):
    engine = dict(max_model_len=64, max_num_seqs=2, max_num_batched_tokens=32, tensor_parallel_size=2)
    llm = LLM(tiny_model_dir, precompile="wait", **engine)
    prompts = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 20)]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    before = compile_counter.executables_by_name()
    tokens = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert _steps_built_since(before) == 0
    lazy = LLM(tiny_model_dir, precompile="off", **engine)
    assert [o.outputs[0].token_ids for o in lazy.generate(prompts, params, use_tqdm=False)] == tokens


def test_resolve_mode(monkeypatch):
    monkeypatch.delenv("JAXLLM_PRECOMPILE", raising=False)
    assert resolve_mode(None) == "off"  # auto: CPU compiles one program at a time
    assert resolve_mode(True) == resolve_mode("on") == resolve_mode("background") == "background"
    assert resolve_mode(False) == resolve_mode("0") == "off"
    assert resolve_mode("wait") == "wait"
    assert resolve_mode(None, enforce_eager=True) == "off"
    monkeypatch.setenv("JAXLLM_PRECOMPILE", "wait")
    assert resolve_mode(None) == "wait" and resolve_mode(False) == "off"
    assert resolve_mode(None, enforce_eager=True) == "off"
    with pytest.raises(ValueError, match="precompile must be one of"):
        resolve_mode("sometimes")


def test_command_line_flags():
    from jaxllm.engine.arg_utils import engine_kwargs
    from jaxllm.entrypoints.cli import build_parser

    kwargs = engine_kwargs(build_parser().parse_args(["generate", "hi", "--precompile", "wait"]))
    assert kwargs["precompile"] == "wait" and "enforce_eager" not in kwargs
    kwargs = engine_kwargs(build_parser().parse_args(["serve", "some/model", "--enforce-eager"]))
    assert kwargs["enforce_eager"] is True and "precompile" not in kwargs


EXIT_SCRIPT = """
import atexit, json, sys
from jaxllm import LLM
llm = LLM(sys.argv[1], precompile="background", max_model_len=128, max_num_seqs=64, compilation_cache_dir="",
          skip_tokenizer_init=True)
buckets = list(llm.runner.precompiler._buckets.values())
atexit.register(lambda: print(json.dumps({"built": sum(b.compiled is not None for b in buckets), "total": len(buckets)})))
"""


def test_a_script_that_ends_does_not_wait_for_queued_buckets(tiny_model_dir):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, tiny_model_dir], capture_output=True, text=True,
                          timeout=600, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total"] == 23 and result["built"] < result["total"] // 2
