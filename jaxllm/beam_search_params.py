"""Parameters of a beam search (`LLM.beam_search`, `use_beam_search` requests): vLLM's `BeamSearchParams`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxllm.params_validation import _bool_field, _float_field, _int_field, _verify_num_sequences


@dataclass
class BeamSearchParams:
    """Parameters of `LLM.beam_search` (vLLM's `BeamSearchParams`)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        self.beam_width = _verify_num_sequences(self.beam_width, "beam_width")
        self.max_tokens = _int_field("max_tokens", self.max_tokens)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        self.temperature = _float_field("temperature", self.temperature)
        if not math.isfinite(self.temperature) or self.temperature < 0.0:
            raise ValueError(f"temperature must be a finite non-negative number, got {self.temperature}.")
        self.length_penalty = _float_field("length_penalty", self.length_penalty)
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}.")
        self.ignore_eos = _bool_field("ignore_eos", self.ignore_eos)
        self.include_stop_str_in_output = _bool_field(
            "include_stop_str_in_output", self.include_stop_str_in_output
        )
