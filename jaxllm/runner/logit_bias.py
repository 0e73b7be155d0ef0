"""Per-row additive logit biases for one step, from the request's sampling parameters.

One dense mechanism serves `logit_bias`, `allowed_token_ids`, `min_tokens` (end tokens banned until
enough tokens are out) and `bad_words` (the last token of a bad word banned when its prefix was just
generated). Rows that need none of these return None and the step skips the bias entirely.
"""

from __future__ import annotations

import numpy as np

BANNED = -1e9  # large but finite: a fully banned row still has a well-defined argmax


def step_logit_bias(request, vocab_size: int) -> np.ndarray | None:
    p = request.sampling_params
    out = request.output_token_ids
    bias = None

    def ensure():
        nonlocal bias
        if bias is None:
            bias = np.zeros(vocab_size, np.float32)
        return bias

    if p.allowed_token_ids:
        ensure()[:] = BANNED
        allowed = [t for t in p.allowed_token_ids if 0 <= t < vocab_size]
        bias[allowed] = 0.0
    if p.logit_bias:
        for token, value in p.logit_bias.items():
            if 0 <= int(token) < vocab_size:
                ensure()[int(token)] += float(value)
    if len(out) < p.min_tokens:
        stop_ids = set(p.stop_token_ids or ()) | (set() if p.ignore_eos else set(request.eos_token_ids))
        for token in stop_ids:
            if 0 <= token < vocab_size:
                ensure()[token] = BANNED
    for word in getattr(request, "bad_words_ids", None) or ():
        prefix = word[:-1]
        just_generated = len(out) >= len(prefix) and (not prefix or out[len(out) - len(prefix) :] == prefix)
        if just_generated and 0 <= word[-1] < vocab_size:
            ensure()[word[-1]] = BANNED
    return bias
