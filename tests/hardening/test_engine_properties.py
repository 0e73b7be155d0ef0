"""The block manager and the scheduler under random add / step / abort / preempt, through `LLMEngine`.

A hypothesis state machine drives an engine over a small KV pool (so the scheduler preempts on its own
too) with the sync and the overlapping fake runner, with and without chunked prefill (small token
budgets split prompts) and prefix caching, sampled requests (n, best_of, every output kind) and beam
searches. After every action:

* every page is either free (reference count 0, in the free list or the prefix cache's LRU, once) or
  owned: its reference count is the number of live sequences holding it; no count is ever negative; the
  null page is never handed out;
* every sequence in the queues is unfinished and appears once; waiting sequences hold no pages;
* the engine tracks exactly the requests that were added and have neither finished nor been aborted.

At the end the engine is drained: every request finished exactly once (or was aborted and never heard of
again), outputs are the tokens the fake runner emits (nothing lost or repeated across preemptions), no
request failed, and every page is free.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.engine.block_manager import NULL_BLOCK
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.engine.scheduler import SchedulerOutput
from jaxllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from tests.engine.test_engine_fake_runner import VOCAB
from tests.hardening.conftest import examples
from tests.hardening.runners import HostRunner, OverlapRunner

EOS = 99
MAX_MODEL_LEN = 40
BLOCK_SIZE = 4
MIN_BLOCKS = 1 + MAX_MODEL_LEN // BLOCK_SIZE  # the real runner refuses a pool that cannot hold max_model_len


def build_engine(runner, num_blocks: int, max_num_seqs: int, *, chunked: bool = True, prefix_caching: bool = True,
                 max_num_batched_tokens: int | None = None) -> LLMEngine:
    model = ModelConfig(
        path="", architecture="LlamaForCausalLM", vocab_size=VOCAB, hidden_size=8, num_layers=1,
        num_heads=1, num_kv_heads=1, head_dim=8, intermediate_size=8, dtype="float32",
        max_position_embeddings=MAX_MODEL_LEN, eos_token_ids=(EOS,),
    )
    cache = CacheConfig(block_size=BLOCK_SIZE, num_blocks=num_blocks, enable_prefix_caching=prefix_caching)
    sched = SchedulerConfig(max_model_len=MAX_MODEL_LEN, max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=chunked)
    return LLMEngine(model, cache, sched, tokenizer=None, runner=runner)


def expected_tokens(prompt: list[int], max_tokens: int, ignore_eos: bool) -> tuple[list[int], str]:
    """What the fake runners generate: last + 1, ... until EOS (unless ignored) or the budget."""
    budget = min(max_tokens, MAX_MODEL_LEN - len(prompt))
    out: list[int] = []
    for i in range(budget):
        out.append((prompt[-1] + 1 + i) % VOCAB)
        if out[-1] == EOS and not ignore_eos:
            return out, "stop"
    return out, "length"


def check_pool(engine: LLMEngine) -> None:
    """Every page is free or owned, with a reference count equal to its number of holders."""
    bm, sched = engine.block_manager, engine.scheduler
    queued = list(sched.running) + list(sched.waiting)
    assert len({id(s) for s in queued}) == len(queued), "a sequence is queued twice"
    assert all(not s.is_finished for s in queued), "a finished sequence is still queued"
    assert all(not s.block_ids for s in sched.waiting), "a waiting sequence holds pages"
    holders = Counter(b for s in queued for b in s.block_ids)
    free = list(bm.free_blocks) + list(getattr(bm, "lru", ()))  # prefix caching keeps named free pages apart
    assert len(free) == len(set(free)), "a page is free twice"
    assert bm.num_free_blocks == len(free)
    assert NULL_BLOCK not in holders and NULL_BLOCK not in free and bm.ref_counts[NULL_BLOCK] == 1
    for page in range(1, bm.num_blocks):
        count = bm.ref_counts[page]
        assert count >= 0, f"page {page} has a negative reference count"
        assert count == holders.get(page, 0), f"page {page}: ref count {count}, held {holders.get(page, 0)} times"
        assert (count == 0) == (page in free), f"page {page}: ref count {count}, free={page in free}"


prompts = st.lists(st.integers(0, VOCAB - 2), min_size=1, max_size=14)


class EngineMachine(RuleBasedStateMachine):
    """Random add / step / abort / preempt against one engine; see the module docstring."""

    runner_cls: type = HostRunner
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self.engine: LLMEngine | None = None
        self.expected: dict[str, dict] = {}  # request id -> what it must produce
        self.live: set[str] = set()
        self.aborted: set[str] = set()
        self.done: dict[str, object] = {}
        self.deltas: dict[str, dict[int, list[int]]] = {}
        self.cursors: dict = {}
        self.ids = 0

    @initialize(num_blocks=st.integers(MIN_BLOCKS, 40), max_num_seqs=st.integers(1, 6), chunked=st.booleans(),
                prefix_caching=st.booleans(), token_budget=st.integers(4, 64))
    def make_engine(self, num_blocks, max_num_seqs, chunked, prefix_caching, token_budget) -> None:
        budget = token_budget if chunked else max(token_budget, MAX_MODEL_LEN)  # a whole prompt must fit
        self.engine = build_engine(self.runner_cls(), num_blocks, max_num_seqs, chunked=chunked,
                                   prefix_caching=prefix_caching, max_num_batched_tokens=budget)

    # ---- actions -------------------------------------------------------------------------------

    @rule(target=requests, prompt=prompts, max_tokens=st.integers(1, 20), n=st.integers(1, 3),
          extra=st.integers(0, 2), ignore_eos=st.booleans(), kind=st.sampled_from(list(RequestOutputKind)))
    def add_sampled(self, prompt, max_tokens, n, extra, ignore_eos, kind) -> str:
        tokens, reason = expected_tokens(prompt, max_tokens, ignore_eos)
        rid = f"s{self.ids}"
        self.ids += 1
        best_of = n + extra if extra else None
        params = SamplingParams(n=n, best_of=best_of, temperature=1.0, max_tokens=max_tokens, ignore_eos=ignore_eos,
                                output_kind=kind)
        self.engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        self.expected[rid] = {"kind": "sampled", "n": n, "tokens": tokens, "reason": reason, "delta": kind}
        self.live.add(rid)
        return rid

    @rule(target=requests, prompt=prompts, width=st.integers(1, 3), max_tokens=st.integers(1, 8))
    def add_beam(self, prompt, width, max_tokens) -> str:
        length = min(max_tokens, MAX_MODEL_LEN - len(prompt))
        rid = f"b{self.ids}"
        self.ids += 1
        params = BeamSearchParams(beam_width=width, max_tokens=max_tokens, ignore_eos=True)
        self.engine.add_beam_request(rid, {"prompt_token_ids": prompt}, params)
        self.expected[rid] = {"kind": "beam", "n": width, "length": length}
        self.live.add(rid)
        return rid

    @rule(times=st.integers(1, 4))
    def step(self, times: int) -> None:
        for _ in range(times):
            self._step()

    @rule(rid=consumes(requests))
    def abort(self, rid: str) -> None:
        self.engine.abort_request(rid)
        if rid in self.live:
            self.live.discard(rid)
            self.aborted.add(rid)

    @rule()
    def abort_unknown(self) -> None:
        self.engine.abort_request("no-such-request")

    @precondition(lambda self: self.engine is not None and self.engine._inflight is None)
    @rule(data=st.data())
    def preempt(self, data) -> None:
        """Preempt a running sequence between steps, as the scheduler does when the pool runs dry."""
        sched = self.engine.scheduler
        candidates = [s for s in sched.running if not s.on_hold]
        if not candidates:
            return
        victim = data.draw(st.sampled_from(candidates))
        sched.running.remove(victim)
        sched._preempt(victim, SchedulerOutput(is_prefill=False))

    def _step(self) -> None:
        for out in self.engine.step(self.cursors):
            rid = out.request_id
            assert rid not in self.aborted, f"{rid} produced output after it was aborted"
            assert rid in self.expected, f"output for unknown request {rid}"
            assert rid not in self.done, f"{rid} produced output after it finished"
            if self.expected[rid].get("delta") is RequestOutputKind.DELTA:
                acc = self.deltas.setdefault(rid, {})
                for o in out.outputs:
                    acc.setdefault(o.index, []).extend(o.token_ids)
            elif self.expected[rid].get("delta") is RequestOutputKind.FINAL_ONLY:
                assert out.finished, f"{rid} (FINAL_ONLY) produced an unfinished output"
            if out.finished:
                self.done[rid] = out
                self.live.discard(rid)
                for i in range(8):
                    self.cursors.pop(f"{rid}-{i}", None)

    # ---- invariants ----------------------------------------------------------------------------

    @invariant()
    def pool_is_consistent(self) -> None:
        if self.engine is not None:
            check_pool(self.engine)

    @invariant()
    def tracks_exactly_the_live_requests(self) -> None:
        if self.engine is None:
            return
        assert self.engine.get_num_unfinished_requests() == len(self.live)
        if self.live:
            assert self.engine.has_unfinished_requests()

    # ---- the end -------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.engine is None:
            return
        for _ in range(5000):
            if not self.engine.has_unfinished_requests():
                break
            self._step()
            check_pool(self.engine)
        assert not self.engine.has_unfinished_requests(), "the engine did not drain"
        assert not self.live, f"requests lost: {sorted(self.live)}"
        assert set(self.done) | self.aborted == set(self.expected)
        for rid, out in self.done.items():
            want = self.expected[rid]
            outputs = out.outputs
            assert all(o.finish_reason != "error" for o in outputs), f"{rid} failed: {outputs}"
            assert len(outputs) == want["n"], f"{rid}: {len(outputs)} outputs, want {want['n']}"
            if want["kind"] == "beam":
                assert all(len(o.token_ids) == want["length"] and o.finish_reason == "length" for o in outputs)
                continue
            assert sorted(o.index for o in outputs) == list(range(want["n"]))
            for o in outputs:
                tokens = self.deltas[rid][o.index] if want["delta"] is RequestOutputKind.DELTA else o.token_ids
                assert list(tokens) == want["tokens"], f"{rid}[{o.index}]: {list(tokens)} != {want['tokens']}"
                assert o.finish_reason == want["reason"]
        bm = self.engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks - 1 and sum(bm.ref_counts[1:]) == 0, "pages leaked"


class OverlapEngineMachine(EngineMachine):
    runner_cls = OverlapRunner


_SETTINGS = settings(max_examples=examples(150), stateful_step_count=50)


@pytest.mark.parametrize("machine", [EngineMachine, OverlapEngineMachine], ids=["sync", "overlap"])
def test_engine_state_machine(machine):
    case = machine.TestCase
    case.settings = _SETTINGS
    case().runTest()


# ---- engine bugs the state machine found (minimal reproductions) --------------------------------


def _drain(engine: LLMEngine, max_steps: int = 500) -> dict:
    done = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        done.update((o.request_id, o) for o in engine.step() if o.finished)
    return done


# A beam preempted while its siblings wait on hold for the round to complete must still finish: held
# beams give up their pages under pressure and do not count against max_num_seqs.


@pytest.mark.parametrize("runner_cls", [HostRunner, OverlapRunner], ids=["sync", "overlap"])
def test_beam_search_finishes_when_the_pool_runs_short(runner_cls):
    # 10 usable pages of 4 tokens = max_model_len. Two beams of 8 + 30 tokens cannot both stay resident:
    # one is preempted while the other waits on hold for it, holding all 10 pages (once a deadlock).
    engine = build_engine(runner_cls(), num_blocks=11, max_num_seqs=4)
    engine.add_beam_request("b", {"prompt_token_ids": list(range(8))},
                            BeamSearchParams(beam_width=2, max_tokens=30, ignore_eos=True))
    done = _drain(engine)
    assert "b" in done and len(done["b"].outputs) == 2
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks - 1


@pytest.mark.parametrize("runner_cls", [HostRunner, OverlapRunner], ids=["sync", "overlap"])
def test_beam_search_wider_than_max_num_seqs_survives_a_preemption(runner_cls):
    # A sampled request fills the pool while 3 beams run with max_num_seqs=2: one beam is preempted while
    # the 2 held beams fill both slots (once a deadlock although 9 pages were free).
    engine = build_engine(runner_cls(), num_blocks=15, max_num_seqs=2)
    engine.add_request("s", {"prompt_token_ids": list(range(20))}, SamplingParams(max_tokens=15, ignore_eos=True))
    engine.add_beam_request("b", {"prompt_token_ids": [0]},
                            BeamSearchParams(beam_width=3, max_tokens=16, ignore_eos=True))
    done = _drain(engine)
    assert set(done) == {"s", "b"}
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks - 1


def test_huge_length_penalty_does_not_break_the_step():
    engine = build_engine(HostRunner(), num_blocks=32, max_num_seqs=4)
    engine.add_request("s", {"prompt_token_ids": [5]}, SamplingParams(max_tokens=4, ignore_eos=True))
    engine.add_beam_request("b", {"prompt_token_ids": [1, 2, 3]},
                            BeamSearchParams(beam_width=2, max_tokens=4, ignore_eos=True, length_penalty=3.5e236))
    done = _drain(engine)  # must not raise: at worst the beam search fails alone
    assert done["s"].outputs[0].finish_reason == "length"
    assert "b" in done
