"""Continuous batching: which sequences run this step, and with how many tokens.

Each step is either a prefill (waiting sequences, whole prompts packed together, FCFS, under
`max_num_seqs` and `max_num_batched_tokens`) or a decode (one token for every running sequence).
When the pool has no page for a decode token, the youngest running sequence is preempted: its pages
are freed and it goes back to the front of the queue, to be recomputed from its tokens later.

Admission keeps room for growth. A recomputed sequence costs its whole prefill again, so a new prompt
is admitted only if, after its pages, the pool still holds what the running sequences are expected to
write: each one's remaining output budget (`max_tokens`, at most GROWTH_CLIP tokens counted) times
`growth_ratio`, the share of their budget that finished sequences used (1.0 until one finishes, and
again after any preemption). Workloads that run to `max_tokens` then never preempt; chat workloads
that stop early at EOS soon reserve little. With nothing running, a prompt is admitted whenever its
pages fit.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from jaxllm.config import SchedulerConfig
from jaxllm.engine.block_manager import BlockManager, cdiv
from jaxllm.engine.request import Request, RequestStatus

GROWTH_CLIP = 4096  # output tokens a sequence's reservation counts at most
GROWTH_SMOOTHING = 1 / 16  # weight of each finished sequence in growth_ratio's moving average
_COMPLETED = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH)


@dataclass
class SchedulerOutput:
    """One step's work. For a prefill, each sequence computes all its tokens from position 0."""

    is_prefill: bool
    requests: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) pages, before the step
    num_new: list[int] = field(default_factory=list)  # tokens each sequence computes in this step
    samples: list[bool] = field(default_factory=list)  # set at dispatch: the row's token is a new one
    computed: list[int] = field(default_factory=list)  # set at dispatch: tokens computed once it is done
    finishing: list = field(default_factory=list)  # set at dispatch: rows it certainly gives their last token

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step (a prefill skips its cached prefix)."""
        return sum(r.num_new_tokens for r in self.requests)

    def __bool__(self) -> bool:
        return bool(self.requests)


def _growth(request: Request) -> int:
    """Pages `request` is expected to add before it finishes."""
    return max(0, request.reserve_pages - len(request.block_ids))


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.growth_ratio = 1.0  # expected share of a running sequence's output budget still to be written

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, request: Request) -> None:
        """Take a sequence out of the queues (finished or aborted) and free its pages."""
        if request.status in _COMPLETED and request.beam is None and request.max_tokens > 0:
            used = min(1.0, len(request.output_token_ids) / min(request.max_tokens, GROWTH_CLIP))
            self.growth_ratio += GROWTH_SMOOTHING * (used - self.growth_ratio)
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)

    def schedule(self, overlap: bool = False, exclude: frozenset | set = frozenset()) -> SchedulerOutput:
        out = self._schedule(overlap, exclude)
        # A snapshot: a step planned while this one is in flight sets the sequences' fields again.
        out.num_new = [r.num_new_tokens for r in out.requests]
        return out

    def _schedule(self, overlap: bool, exclude) -> SchedulerOutput:
        """The next step. With `overlap`, the step is planned while another is still in flight: it
        never preempts (an empty output means "wait for the step in flight first") and leaves out the
        sequences in `exclude` (those that step is certain to finish). A sequence whose newest token
        is still being sampled takes part all the same: the device reads that token where the step in
        flight leaves it."""
        if self.config.enable_chunked_prefill:
            return self._schedule_chunked(overlap, exclude)
        out = self._schedule_prefill(exclude)
        if out:
            return out
        return self._schedule_decode_overlapped(exclude) if overlap else self._schedule_decode()

    def _schedule_chunked(self, overlap: bool = False, exclude=frozenset()) -> SchedulerOutput:
        """One token budget: running sequences first (decodes, then prompts mid-prefill), then new prompts.

        A prompt that does not fit the remaining budget is split; its chunks run in later steps next to
        other sequences' decodes. The step is a pure decode (the fast path) when every row computes
        exactly its newest token.
        """
        out = SchedulerOutput(is_prefill=True)
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        page = bm.block_size
        held, skipped, decodes, prompts = [], [], [], []
        for r in self.running:
            if r.on_hold:
                held.append(r)
            elif r in exclude:
                skipped.append(r)
            elif r.num_computed_tokens < len(r.prompt_token_ids):
                prompts.append(r)
            else:
                decodes.append(r)
        queue = deque(decodes)  # decodes first
        queue.extend(prompts)
        pure_decode = not prompts
        scheduled = out.requests
        popleft = queue.popleft
        while queue and budget > 0:
            request = popleft()
            computed = request.num_computed_tokens
            left = len(request.prompt_token_ids) + len(request.output_token_ids) + request.num_pending - computed
            n_new = budget if left > budget else left
            if n_new <= 0:  # nothing left to compute until its step in flight is read
                skipped.append(request)
                continue
            if left != 1:
                pure_decode = False
            target = computed + n_new
            if target > len(request.block_ids) * page or request.beam is not None:
                if overlap and not self._fits(request, target):
                    return SchedulerOutput(is_prefill=False)  # never preempt under a step in flight
                if not self._reserve(request, target, queue, held, out):
                    continue
            request.num_new_tokens = n_new
            scheduled.append(request)
            budget -= n_new
        self.running = held + skipped + out.requests + list(queue)  # those past the budget wait
        reserve = None
        while self.waiting and budget > 0 and self._num_active(exclude) < self.config.max_num_seqs:
            request = self.waiting[0]
            cached = 0 if request.wants_prompt_logprobs else bm.match_prefix(request)
            n_new = min(request.num_tokens - cached, budget)
            target = cached + n_new
            whole = n_new == request.num_tokens - cached
            while not overlap and not bm.can_allocate(request, target) and self._release_held_pages(held):
                pass
            if reserve is None:
                reserve = self._growth_reserve(exclude)
            if (request.wants_prompt_logprobs and not whole) or not self._admits(request, target, reserve, exclude):
                bm.free(request)  # give back the shared prefix pages
                break
            request.num_computed_tokens = cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = cached
            bm.allocate(request, target)
            reserve += _growth(request)
            request.num_new_tokens = n_new
            pure_decode = False
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.requests.append(request)
            budget -= n_new
        # A pure decode step: every row computes exactly its newest token, which an earlier step sampled
        # (or the step in flight is sampling).
        out.is_prefill = bool(out.requests) and not pure_decode
        return out

    def _schedule_decode_overlapped(self, exclude) -> SchedulerOutput:
        batch = [r for r in self.running if r not in exclude and not r.on_hold]
        need = sum(self.block_manager.blocks_needed(r, r.num_tokens) for r in batch)
        if need > self.block_manager.num_free_blocks:
            return SchedulerOutput(is_prefill=False)
        for request in batch:
            self.block_manager.allocate(request, request.num_tokens)
            request.num_new_tokens = 1
        return SchedulerOutput(is_prefill=False, requests=batch)

    def _schedule_prefill(self, exclude=frozenset()) -> SchedulerOutput:
        out = SchedulerOutput(is_prefill=True)
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        reserve = None
        while self.waiting and self._num_active(exclude) < self.config.max_num_seqs:
            request = self.waiting[0]
            n = request.num_tokens
            cached = 0 if request.wants_prompt_logprobs else bm.match_prefix(request)
            while not bm.can_allocate(request, n) and self._release_held_pages(self.running):
                pass
            if reserve is None:
                reserve = self._growth_reserve(exclude)
            if n - cached > budget or not self._admits(request, n, reserve, exclude):
                bm.free(request)  # give back the shared prefix pages
                break
            request.num_computed_tokens = cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = cached
            bm.allocate(request, n)
            reserve += _growth(request)
            n -= cached
            request.num_new_tokens = n
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.requests.append(request)
            budget -= n
        return out

    def _schedule_decode(self) -> SchedulerOutput:
        out = SchedulerOutput(is_prefill=False)
        held = [r for r in self.running if r.on_hold]
        queue = deque(r for r in self.running if not r.on_hold)
        while queue:
            request = queue.popleft()
            if self._reserve(request, request.num_tokens, queue, held, out):
                request.num_new_tokens = 1
                out.requests.append(request)
        self.running = held + out.requests
        return out

    def _reserve(self, request: Request, target: int, queue: deque, held: list, out: SchedulerOutput) -> bool:
        """Pages for `request` to hold `target` tokens: free held beams' pages, then preempt the youngest
        sequence of `queue` (or `request` itself) until they fit. False when `request` was preempted."""
        while not self._fits(request, target):
            if self._release_held_pages(held):
                continue
            victim = queue.pop() if queue else request
            self._preempt(victim, out)
            if victim is request:
                return False
        self.block_manager.allocate(request, target)
        copy = self.block_manager.make_writable(request, target - 1)  # a beam writing a shared page
        if copy:
            out.block_copies.append(copy)
        return True

    def _growth_reserve(self, exclude) -> int:
        """Pages the running sequences are expected to add (see the module docstring)."""
        return sum(_growth(r) for r in self.running if r not in exclude)

    def _admits(self, request: Request, target: int, reserve: int, exclude) -> bool:
        """Whether `request` may start now with pages for `target` tokens: they fit, and (while anything
        else runs) so do the running sequences' expected growth and its own. Sets its reservation."""
        bm = self.block_manager
        need = bm.blocks_needed(request, target)
        if need > bm.num_free_blocks:
            return False
        budget = min(request.max_tokens - len(request.output_token_ids), GROWTH_CLIP)
        expected = request.num_tokens + math.ceil(self.growth_ratio * max(0, budget))
        request.reserve_pages = cdiv(expected, bm.block_size)
        own = max(0, request.reserve_pages - cdiv(target, bm.block_size))
        return need + reserve + own <= bm.num_free_blocks or not self._num_active(exclude)

    def _num_active(self, exclude=frozenset()) -> int:
        """Running sequences that take part in steps (beams waiting for their round do not, nor those
        the step in flight certainly finishes)."""
        return sum(1 for r in self.running if not r.on_hold and r not in exclude)

    def _release_held_pages(self, held: list[Request]) -> bool:
        """Free the pages of one beam waiting for its round; its candidates are already recorded and
        its children recompute from their tokens. Returns False when no held beam has pages."""
        for request in held:
            if request.on_hold and request.block_ids:
                self.block_manager.free(request)
                return True
        return False

    def _fits(self, request: Request, n: int) -> bool:
        bm = self.block_manager
        need = bm.blocks_needed(request, n) + int(bm.is_shared(request, n - 1))
        return need <= bm.num_free_blocks

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.growth_ratio = 1.0  # the pool ran short: reserve whole budgets again
        self.block_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        out.preempted.append(request)

