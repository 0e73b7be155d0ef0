"""Output types of generation, field for field as vLLM's `vllm.outputs` / `vllm.logprobs`."""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Logprob:
    """Log probability of one token.

    `rank` is the token's position in the sorted distribution (1 = most likely); `decoded_token` is
    its text when the request detokenizes.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: token id -> Logprob (the sampled token plus the top-N alternatives).
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token; the first is None since nothing precedes it.
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    """One completion of a request.

    `finish_reason` is "stop" (EOS, a stop string or a stop token), "length" (max_tokens or the context
    limit), "abort", or None while running. `stop_reason` is the stop string or stop token id that ended
    it, and None for EOS or length.
    """

    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (
            f"CompletionOutput(index={self.index}, "
            f"text={self.text!r}, "
            f"token_ids={self.token_ids}, "
            f"cumulative_logprob={self.cumulative_logprob}, "
            f"logprobs={self.logprobs}, "
            f"finish_reason={self.finish_reason}, "
            f"stop_reason={self.stop_reason})"
        )


@dataclass
class RequestOutput:
    """The output of one request: its prompt and one `CompletionOutput` per sequence (n of them)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any | None = None
    lora_request: Any | None = None
    num_cached_tokens: int | None = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    kv_transfer_params: dict[str, Any] | None = None

    def add(self, next_output: RequestOutput, aggregate: bool) -> None:
        """Merge a later output of the same request into this one.

        With `aggregate` (DELTA outputs) the texts, token ids and logprobs of each completion are
        appended; otherwise (CUMULATIVE outputs) each completion is replaced by its newer version.
        Completions are matched by `index`; the merge takes time linear in the number of completions.
        """
        self.finished |= next_output.finished
        position = {cur.index: i for i, cur in enumerate(self.outputs)}
        for nxt in next_output.outputs:
            i = position.get(nxt.index)
            if i is None:
                position[nxt.index] = len(self.outputs)
                self.outputs.append(nxt)
            elif aggregate:
                _append_delta(self.outputs[i], nxt)
            else:
                self.outputs[i] = nxt

    def __repr__(self) -> str:
        return (
            f"RequestOutput(request_id={self.request_id}, "
            f"prompt={self.prompt!r}, "
            f"prompt_token_ids={self.prompt_token_ids}, "
            f"encoder_prompt={self.encoder_prompt!r}, "
            f"encoder_prompt_token_ids={self.encoder_prompt_token_ids}, "
            f"prompt_logprobs={self.prompt_logprobs}, "
            f"outputs={self.outputs}, "
            f"finished={self.finished}, "
            f"metrics={self.metrics}, "
            f"lora_request={self.lora_request}, "
            f"num_cached_tokens={self.num_cached_tokens}, "
            f"kv_transfer_params={self.kv_transfer_params})"
        )


def _append_delta(cur: CompletionOutput, nxt: CompletionOutput) -> None:
    """Append the DELTA output `nxt` to the completion `cur` (same index)."""
    cur.text += nxt.text
    if not isinstance(cur.token_ids, MutableSequence):
        cur.token_ids = list(cur.token_ids)
    cur.token_ids.extend(nxt.token_ids)
    if nxt.logprobs:
        if cur.logprobs is None:
            cur.logprobs = []
        cur.logprobs.extend(nxt.logprobs)
    cur.cumulative_logprob = nxt.cumulative_logprob
    cur.finish_reason = nxt.finish_reason
    cur.stop_reason = nxt.stop_reason


@dataclass
class BeamSearchSequence:
    """One beam. `tokens` holds the prompt plus the generated ids; `text` decodes all of them."""

    tokens: list[int]
    logprobs: SampleLogprobs
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any | None = None


@dataclass
class BeamSearchOutput:
    """The result of `LLM.beam_search` for one prompt: up to `beam_width` sequences, best first."""

    sequences: list[BeamSearchSequence]
