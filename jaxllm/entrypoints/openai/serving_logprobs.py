"""Logprobs in the OpenAI shapes: completions-style, chat-style, and vLLM's `prompt_logprobs`."""

from __future__ import annotations

import math
from typing import Any

from jaxllm.entrypoints.openai.protocol import (
    ChatCompletionLogProbs,
    ChatLogProb,
    ChatLogProbsContent,
    CompletionLogProbs,
)
from jaxllm.outputs import Logprob

MIN_LOGPROB = -9999.0  # -inf is not JSON; OpenAI clients expect a finite number


def clamp_logprob(value: float) -> float:
    return max(value, MIN_LOGPROB) if not math.isnan(value) else MIN_LOGPROB


class OpenAIServingLogprobs:
    """The logprobs half of `OpenAIServing` (it uses the serving's `tokenizer`, `config` and `_decoded`)."""

    def decode_token(self, token_id: int) -> str:
        text = self._decoded.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._decoded[token_id] = text
        return text

    def token_str(self, token_id: int, logprob: Logprob | None, as_ids: bool) -> str:
        if as_ids or self.config.return_tokens_as_token_ids:
            return f"token_id:{token_id}"
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.decode_token(token_id)

    def completion_logprobs(
        self, token_ids: list[int], steps: list[dict[int, Logprob] | None], initial_offset: int, as_ids: bool
    ) -> CompletionLogProbs:
        """Completions-style logprobs; a step of None (the first prompt token) gives nulls."""
        result = CompletionLogProbs()
        offset = initial_offset
        for token_id, step in zip(token_ids, steps):
            chosen = step.get(token_id) if step is not None else None
            token = self.token_str(token_id, chosen, as_ids)
            result.tokens.append(token)
            result.text_offset.append(offset)
            offset += len(token)
            if step is None:
                result.token_logprobs.append(None)
                result.top_logprobs.append(None)
                continue
            result.token_logprobs.append(clamp_logprob(chosen.logprob) if chosen is not None else None)
            result.top_logprobs.append(
                {self.token_str(t, lp, as_ids): clamp_logprob(lp.logprob) for t, lp in step.items()}
            )
        return result

    def chat_logprobs(
        self, token_ids: list[int], steps: list[dict[int, Logprob]], num_top: int, as_ids: bool
    ) -> ChatCompletionLogProbs:
        """Chat-style logprobs: each token with exactly `num_top` alternatives (by rank)."""
        content = []
        for token_id, step in zip(token_ids, steps):
            chosen = step.get(token_id)
            token = self.token_str(token_id, chosen, as_ids)
            ranked = sorted((lp.rank or 1 << 30, t, lp) for t, lp in step.items())
            top = [
                ChatLogProb(token=(s := self.token_str(t, lp, as_ids)), logprob=clamp_logprob(lp.logprob),
                            bytes=list(s.encode("utf-8", errors="replace")))
                for rank, t, lp in ranked
                if rank <= num_top
            ][:num_top]
            content.append(
                ChatLogProbsContent(
                    token=token,
                    logprob=clamp_logprob(chosen.logprob) if chosen is not None else MIN_LOGPROB,
                    bytes=list(token.encode("utf-8", errors="replace")),
                    top_logprobs=top,
                )
            )
        return ChatCompletionLogProbs(content=content)

    @staticmethod
    def prompt_logprobs_json(steps: list[dict[int, Logprob] | None] | None) -> list[dict[int, Any] | None] | None:
        if steps is None:
            return None
        return [
            None if step is None else {
                t: {"logprob": clamp_logprob(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
                for t, lp in step.items()
            }
            for step in steps
        ]
