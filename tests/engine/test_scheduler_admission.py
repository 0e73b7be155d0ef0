"""Admission keeps room for the running sequences' growth (jaxllm/engine/scheduler.py's docstring).

The scheduler and block manager are driven directly: each step computes what it was given and every
row that reaches its newest token gets one more output token, as the engine does with a real model.
"""

import pytest

from jaxllm.config import SchedulerConfig
from jaxllm.engine.block_manager import BlockManager
from jaxllm.engine.request import Request, RequestStatus
from jaxllm.engine.scheduler import GROWTH_SMOOTHING, Scheduler
from jaxllm.sampling_params import SamplingParams

PAGE = 4


def _scheduler(num_blocks, max_num_seqs=8, max_model_len=64, chunked=True):
    config = SchedulerConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs, max_num_batched_tokens=64,
                             enable_chunked_prefill=chunked)
    return Scheduler(config, BlockManager(num_blocks, PAGE, enable_prefix_caching=True))


def _add(sched, count, prompt_len, max_tokens, start=0):
    for i in range(start, start + count):
        prompt = [(7 * i + j) % 97 + 1 for j in range(prompt_len)]
        sched.add(Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens), seed=i, max_tokens=max_tokens,
                          arrival=i))


def _drive(sched, stop_after=None):
    """Run to the end; returns (most sequences running at once, tokens computed, finished requests).
    A sequence stops (as at EOS) after `stop_after` tokens, else at its max_tokens."""
    bm = sched.block_manager
    most, computed, finished = 0, 0, []
    for _ in range(10_000):
        if not sched.has_unfinished():
            return most, computed, finished
        out = sched.schedule()
        assert out, "the scheduler stalled with work left"
        most = max(most, len(sched.running))
        for r, n in zip(out.requests, out.num_new):
            r.num_computed_tokens += n
            computed += n
            bm.register_computed(r)
            if r.num_computed_tokens < r.num_tokens:
                continue
            r.output_token_ids.append(1)
            if stop_after is not None and len(r.output_token_ids) >= stop_after:
                r.status = RequestStatus.FINISHED_STOPPED
            elif len(r.output_token_ids) >= r.max_tokens:
                r.status = RequestStatus.FINISHED_LENGTH
            else:
                continue
            sched.remove(r)
            finished.append(r)
    raise AssertionError("did not finish")


@pytest.mark.parametrize("chunked", [True, False])
def test_sequences_that_run_to_max_tokens_are_never_preempted(chunked):
    # 40 usable pages; each sequence ends at 10 + 20 tokens = 8 pages, so 5 fit to the end, 8 do not.
    sched = _scheduler(41, chunked=chunked)
    _add(sched, 12, prompt_len=10, max_tokens=20)
    most, computed, finished = _drive(sched)
    assert len(finished) == 12 and all(len(r.output_token_ids) == 20 for r in finished)
    assert sched.num_preemptions == 0
    assert most == 5  # as many as the pool holds to the end, no more
    assert computed == 12 * (10 + 20 - 1)  # nothing recomputed
    assert sched.block_manager.num_free_blocks == 40


def test_without_the_reservation_the_same_run_preempts_and_recomputes():
    sched = _scheduler(41)
    sched.growth_ratio = 0.0  # admit on the prompt's pages alone (vLLM's rule)
    _add(sched, 12, prompt_len=10, max_tokens=20)
    _, computed, finished = _drive(sched)
    assert len(finished) == 12
    assert sched.num_preemptions > 0 and computed > 12 * (10 + 20 - 1)
    assert sched.growth_ratio > 0.5  # a preemption brings whole reservations back


def test_the_ratio_learns_that_sequences_stop_early_and_admits_more():
    # Budgets of 40 tokens that stop after 4: reserving whole budgets would keep 4 running at once.
    sched = _scheduler(61, max_num_seqs=16)
    _add(sched, 48, prompt_len=8, max_tokens=40)
    most, _, finished = _drive(sched, stop_after=4)
    assert len(finished) == 48 and sched.num_preemptions == 0
    # 48 finished sequences that each used a tenth of their budget
    assert sched.growth_ratio == pytest.approx(0.1 + 0.9 * (1 - GROWTH_SMOOTHING) ** 48)
    assert most > 60 // 12  # more than whole budgets (12 pages each) would allow


def test_a_sequence_larger_than_its_reservation_still_runs_alone():
    # Its budget would need 20 pages, the pool has 9: with nothing else running it starts anyway.
    sched = _scheduler(10, max_num_seqs=2, max_model_len=80)
    _add(sched, 2, prompt_len=8, max_tokens=20)
    most, _, finished = _drive(sched)
    assert len(finished) == 2 and most == 1 and sched.num_preemptions == 0


def test_a_preemption_resets_the_ratio():
    sched = _scheduler(41)
    sched.growth_ratio = 0.25
    _add(sched, 1, prompt_len=8, max_tokens=4)
    out = sched.schedule()
    sched._preempt(out.requests[0], out)
    assert sched.growth_ratio == 1.0
