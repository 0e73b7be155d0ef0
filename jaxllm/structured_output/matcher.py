"""`StructuredOutputMatcher`: where one sequence stands in its grammar, and which tokens may come next."""

from __future__ import annotations

from typing import Any

import numpy as np

_BATCH_MATCHER: Any = None


def _batch_matcher() -> Any:
    global _BATCH_MATCHER
    if _BATCH_MATCHER is None:
        import xgrammar

        _BATCH_MATCHER = xgrammar.BatchGrammarMatcher(max_threads="auto")
    return _BATCH_MATCHER


class StructuredOutputMatcher:
    """Wraps an xgrammar matcher: `accept` each generated token, `fill_bitmask` before each step.

    Once the grammar is complete only the stop tokens (EOS) are allowed, so a constrained sequence ends
    with the model's own end token.
    """

    def __init__(self, matcher: Any, width: int | None = None):
        self._matcher = matcher
        self.width = width  # int32 words the grammar's ids fill; a mask's later words are zeroed
        self.failed = False  # a token the grammar refused was appended (should not happen when masked)

    def accept(self, token: int) -> bool:
        if self.failed or self._matcher.is_terminated():
            return False
        ok = bool(self._matcher.accept_token(int(token)))
        self.failed = not ok
        return ok

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` ([B, ceil(V/32)] int32, bit = allowed)."""
        self.fill_bitmasks([self], [row], bitmask)

    @staticmethod
    def fill_bitmasks(matchers: list[StructuredOutputMatcher], rows: list[int], bitmask: np.ndarray) -> None:
        """`fill_bitmask` for many rows at once, spread over the CPU's cores (xgrammar's batch matcher
        releases the GIL): a step of hundreds of constrained rows over a 150k-token vocabulary costs
        tens of milliseconds one row at a time."""
        if not matchers:
            return
        width = matchers[0].width or bitmask.shape[1]
        target, at = bitmask, rows
        if width < bitmask.shape[1]:  # the grammar covers fewer ids than the model: fill, then widen
            target, at = np.empty((len(rows), width), np.int32), list(range(len(rows)))
        if len(matchers) == 1:
            matchers[0]._matcher.fill_next_token_bitmask(target, at[0])
        else:
            _batch_matcher().batch_fill_next_token_bitmask([m._matcher for m in matchers], target, at)
        if target is not bitmask:
            bitmask[rows, :width] = target
            bitmask[rows, width:] = 0

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and its stop token accepted: nothing more may be generated."""
        return self._matcher.is_terminated()
