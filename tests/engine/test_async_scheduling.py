"""Asynchronous scheduling: step N+1 is planned and launched while step N runs, and the tokens are exactly
those of the one-step-at-a-time engine, for every kind of step (a tiny model on the CPU)."""

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [{"prompt_token_ids": rng.integers(3, 390, size=int(n)).tolist()} for n in lengths]


def _engines(tiny_model_dir, **kw):
    """(async LLM, sync LLM) with the same settings."""
    args = dict(max_model_len=128, block_size=4)
    args.update(kw)
    return LLM(tiny_model_dir, **args), LLM(tiny_model_dir, async_scheduling=False, **args)


def _spy(llm):
    """Record, for every dispatched step, (is a prefill/mixed step, was planned while another was in flight)."""
    record, outstanding = [], [0]
    dispatch, collect = llm.runner.dispatch, llm.runner.collect

    def spy_dispatch(sched, bm):
        record.append((sched.is_prefill, outstanding[0] > 0))
        handle = dispatch(sched, bm)
        outstanding[0] += 1
        return handle

    def spy_collect(handle):
        outstanding[0] -= 1
        return collect(handle)

    llm.runner.dispatch, llm.runner.collect = spy_dispatch, spy_collect
    return record


def _tokens(outputs):
    return [[o.token_ids for o in out.outputs] for out in outputs]


def _check_pool_empty(llm):
    bm = llm.llm_engine.block_manager
    assert sum(bm.ref_counts[1:]) == 0 and bm.num_free_blocks == bm.num_blocks - 1


@pytest.mark.parametrize(
    "kind, kw, lengths",
    [
        ("decode", dict(max_num_seqs=8), [5, 9, 3, 17]),
        ("mixed", dict(max_num_seqs=4, max_num_batched_tokens=16), [40, 3, 23, 7, 31, 2]),
        ("admission", dict(max_num_seqs=2, enable_chunked_prefill=False, max_num_batched_tokens=128), [6, 11, 4, 9, 13]),
        ("preemption", dict(max_num_seqs=4, num_gpu_blocks_override=14, max_model_len=32), [9, 10, 11, 12]),
    ],
)
def test_tokens_identical_with_and_without_overlap(tiny_model_dir, kind, kw, lengths):
    fast, slow = _engines(tiny_model_dir, **kw)
    if kind == "preemption":  # admit as if nothing grew, so the pool runs short
        fast.llm_engine.scheduler.growth_ratio = slow.llm_engine.scheduler.growth_ratio = 0.0
    prompts = _prompts(len(kind), lengths)
    params = [GREEDY, SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True)]
    params = [params[i % 2] for i in range(len(prompts))]
    steps = _spy(fast)
    got = fast.generate(prompts, params, use_tqdm=False)
    want = slow.generate(prompts, params, use_tqdm=False)
    assert _tokens(got) == _tokens(want)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    overlapped = [pre for pre, inflight in steps if inflight]
    assert overlapped, "no step was planned while another was in flight"
    if kind in ("mixed", "admission"):
        assert any(overlapped), "no step with prompt tokens was planned while another was in flight"
    if kind == "preemption":
        assert fast.llm_engine.stats["preemptions"] > 0
    else:
        assert fast.llm_engine.stats["steps_waited"] == 0
    _check_pool_empty(fast)


def test_a_sequence_that_finishes_while_its_next_step_is_in_flight(tiny_model_dir):
    """A stop token nobody could predict: the step after it was already launched and its token is dropped."""
    fast, slow = _engines(tiny_model_dir, max_num_seqs=4)
    prompts = _prompts(3, [7, 12, 5])
    free_run = slow.generate(prompts, GREEDY, use_tqdm=False)
    stop_at = free_run[0].outputs[0].token_ids[4]  # finishes the first request after 5 tokens
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[stop_at]), GREEDY, GREEDY]
    got = fast.generate(prompts, params, use_tqdm=False)
    want = slow.generate(prompts, params, use_tqdm=False)
    assert _tokens(got) == _tokens(want)
    first = got[0].outputs[0]
    assert first.finish_reason == "stop" and first.stop_reason == stop_at and first.token_ids[-1] == stop_at
    assert len(first.token_ids) <= 5
    _check_pool_empty(fast)


def test_abort_while_a_step_is_in_flight_leaves_the_others_unchanged(tiny_model_dir):
    fast, slow = _engines(tiny_model_dir, max_num_seqs=4)
    prompts = _prompts(4, [8, 6, 10])
    want = slow.generate(prompts, GREEDY, use_tqdm=False)
    engine = fast.llm_engine
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    done, aborted = {}, False
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        if not aborted and engine._inflight is not None and len(engine._inflight[0].requests) == 3:
            engine.abort_request("r1")  # r1 is in the step on the device right now
            aborted = True
    assert aborted and "r1" not in done
    assert done["r0"].outputs[0].token_ids == want[0].outputs[0].token_ids
    assert done["r2"].outputs[0].token_ids == want[2].outputs[0].token_ids
    _check_pool_empty(fast)


def test_penalties_wait_for_their_tokens_and_stay_exact(tiny_model_dir):
    """Sampling that reads the sequence's own outputs on the host is never planned ahead of them."""
    fast, slow = _engines(tiny_model_dir, max_num_seqs=4)
    prompts = _prompts(5, [6, 9])
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, repetition_penalty=1.3, min_tokens=4)
    got = fast.generate(prompts, params, use_tqdm=False)
    assert _tokens(got) == _tokens(slow.generate(prompts, params, use_tqdm=False))
