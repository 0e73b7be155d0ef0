"""What a step hands back: `ModelRunnerOutput` to the engine, `PendingStep` while it runs on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxllm.runner.input_batch import InputBatch


@dataclass
class PromptLogprobs:
    """For prompt tokens 1..n-1: logprob, rank and the top alternatives (row j scores token j+1)."""

    logprobs: np.ndarray  # [n-1]
    ranks: np.ndarray  # [n-1]
    top_ids: np.ndarray  # [n-1, k]
    top_logprobs: np.ndarray  # [n-1, k]


@dataclass
class PendingStep:
    """A dispatched step whose results are still on the device."""

    requests: list
    batch: InputBatch
    outputs: tuple | None  # device arrays (None until a split step's second half runs)
    prompt: tuple | None
    logits: Any = None  # a split step's logits, waiting for its token masks (model_step.py)


@dataclass
class ModelRunnerOutput:
    """What one step produced for each scheduled sequence, in scheduling order."""

    sampled_token_ids: list[int]
    logprobs: np.ndarray  # [B] raw logprob of each sampled token
    ranks: np.ndarray  # [B]
    top_ids: np.ndarray | None  # [B, k]
    top_logprobs: np.ndarray | None  # [B, k]
    prompt_logprobs: dict[str, PromptLogprobs]
    finite: np.ndarray | None = None  # [B] bool: False where the model produced NaN/inf logits
