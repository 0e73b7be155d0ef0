"""Continuous batching: which sequences run this step, and with how many tokens.

Each step is either a prefill (waiting sequences, whole prompts packed together, FCFS, under
`max_num_seqs` and `max_num_batched_tokens`) or a decode (one token for every running sequence).
When the pool has no page for a decode token, the youngest running sequence is preempted: its pages
are freed and it goes back to the front of the queue, to be recomputed from its tokens later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from jaxllm.config import SchedulerConfig
from jaxllm.engine.block_manager import BlockManager
from jaxllm.engine.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    """One step's work. For a prefill, each sequence computes all its tokens from position 0."""

    is_prefill: bool
    requests: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) pages, before the step

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step (a prefill skips its cached prefix)."""
        if not self.is_prefill:
            return len(self.requests)
        return sum(r.num_tokens - r.num_computed_tokens for r in self.requests)

    def __bool__(self) -> bool:
        return bool(self.requests)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, request: Request) -> None:
        """Take a sequence out of the queues (finished or aborted) and free its pages."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)

    def schedule(self, overlap: bool = False, exclude: frozenset | set = frozenset()) -> SchedulerOutput:
        """The next step. With `overlap`, the step is planned while another is still in flight: it
        never preempts (an empty output means "wait for the step in flight first") and leaves out the
        sequences in `exclude` (those that step is certain to finish)."""
        out = self._schedule_prefill()
        if out:
            return out
        return self._schedule_decode_overlapped(exclude) if overlap else self._schedule_decode()

    def _schedule_decode_overlapped(self, exclude) -> SchedulerOutput:
        batch = [r for r in self.running if r not in exclude and not r.on_hold]
        need = sum(self.block_manager.blocks_needed(r, r.num_tokens) for r in batch)
        if need > self.block_manager.num_free_blocks:
            return SchedulerOutput(is_prefill=False)
        for request in batch:
            self.block_manager.allocate(request, request.num_tokens)
        return SchedulerOutput(is_prefill=False, requests=batch)

    def _schedule_prefill(self) -> SchedulerOutput:
        out = SchedulerOutput(is_prefill=True)
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            n = request.num_tokens
            cached = 0 if request.wants_prompt_logprobs else bm.match_prefix(request)
            if n - cached > budget or not bm.can_allocate(request, n):
                bm.free(request)  # give back the shared prefix pages
                break
            request.num_computed_tokens = cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = cached
            bm.allocate(request, n)
            n -= cached
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
        bm = self.block_manager
        while queue:
            request = queue.popleft()
            while not self._fits(request):
                victim = queue.pop() if queue else request
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                bm.allocate(request, request.num_tokens)
                copy = bm.make_writable(request, request.num_tokens - 1)  # a beam writing a shared page
                if copy:
                    out.block_copies.append(copy)
                out.requests.append(request)
        self.running = held + out.requests
        return out

    def _fits(self, request: Request) -> bool:
        bm = self.block_manager
        n = request.num_tokens
        need = bm.blocks_needed(request, n) + int(bm.is_shared(request, n - 1))
        return need <= bm.num_free_blocks

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.block_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        out.preempted.append(request)
