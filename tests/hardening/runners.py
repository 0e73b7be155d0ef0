"""Fake runners for a real `LLMEngine`: no jax, deterministic tokens, everything a real runner returns.

They extend the runners of tests/engine/test_engine_fake_runner.py (the next token is always
`(last token + 1) % 100`) with what beam search, logprobs and the HTTP server need from a runner:

* top-k ids and log-probabilities per row (`k = num_top`, ranked, the sampled token first);
* prompt log-probabilities for the sequences that ask for them;
* `finite` (all True: no NaN rows unless a test says otherwise);
* pages may be shared between sequences (beams fork their parent's pages); only the pages a step
  writes must be private to the sequence that writes them.

`HostRunner` runs steps synchronously (`execute`); `OverlapRunner` is the `FakeAsyncRunner`
(`dispatch` / `collect`), so the engine plans step N+1 before it reads step N. Both check the KV pages
of every step and raise `PageError` when a step would read or write pages it does not own, which the
engine turns into finish_reason "error" (and the property tests into a failure).

`hook(sched)`, when set, runs at the start of every step (tests inject delays and faults there).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests.engine.test_engine_fake_runner import VOCAB, FakeAsyncRunner, FakeRunner


class PageError(AssertionError):
    """A step was scheduled with pages that do not cover its tokens, or writes into a shared page."""


def check_pages(sched, block_manager) -> None:
    bm = block_manager
    for s in sched.requests:
        if 0 in s.block_ids:
            raise PageError(f"{s.request_id} holds the null page: {s.block_ids}")
        if any(bm.ref_counts[b] < 1 for b in s.block_ids):
            raise PageError(f"{s.request_id} holds a free page: {s.block_ids}")
        # the positions this step writes: a prefill (or a prompt chunk) from its first uncomputed token
        if sched.is_prefill:
            first = s.num_computed_tokens
            last = first + getattr(s, "num_new_tokens", s.num_tokens - first)
        else:
            first, last = s.num_tokens - 1, s.num_tokens
        if last > len(s.block_ids) * bm.block_size:  # the pages cover every token the step reads or writes
            raise PageError(f"{s.request_id} has {len(s.block_ids)} pages for {last} tokens")
        for page in {s.block_ids[p // bm.block_size] for p in range(first, last)}:
            if bm.ref_counts[page] != 1:
                raise PageError(f"{s.request_id} writes page {page}, shared (ref count {bm.ref_counts[page]})")


def step_output(sched, token_ids: list[int], num_top: int, vocab: int) -> SimpleNamespace:
    """A `ModelRunnerOutput`-shaped result: the sampled token is rank 1; the others follow it."""
    n = len(token_ids)
    k = max(1, min(num_top, vocab))
    top_ids = np.array([[(t + j) % vocab for j in range(k)] for t in token_ids], dtype=np.int64).reshape(n, k)
    top_lps = np.tile(-0.25 * (1 + np.arange(k, dtype=np.float32)), (n, 1))
    prompt = {}
    for s in sched.requests:
        if sched.is_prefill and s.wants_prompt_logprobs:
            m = max(0, s.num_prompt_tokens - 1)
            ids = np.array(s.prompt_token_ids[1:], dtype=np.int64)
            prompt[s.request_id] = SimpleNamespace(
                logprobs=np.full(m, -1.0, np.float32), ranks=np.full(m, 2, np.int64),
                top_ids=np.stack([(ids + j) % vocab for j in range(k)], axis=1) if m else np.zeros((0, k), np.int64),
                top_logprobs=np.tile(-0.5 * (1 + np.arange(k, dtype=np.float32)), (m, 1)),
            )
    return SimpleNamespace(
        sampled_token_ids=list(token_ids), logprobs=top_lps[:, 0].copy(), ranks=np.ones(n, np.int64),
        top_ids=top_ids, top_logprobs=top_lps, prompt_logprobs=prompt, finite=np.ones(n, bool),
    )


class HostRunner(FakeRunner):
    """The synchronous fake runner, with top-k logprobs, prompt logprobs and shared (beam) pages."""

    def __init__(self, num_top: int = 20, vocab: int = VOCAB):
        super().__init__()
        self.num_top = num_top
        self.vocab = vocab
        self.hook = None

    def execute(self, sched, block_manager):
        if self.hook is not None:
            self.hook(sched)
        self.steps.append((sched.is_prefill, [s.request_id for s in sched.requests]))
        check_pages(sched, block_manager)
        ids = [(s.all_token_ids[-1] + 1) % VOCAB for s in sched.requests]
        return step_output(sched, ids, self.num_top, self.vocab)


class OverlapRunner(FakeAsyncRunner):
    """`FakeAsyncRunner` (tokens stay on the "device" until collected), with the same extras."""

    def __init__(self, num_top: int = 20, vocab: int = VOCAB):
        super().__init__()
        self.num_top = num_top
        self.vocab = vocab
        self.hook = None

    def dispatch(self, sched, block_manager):
        if self.hook is not None:
            self.hook(sched)
        check_pages(sched, block_manager)
        if not sched.is_prefill:
            for s in sched.requests:
                if not s.num_pending:  # the host holds the last token (a new beam, a retried step)
                    self.device_tokens[s.request_id] = s.all_token_ids[-1]
        plain = super().dispatch(sched, block_manager)
        return step_output(sched, plain.sampled_token_ids, self.num_top, self.vocab)
