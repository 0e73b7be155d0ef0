"""Turn a scheduler decision into fixed-shape NumPy arrays for one compiled step.

Prefill packs the rows' tokens back to back and pads to a token bucket T (a row is a whole prompt, a
chunk of one, or, in a mixed step, one decode token):

    tokens       [a0 a1 a2 a3 b0 b1 pad pad]   segment_ids [0 0 0 0 1 1 -1 -1]
    positions    [0  1  2  3  0  1  0   0  ]   logits_indices [3 5 0 0]  (last token of each)

Decode has one token per sequence, padded to a batch bucket B; padding rows have context length 0
and write their K/V into the null page.

Every array is built with whole-array NumPy operations from a few per-row numbers: the block tables
and slot mappings are gathers from the block manager's NumPy table, and the sampling parameters that
never change are read once per sequence (`Request.step_static`).

A row whose newest token is still being sampled by the step in flight (the engine plans step N+1
before it reads step N) has no host value for it: `token_from_buffer` marks that token, and the
device reads it from the token buffer at `token_src_slots`, where step N left it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxllm.runner.buckets import bucket_for
from jaxllm.structured_output.matcher import StructuredOutputMatcher
from pallas_kernels.ragged_paged_attention import query_blocks

_PENALTIES, _FILTERS, _TOP_LOGPROBS, _MAY_BIAS, _BITMASK, _LOGPROBS = 1, 2, 4, 8, 16, 32


@dataclass
class StepFlags:
    """Static switches: each combination is a separate compiled variant of a bucket."""

    penalties: bool = False
    bias: bool = False
    filters: bool = False
    top_logprobs: bool = False
    prompt_logprobs: bool = False
    logprobs: bool = False  # some row needs its sampled token's logprob and rank
    bitmask: bool = False  # some row follows a grammar: token_bitmask masks the logits

    def key(self) -> tuple[bool, ...]:
        return (self.penalties, self.bias, self.filters, self.top_logprobs, self.prompt_logprobs, self.bitmask,
                self.logprobs)


@dataclass
class InputBatch:
    is_prefill: bool
    num_seqs: int  # real sequences (rows past it are padding)
    tokens: np.ndarray  # [T] int32
    positions: np.ndarray  # [T] int32
    slot_mapping: np.ndarray  # [T] int32
    logits_indices: np.ndarray  # [B] int32: which token's hidden state feeds each row's sampler
    sampling: dict  # SamplingMetadata fields as NumPy arrays (None for unused features)
    flags: StepFlags
    # The device keeps each sequence's newest sampled token at the pool slot of the position that
    # produced it, so a step reads a token still in flight there and never waits for the host.
    token_src_slots: np.ndarray | None = None  # [T] where to read a token in flight
    token_from_buffer: np.ndarray | None = None  # [T] bool: True = read it there, False = take `tokens`
    token_dst_slots: np.ndarray | None = None  # [B] where to store each row's sampled token
    late_bitmask: bool = False  # the token masks are filled once the step in flight is read (a split step)
    segment_ids: np.ndarray | None = None  # [T] prefill
    block_tables: np.ndarray | None = None  # [B, W] decode, and prefill through the pool
    context_lens: np.ndarray | None = None  # [B] decode, and the decode rows of a ragged step
    q_block_rows: np.ndarray | None = None  # [Qn] prefill after a cached prefix: the ragged kernel's plan
    q_block_starts: np.ndarray | None = None
    q_block_lens: np.ndarray | None = None
    decode_token_indices: np.ndarray | None = None  # [B] ragged: each decode row's token (T for other rows)
    prompt_spans: list[tuple[int, int]] | None = None  # (start, length) in the packed prompt, prefill


def _static(r) -> tuple[int, tuple]:
    """(feature bits, sampling row) of a sequence, computed once."""
    st = r.step_static
    if st is None:
        p = r.sampling_params
        bits = 0
        if p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1:
            bits |= _PENALTIES
        if p.temperature > 0 and (p.top_k > 0 or p.top_p < 1 or p.min_p > 0):
            bits |= _FILTERS
        if p.logprobs:
            bits |= _TOP_LOGPROBS
        if p.logprobs is not None or (p.best_of or p.n) > p.n:  # shown, or ranks the best_of sequences
            bits |= _LOGPROBS
        if p.allowed_token_ids or p.logit_bias or p.min_tokens > 0 or getattr(r, "bad_words_ids", None):
            bits |= _MAY_BIAS
        if r.structured_output is not None:
            bits |= _BITMASK
        seed = r.seed
        row = (p.temperature, max(0, p.top_k), p.top_p, p.min_p, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
        st = r.step_static = (bits, row)
    return st


_last_columns: tuple = (None, 0, 0, None)  # (statics, rows, feature bits, columns) of the latest step


def _static_columns(statics: list, rows: int) -> tuple[int, dict]:
    """(feature bits, the per-row sampling columns that never change) for these rows. Consecutive steps
    usually run the same sequences: the columns are then the previous step's (never written after)."""
    global _last_columns
    last = _last_columns  # one read: another engine's thread may replace it meanwhile
    if last[1] == rows and last[0] == statics:  # the same cached tuples: a fast identity comparison
        return last[2], last[3]
    bits = 0
    for b, _ in statics:
        bits |= b
    table = np.zeros((rows, 6), np.float64)
    table[:, 2] = 1.0  # top_p of padding rows
    if statics:
        table[: len(statics)] = [row for _, row in statics]
    columns = {
        "temperature": table[:, 0].astype(np.float32),
        "top_k": table[:, 1].astype(np.int32),
        "top_p": table[:, 2].astype(np.float32),
        "min_p": table[:, 3].astype(np.float32),
        "seed_lo": table[:, 4].astype(np.uint32),
        "seed_hi": table[:, 5].astype(np.uint32),
    }
    _last_columns = (statics, rows, bits, columns)
    return bits, columns


def _sampling(requests, statics, rows: int, is_prefill: bool, bias_fn, vocab: int, max_len: int):
    """(SamplingMetadata arrays, StepFlags, whether the token masks must wait) for the rows."""
    n = len(requests)
    bits, columns = _static_columns(statics, rows)
    step = np.zeros(rows, np.int32)
    step[:n] = [len(r.output_token_ids) + r.num_pending for r in requests]
    arrays = {**columns, "step": step}
    bias = None
    if bits & _MAY_BIAS:
        for i, (r, (b, _)) in enumerate(zip(requests, statics)):
            row = bias_fn(r) if b & _MAY_BIAS else None
            if row is not None:
                if bias is None:
                    bias = np.zeros((rows, vocab), np.float32)
                bias[i] = row
    flags = StepFlags(
        penalties=bool(bits & _PENALTIES),
        bias=bias is not None,
        filters=bool(bits & _FILTERS),
        top_logprobs=bool(bits & _TOP_LOGPROBS),
        prompt_logprobs=is_prefill and any(r.wants_prompt_logprobs for r in requests),
        bitmask=bool(bits & _BITMASK),
        logprobs=bool(bits & _LOGPROBS),
    )
    if flags.penalties:
        arrays["presence_penalty"] = _column(requests, rows, lambda p: p.presence_penalty, np.float32, 0.0)
        arrays["frequency_penalty"] = _column(requests, rows, lambda p: p.frequency_penalty, np.float32, 0.0)
        arrays["repetition_penalty"] = _column(requests, rows, lambda p: p.repetition_penalty, np.float32, 1.0)
        prompt_lens = np.zeros(rows, np.int32)
        prompt_lens[:n] = [r.num_prompt_tokens for r in requests]
        arrays["prompt_lens"] = prompt_lens
        ids = np.full((rows, max_len), -1, np.int32)
        for i, r in enumerate(requests):
            toks = r.all_token_ids
            ids[i, : len(toks)] = toks
        arrays["token_ids"] = ids
    if bias is not None:
        arrays["logit_bias"] = bias
    late = False
    if flags.bitmask:  # all bits set: unconstrained (and padding) rows keep every token
        mask = np.full((rows, (vocab + 31) // 32), -1, np.int32)
        # A constrained row whose newest token the step in flight is sampling: its matcher has not seen
        # that token, so the whole step's masks are filled later (a split step, runner/model_step.py).
        late = any(r.num_pending and r.structured_output is not None for r in requests)
        if not late:
            fill_token_bitmask(requests, mask)
        arrays["token_bitmask"] = mask
    return arrays, flags, late


def fill_token_bitmask(requests, mask: np.ndarray) -> None:
    """Each constrained row's allowed next tokens into its row of `mask` (other rows keep every token)."""
    matchers, rows = [], []
    for i, r in enumerate(requests):
        grammar = r.structured_output
        if grammar is not None and not r.is_finished and not grammar.is_terminated:
            matchers.append(grammar)
            rows.append(i)
    if matchers:
        StructuredOutputMatcher.fill_bitmasks(matchers, rows, mask)


def _column(requests, rows: int, fn, dtype, pad) -> np.ndarray:
    out = np.full(rows, pad, dtype)
    out[: len(requests)] = [fn(r.sampling_params) for r in requests]
    return out


def _rows(requests):
    """Per-row (first position computed, tokens computed, tokens known on the host, block-table row)."""
    data = np.fromiter(
        (v for r in requests for v in (r.num_computed_tokens, r.num_new_tokens,
                                       len(r.prompt_token_ids) + len(r.output_token_ids), r.table_row)),
        np.int64, 4 * len(requests),
    ).reshape(len(requests), 4)
    return data[:, 0], data[:, 1], data[:, 2], data[:, 3]


def _token(r, position: int) -> int:
    prompt = r.prompt_token_ids
    return prompt[position] if position < len(prompt) else r.output_token_ids[position - len(prompt)]


RAGGED_QUERY_BLOCK = 16  # query tokens per program of the ragged kernel
# Fresh prompts packed into at most this many tokens attend densely (a [heads, T, T] float32 score matrix,
# 512 MiB at 32 heads); larger prefill steps go through the ragged kernel, whose memory does not grow with T².
DENSE_PREFILL_MAX_TOKENS = 2048


def build_prefill(requests, block_manager, token_buckets, max_num_seqs, vocab, max_len, bias_fn, table_width):
    """Pack each row's uncomputed tokens (a whole prompt, the part after a cached prefix, a chunk, or
    one decode token)."""
    n = len(requests)
    first, count, known, rows = _rows(requests)
    total = int(count.sum())
    t = bucket_for(total, token_buckets)
    b = min(max_num_seqs, t)
    starts = np.cumsum(count) - count
    token_row = np.repeat(np.arange(n), count)
    pos = np.repeat(first - starts, count) + np.arange(total)
    tokens = np.zeros(t, np.int32)
    positions = np.zeros(t, np.int32)
    positions[:total] = pos
    segment_ids = np.full(t, -1, np.int32)
    segment_ids[:total] = token_row
    slot_mapping = np.zeros(t, np.int32)  # padding writes into the null page
    slot_mapping[:total] = block_manager.slots(rows[token_row], pos)
    logits_indices = np.zeros(b, np.int32)
    logits_indices[:n] = starts + count - 1
    in_flight = first >= known  # the row's token is being sampled by the step in flight
    for i, r in enumerate(requests):
        a, s = int(first[i]), int(starts[i])
        e = min(a + int(count[i]), int(known[i]))
        if e <= a:
            continue
        prompt = r.prompt_token_ids
        if e <= len(prompt):
            tokens[s : s + e - a] = prompt[a:e]
        elif e - a == 1:
            tokens[s] = _token(r, a)
        else:
            tokens[s : s + e - a] = r.all_token_ids[a:e]
    from_buffer = np.zeros(t, np.bool_)
    src_slots = np.zeros(t, np.int32)
    if in_flight.any():
        at = starts[in_flight]
        from_buffer[at] = True
        src_slots[at] = block_manager.slots(rows[in_flight], first[in_flight] - 1)
    statics = [_static(r) for r in requests]
    sampling, flags, late = _sampling(requests, statics, b, True, bias_fn, vocab, max_len)
    spans = list(zip(starts.tolist(), count.tolist()))
    ragged = {}
    if first.any() or t > DENSE_PREFILL_MAX_TOKENS:
        # Some row continues after pages already in the pool (or the step is too large for dense attention):
        # every token attends through the pool, prompt chunks through the ragged kernel's query blocks, rows
        # of one token (decode) through the decode kernel.
        tables = np.zeros((b, table_width), np.int32)
        tables[:n] = block_manager.block_table(rows, table_width)
        single = count == 1
        q_rows, q_starts, q_lens = query_blocks(starts, np.where(single, 0, count), RAGGED_QUERY_BLOCK,
                                                -(-t // RAGGED_QUERY_BLOCK) + b)
        lens = np.zeros(b, np.int32)
        lens[:n] = np.where(single, first + 1, 0)
        at = np.full(b, t, np.int32)
        at[:n] = np.where(single, starts, t)
        ragged = dict(block_tables=tables, q_block_rows=q_rows, q_block_starts=q_starts, q_block_lens=q_lens,
                      context_lens=lens, decode_token_indices=at)
        segment_ids = None
    dst = np.zeros(b, np.int32)
    dst[:n] = slot_mapping[logits_indices[:n]]
    return InputBatch(
        is_prefill=True,
        num_seqs=n,
        tokens=tokens,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_indices=logits_indices,
        sampling=sampling,
        flags=flags,
        token_src_slots=src_slots,
        token_from_buffer=from_buffer,
        token_dst_slots=dst,
        late_bitmask=late,
        segment_ids=segment_ids,
        prompt_spans=spans,
        **ragged,
    )


def build_decode(requests, block_manager, batch_buckets, table_width, vocab, max_len, bias_fn):
    """One token per row: each row's newest token at position `num_computed_tokens`."""
    n = len(requests)
    first, _, known, rows = _rows(requests)
    b = bucket_for(n, batch_buckets)
    in_flight = first >= known
    tokens = np.zeros(b, np.int32)
    if not in_flight.all():
        tokens[:n] = [0 if f else _token(r, int(p)) for r, p, f in zip(requests, first, in_flight)]
    positions = np.zeros(b, np.int32)
    positions[:n] = first
    slot_mapping = np.zeros(b, np.int32)
    slot_mapping[:n] = block_manager.slots(rows, first)
    src_slots = np.zeros(b, np.int32)
    src_slots[:n] = np.where(in_flight, block_manager.slots(rows, np.maximum(first - 1, 0)), 0)
    from_buffer = np.zeros(b, np.bool_)
    from_buffer[:n] = in_flight
    block_tables = np.zeros((b, table_width), np.int32)
    block_tables[:n] = block_manager.block_table(rows, table_width)
    context_lens = np.zeros(b, np.int32)
    context_lens[:n] = first + 1
    statics = [r.step_static or _static(r) for r in requests]
    sampling, flags, late = _sampling(requests, statics, b, False, bias_fn, vocab, max_len)
    return InputBatch(
        is_prefill=False,
        num_seqs=n,
        tokens=tokens,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_indices=np.arange(b, dtype=np.int32),
        sampling=sampling,
        flags=flags,
        token_src_slots=src_slots,
        token_from_buffer=from_buffer,
        token_dst_slots=slot_mapping,
        late_bitmask=late,
        block_tables=block_tables,
        context_lens=context_lens,
    )
