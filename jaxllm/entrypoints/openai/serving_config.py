"""ServingConfig: what the OpenAI-compatible frontend knows about the model and how to serve it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@dataclass
class ServingConfig:
    """What the frontend knows about the model and how it was told to serve it."""

    served_model_names: list[str]
    model_root: str
    max_model_len: int
    vocab_size: int
    max_logprobs: int = 20
    chat_template: str | None = None
    response_role: str = "assistant"
    trust_request_chat_template: bool = False
    enable_prompt_tokens_details: bool = False
    enable_force_include_usage: bool = False
    return_tokens_as_token_ids: bool = False
    log_requests: bool = False
    max_log_len: int | None = None
    default_sampling: dict[str, Any] = field(default_factory=dict)  # from generation_config.json
    default_max_tokens: int | None = None  # generation_config.json's max_new_tokens
    max_n: int | None = None  # --max-n: the largest n / best_of / beam width a request may ask for
    max_prompt_tokens: int | None = None  # --max-prompt-tokens
    request_timeout: float | None = None  # --request-timeout, seconds
    tool_call_parser: str | None = None  # --tool-call-parser, when --enable-auto-tool-choice is set

    @staticmethod
    def sampling_defaults(generation_config: dict[str, Any] | None) -> tuple[dict[str, Any], int | None]:
        """(sampling defaults, max_tokens cap) from a model's generation_config.json, as vLLM reads it."""
        cfg = generation_config or {}
        defaults = {k: cfg[k] for k in _SAMPLING_DEFAULT_KEYS if cfg.get(k) is not None}
        return defaults, cfg.get("max_new_tokens")
