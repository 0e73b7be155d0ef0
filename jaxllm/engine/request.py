"""One sequence being generated: its tokens, its KV blocks, its sampling state and its text."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # blocks freed; waits to be recomputed from its tokens
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


# A tuple, not a set: membership then compares identities and never calls Enum's Python-level __hash__.
_FINISHED = (
    RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED,
    RequestStatus.FINISHED_ERROR,
)


@dataclass(eq=False)
class Request:
    """A single sequence. A user request with `n` > 1 becomes `n` of these sharing a `parent_id`.

    The scheduler and the runner read these fields; only the engine mutates them.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: Any  # SamplingParams
    seed: int  # the request's seed, or one drawn by the engine: keys the per-token randomness
    eos_token_ids: frozenset[int] = frozenset()
    max_tokens: int = 16  # resolved: never None
    parent_id: str = ""
    index: int = 0  # position among the parent's `n` completions
    arrival: int = 0  # FCFS order
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the pool
    num_new_tokens: int = 0  # tokens the current step computes for this sequence (set by the scheduler)
    num_pending: int = 0  # tokens being sampled by steps still in flight (not yet in output_token_ids)
    cumulative_logprob: float = 0.0
    logprobs: list[dict] | None = None  # per generated token: {token_id: Logprob}
    prompt_logprobs: list[dict | None] | None = None
    detokenizer: Any = None
    output_text: str = ""
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    error: str | None = None
    block_hashes: list[int] = field(default_factory=list)  # prefix-cache names of the full pages so far
    num_registered_blocks: int = 0  # leading pages already offered to the prefix cache
    reserve_pages: int = 0  # pages the scheduler expects this sequence to hold when it finishes
    table_row: int = -1  # this sequence's row in the block manager's NumPy block table (-1: no pages)
    step_static: Any = None  # per-step values that never change, cached by the runner's input builder
    host_tokens_until: int | None = None  # the engine's cache: outputs below this count are needed on the host
    detokenize_at_end: bool = False  # text decoded once when finished (no stop strings, final output only)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the first prefill
    beam: Any = None  # BeamState when this sequence is one beam of a beam search
    on_hold: bool = False  # running, but skipped by the scheduler until the engine releases it
    structured_output: Any = None  # StructuredOutputMatcher when the output follows a grammar
    plain_checks: Any = None  # the output processor's cache: see OutputProcessor.plain_checks

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Tokens the scheduler must make room for: prompt, outputs, and outputs still in flight."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status in _FINISHED  # read for every sequence at every step: no enum property

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.sampling_params.prompt_logprobs is not None and self.prompt_logprobs is None

    def needs_host_tokens(self) -> bool:
        """Sampling that reads this sequence's own outputs on the host (beams, penalties, bad words;
        min_tokens until reached): its next step cannot be planned before its newest token is read back.
        (A grammar needs them too, but only at sampling time: its step is split, runner/model_step.py.)"""
        until = self.host_tokens_until
        if until is None:
            p = self.sampling_params
            always = (
                self.beam is not None or p.presence_penalty != 0 or p.frequency_penalty != 0
                or p.repetition_penalty != 1 or bool(p.bad_words)
            )
            until = self.host_tokens_until = _ALWAYS if always else p.min_tokens
        return until > 0 and len(self.output_token_ids) < until


_ALWAYS = 1 << 62  # host_tokens_until of a sequence whose every step needs its tokens on the host
