"""A stand-in for `LLMEngine` (same small interface, no model): deterministic, instant, breakable."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

from jaxllm.outputs import CompletionOutput, RequestOutput


@dataclass
class _Req:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    max_tokens: int
    generated: int = 0
    fail: bool = False
    beam_width: int = 0  # a beam search: one output with this many beams when it finishes


@dataclass
class FakeBlockManager:
    engine: FakeEngine

    def usage(self) -> float:
        return len(self.engine.requests) / 100


@dataclass
class FakeEngine:
    """Each step emits one token ("x", id 7) for every unfinished request.

    A prompt containing "invalid" is rejected with ValueError; one containing "fail" finishes with
    finish_reason "error" (a failed model step); `crash_at_step` makes `step()` itself raise.
    """

    crash_at_step: int | None = None
    requests: dict[str, _Req] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=lambda: {"preemptions": 0})
    beam_threads: list[str] = field(default_factory=list)  # the thread that added each beam search
    generation_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_manager = FakeBlockManager(self)
        self.model_config = SimpleNamespace(vocab_size=400, path="/fake/model")
        self.scheduler_config = SimpleNamespace(max_model_len=256)
        self.tokenizer = None

    @property
    def scheduler(self) -> SimpleNamespace:
        return SimpleNamespace(running=list(self.requests), waiting=[])

    def add_request(self, request_id: str, prompt, params) -> None:
        text = prompt.get("prompt") if isinstance(prompt, dict) else prompt
        if text is not None and "invalid" in text:
            raise ValueError("The prompt is invalid.")
        ids = list(prompt.get("prompt_token_ids", [1, 2])) if isinstance(prompt, dict) else [1, 2]
        self.requests[request_id] = _Req(request_id, text, ids, params.max_tokens or 16,
                                         fail=text is not None and "fail" in text)

    def add_beam_request(self, request_id: str, prompt, params) -> None:
        if params.beam_width > 4:
            raise ValueError(f"beam_width ({params.beam_width}) is over the limit.")
        self.beam_threads.append(threading.current_thread().name)
        ids = list(prompt.get("prompt_token_ids", [1, 2])) if isinstance(prompt, dict) else [1, 2]
        self.requests[request_id] = _Req(request_id, None, ids, params.max_tokens, beam_width=params.beam_width)

    def abort_request(self, request_ids) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            if self.requests.pop(rid, None) is not None:
                self.aborted.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self, cursors=None) -> list[RequestOutput]:
        if self.crash_at_step is not None and len(self.batch_sizes) >= self.crash_at_step:
            raise RuntimeError("the device fell over")
        self.batch_sizes.append(len(self.requests))
        outputs = []
        for rid, req in list(self.requests.items()):
            req.generated += 1
            if req.beam_width:
                if req.generated >= req.max_tokens:
                    beams = [CompletionOutput(index=i, text=f"b{i}", token_ids=[7] * req.generated,
                                              cumulative_logprob=-float(i), logprobs=None, finish_reason="length")
                             for i in range(req.beam_width)]
                    outputs.append(RequestOutput(rid, req.prompt, req.prompt_token_ids, None, beams, True))
                    del self.requests[rid]
                continue
            reason = "error" if req.fail else ("length" if req.generated >= req.max_tokens else None)
            out = CompletionOutput(index=0, text="" if req.fail else "x", token_ids=[] if req.fail else [7],
                                   cumulative_logprob=None, logprobs=None, finish_reason=reason)
            outputs.append(RequestOutput(rid, req.prompt, req.prompt_token_ids, None, [out], reason is not None))
            if reason is not None:
                del self.requests[rid]
        return outputs
