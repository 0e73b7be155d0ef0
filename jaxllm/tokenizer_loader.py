"""`TokenizerLoader`: a tokenizer loading on its own thread while the model runner loads the weights.

`tokenizers` does its parsing in Rust, mostly without the GIL, so the two overlap; `result()` joins.
"""

from __future__ import annotations

import threading
from typing import Any

from jaxllm import timeline


class TokenizerLoader:
    """Starts `get_tokenizer(name, **kwargs)` on a thread at once; `result()` waits for the tokenizer."""

    def __init__(self, name: str, **kwargs: Any):
        self._tokenizer: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, args=(name, kwargs), name="jaxllm-tokenizer", daemon=True)
        self._thread.start()

    def _load(self, name: str, kwargs: dict) -> None:
        from jaxllm.tokenizer import get_tokenizer

        try:
            with timeline.phase("tokenizer"):
                self._tokenizer = get_tokenizer(name, **kwargs)
        except BaseException as err:  # handed to the thread that asks for the result
            self._error = err

    def result(self, raise_error: bool = False) -> Any:
        """The tokenizer (None if loading failed and `raise_error` is False)."""
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error
        return self._tokenizer
