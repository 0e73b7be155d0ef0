"""The engine with a fake runner: no jax, milliseconds per test."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.sampling_params import SamplingParams

VOCAB = 100


class FakeRunner:
    """Emits (last token + 1) % VOCAB; records what each step scheduled."""

    def __init__(self):
        self.steps = []

    def execute(self, sched, block_manager):
        seqs = sched.requests
        self.steps.append((sched.is_prefill, [s.request_id for s in seqs]))
        for s in seqs:  # every sequence's pages cover its tokens, and no page is shared
            assert len(s.block_ids) * block_manager.block_size >= s.num_tokens
        all_blocks = [b for s in seqs for b in s.block_ids]
        assert len(all_blocks) == len(set(all_blocks)) and 0 not in all_blocks
        ids = [(s.all_token_ids[-1] + 1) % VOCAB for s in seqs]
        n = len(seqs)
        return SimpleNamespace(
            sampled_token_ids=ids, logprobs=np.zeros(n), ranks=np.ones(n, int),
            top_ids=None, top_logprobs=None, prompt_logprobs={}, finite=None,
        )


class FakeAsyncRunner(FakeRunner):
    """Like the real runner: `dispatch` returns at once and the newest token of each sequence lives
    on the "device", so the engine plans step N+1 before it has read step N."""

    def __init__(self):
        super().__init__()
        self.device_tokens = {}
        self.overlapped = 0

    def dispatch(self, sched, block_manager):
        if any(s.num_pending for s in sched.requests):
            self.overlapped += 1
        self.steps.append((sched.is_prefill, [s.request_id for s in sched.requests]))
        ids = []
        for s in sched.requests:
            end = s.num_computed_tokens + s.num_new_tokens  # the row's last token is at end - 1
            known = s.all_token_ids
            # a token not on the host yet is the one the step in flight left on the "device"
            last = known[end - 1] if end <= len(known) else self.device_tokens[s.request_id]
            self.device_tokens[s.request_id] = (last + 1) % VOCAB
            ids.append(self.device_tokens[s.request_id])
        n = len(ids)
        return SimpleNamespace(
            sampled_token_ids=ids, logprobs=np.zeros(n), ranks=np.ones(n, int),
            top_ids=None, top_logprobs=None, prompt_logprobs={}, finite=None,
        )

    def complete(self, handle):  # no grammar rows here: no step is split
        pass

    def collect(self, handle):
        return handle


@pytest.fixture(params=["sync", "async"])
def runner_kind(request):
    return request.param


def make_engine(num_blocks=64, block_size=4, max_num_seqs=4, max_model_len=64, runner_kind="sync"):
    model = ModelConfig(
        path="", architecture="LlamaForCausalLM", vocab_size=VOCAB, hidden_size=8, num_layers=1,
        num_heads=1, num_kv_heads=1, head_dim=8, intermediate_size=8, dtype="float32",
        max_position_embeddings=max_model_len, eos_token_ids=(99,),
    )
    cache = CacheConfig(block_size=block_size, num_blocks=num_blocks)
    sched = SchedulerConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    runner = FakeAsyncRunner() if runner_kind == "async" else FakeRunner()
    return LLMEngine(model, cache, sched, tokenizer=None, runner=runner)


def run_all(engine):
    done = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.request_id not in done, "a request finished twice"
                done[out.request_id] = out
        steps += 1
        assert steps < 10_000
    return done


def expected_tokens(prompt, n):
    return [(prompt[-1] + 1 + i) % VOCAB for i in range(n)]


def test_engine_does_not_import_jax():
    code = "import jaxllm.engine.llm_engine, jaxllm.engine.scheduler, jaxllm, sys; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_continuous_batching_respects_max_num_seqs_and_finishes_everything(runner_kind):
    engine = make_engine(max_num_seqs=3, runner_kind=runner_kind)
    rng = np.random.default_rng(0)
    prompts = {f"r{i}": rng.integers(0, 90, size=rng.integers(1, 20)).tolist() for i in range(12)}
    lengths = {rid: int(rng.integers(1, 12)) for rid in prompts}
    for rid, p in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": p}, SamplingParams(max_tokens=lengths[rid], ignore_eos=True))
    done = run_all(engine)
    assert set(done) == set(prompts)
    for rid, out in done.items():
        assert out.outputs[0].token_ids == expected_tokens(prompts[rid], lengths[rid])
        assert out.outputs[0].finish_reason == "length"
    assert max(len(ids) for _, ids in engine.runner.steps) <= 3
    # requests joined while others were mid-generation
    decode_sets = [set(ids) for pre, ids in engine.runner.steps if not pre]
    assert any(a != b and a & b for a, b in zip(decode_sets, decode_sets[1:]))
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks - 1 and sum(bm.ref_counts[1:]) == 0
    if runner_kind == "async":
        assert engine.runner.overlapped > 0  # steps really were planned while another was in flight


def test_preemption_recomputes_and_loses_nothing(runner_kind):
    # 9 usable pages of 4 tokens; 3 sequences growing to 26 tokens cannot all stay resident.
    engine = make_engine(num_blocks=10, block_size=4, max_num_seqs=3, max_model_len=36, runner_kind=runner_kind)
    engine.scheduler.growth_ratio = 0.0  # admit as if nothing grew, so the pool runs short
    prompts = {f"r{i}": list(range(i, i + 10)) for i in range(3)}
    for rid, p in prompts.items():
        engine.add_request(rid, {"prompt_token_ids": p}, SamplingParams(max_tokens=16, ignore_eos=True))
    done = run_all(engine)
    assert engine.stats["preemptions"] > 0
    for rid, p in prompts.items():
        assert done[rid].outputs[0].token_ids == expected_tokens(p, 16)
    assert engine.block_manager.num_free_blocks == 9


def test_eos_and_stop_token_ids_finish_with_vllm_reasons(runner_kind):
    engine = make_engine(runner_kind=runner_kind)
    engine.add_request("eos", {"prompt_token_ids": [95]}, SamplingParams(max_tokens=20))
    engine.add_request("stop", {"prompt_token_ids": [10]}, SamplingParams(max_tokens=20, stop_token_ids=[13]))
    engine.add_request("min", {"prompt_token_ids": [95]}, SamplingParams(max_tokens=20, ignore_eos=True))
    done = run_all(engine)
    eos = done["eos"].outputs[0]
    assert eos.token_ids == [96, 97, 98, 99] and eos.finish_reason == "stop" and eos.stop_reason is None
    stop = done["stop"].outputs[0]
    assert stop.token_ids == [11, 12, 13] and stop.finish_reason == "stop" and stop.stop_reason == 13
    assert done["min"].outputs[0].finish_reason == "length" and len(done["min"].outputs[0].token_ids) == 20


def test_n_gives_n_completions_and_max_model_len_caps_length(runner_kind):
    engine = make_engine(max_model_len=16, runner_kind=runner_kind)
    engine.add_request("a", {"prompt_token_ids": [1, 2, 3]}, SamplingParams(n=3, max_tokens=None, ignore_eos=True))
    out = run_all(engine)["a"]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 13 and o.finish_reason == "length" for o in out.outputs)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"prompt_token_ids": []}, "cannot be empty"),
        ({"prompt_token_ids": [1, 500]}, "out of vocabulary"),
        ({"prompt_token_ids": [1, -2]}, "out of vocabulary"),
        ({"prompt_token_ids": [1, True]}, "out of vocabulary"),
        ({"prompt_token_ids": [1, 2.0]}, "out of vocabulary"),
        ({"prompt_token_ids": list(range(65))}, "longer than the maximum model length"),
        (12, "Each prompt must be"),
    ],
)
def test_bad_prompts_raise_value_error_and_queue_nothing(prompt, message):
    engine = make_engine()
    with pytest.raises(ValueError, match=message):
        engine.add_request("x", prompt, SamplingParams())
    assert not engine.has_unfinished_requests()


def test_abort_frees_blocks(runner_kind):
    engine = make_engine(runner_kind=runner_kind)
    engine.add_request("a", {"prompt_token_ids": list(range(10))}, SamplingParams(max_tokens=30, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.block_manager.num_free_blocks < 63
    engine.abort_request("a")
    assert engine.block_manager.num_free_blocks == 63
    assert run_all(engine) == {}  # a step still in flight finishes and yields nothing
    assert not engine.has_unfinished_requests()


def test_a_failing_step_fails_only_its_requests():
    engine = make_engine()
    runner = engine.runner
    calls = {"n": 0}
    original = runner.execute

    def flaky(sched, bm):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return original(sched, bm)

    runner.execute = flaky
    engine.add_request("bad", {"prompt_token_ids": [1]}, SamplingParams(max_tokens=3, ignore_eos=True))
    out = engine.step()
    assert out[0].outputs[0].finish_reason == "error"
    engine.add_request("good", {"prompt_token_ids": [1]}, SamplingParams(max_tokens=3, ignore_eos=True))
    assert run_all(engine)["good"].outputs[0].token_ids == [2, 3, 4]


def test_a_failing_step_fails_a_beam_search_instead_of_hanging():
    from jaxllm.sampling_params import BeamSearchParams

    engine = make_engine()

    def broken(sched, bm):
        raise RuntimeError("injected")

    engine.runner.execute = broken
    engine.add_beam_request("b", {"prompt_token_ids": [1, 2, 3]}, BeamSearchParams(beam_width=2, max_tokens=4))
    done = run_all(engine)
    assert done["b"].outputs[0].finish_reason == "error"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks - 1


def test_a_step_that_raises_for_one_request_fails_only_that_request(runner_kind):
    engine = make_engine(runner_kind=runner_kind)
    runner = engine.runner
    method = "dispatch" if runner_kind == "async" else "execute"
    original = getattr(runner, method)

    def poisoned(sched, bm):
        if any(s.prompt_token_ids[0] == 66 for s in sched.requests):
            raise RuntimeError("injected")
        return original(sched, bm)

    setattr(runner, method, poisoned)
    for i, first in enumerate([10, 66, 20]):
        engine.add_request(f"r{i}", {"prompt_token_ids": [first, 1]}, SamplingParams(max_tokens=5, ignore_eos=True))
    done = run_all(engine)
    assert done["r1"].outputs[0].finish_reason == "error"
    assert done["r0"].outputs[0].token_ids == [2, 3, 4, 5, 6] and done["r2"].outputs[0].token_ids == [2, 3, 4, 5, 6]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks - 1


def test_non_finite_logits_fail_only_their_row():
    engine = make_engine()
    original = engine.runner.execute

    def nan_for_77(sched, bm):
        out = original(sched, bm)
        out.finite = np.array([s.prompt_token_ids[0] != 77 for s in sched.requests])
        return out

    engine.runner.execute = nan_for_77
    engine.add_request("bad", {"prompt_token_ids": [77]}, SamplingParams(max_tokens=4, ignore_eos=True))
    engine.add_request("good", {"prompt_token_ids": [5]}, SamplingParams(max_tokens=4, ignore_eos=True))
    done = run_all(engine)
    assert done["bad"].outputs[0].finish_reason == "error"
    assert done["good"].outputs[0].token_ids == [6, 7, 8, 9]
