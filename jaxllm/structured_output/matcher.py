"""`StructuredOutputMatcher`: where one sequence stands in its grammar, and which tokens may come next."""

from __future__ import annotations

from typing import Any

import numpy as np


class StructuredOutputMatcher:
    """Wraps an xgrammar matcher: `accept` each generated token, `fill_bitmask` before each step.

    Once the grammar is complete only the stop tokens (EOS) are allowed, so a constrained sequence ends
    with the model's own end token.
    """

    def __init__(self, matcher: Any):
        self._matcher = matcher
        self.failed = False  # a token the grammar refused was appended (should not happen when masked)

    def accept(self, token: int) -> bool:
        if self.failed or self._matcher.is_terminated():
            return False
        ok = bool(self._matcher.accept_token(int(token)))
        self.failed = not ok
        return ok

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` ([B, ceil(V/32)] int32, bit = allowed)."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token accepted: nothing more may be generated."""
        return self._matcher.is_terminated()
