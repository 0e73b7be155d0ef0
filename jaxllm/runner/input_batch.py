"""Turn a scheduler decision into fixed-shape NumPy arrays for one compiled step.

Prefill packs the sequences' tokens back to back and pads to a token bucket T:

    tokens       [a0 a1 a2 a3 b0 b1 pad pad]   segment_ids [0 0 0 0 1 1 -1 -1]
    positions    [0  1  2  3  0  1  0   0  ]   logits_indices [3 5 0 0]  (last token of each)

Decode has one token per sequence, padded to a batch bucket B; padding rows have context length 0
and write their K/V into the null page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxllm.runner.buckets import bucket_for


@dataclass
class StepFlags:
    """Static switches: each combination is a separate compiled variant of a bucket."""

    penalties: bool = False
    bias: bool = False
    filters: bool = False
    top_logprobs: bool = False
    prompt_logprobs: bool = False
    bitmask: bool = False  # some row follows a grammar: token_bitmask masks the logits

    def key(self) -> tuple[bool, ...]:
        return (self.penalties, self.bias, self.filters, self.top_logprobs, self.prompt_logprobs, self.bitmask)


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
    # produced it, so a decode step reads its input tokens there and never waits for the host.
    token_src_slots: np.ndarray | None = None  # [B] decode: where to read each row's input token
    token_from_buffer: np.ndarray | None = None  # [B] bool decode: False = take `tokens` (beams choose on host)
    token_dst_slots: np.ndarray | None = None  # [B] where to store each row's sampled token
    segment_ids: np.ndarray | None = None  # [T] prefill
    block_tables: np.ndarray | None = None  # [B, W] decode
    context_lens: np.ndarray | None = None  # [B] decode
    q_block_rows: np.ndarray | None = None  # [Qn] prefill after a cached prefix: the ragged kernel's plan
    q_block_starts: np.ndarray | None = None
    q_block_lens: np.ndarray | None = None
    prompt_spans: list[tuple[int, int]] | None = None  # (start, length) in the packed prompt, prefill


def _flags(requests, is_prefill: bool, bias_rows: list) -> StepFlags:
    def any_(pred):
        return any(pred(r.sampling_params) for r in requests)

    return StepFlags(
        penalties=any_(
            lambda p: p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1
        ),
        bias=any(b is not None for b in bias_rows),
        filters=any_(lambda p: p.temperature > 0 and (p.top_k > 0 or p.top_p < 1 or p.min_p > 0)),
        top_logprobs=any_(lambda p: bool(p.logprobs)),
        prompt_logprobs=is_prefill and any(r.wants_prompt_logprobs for r in requests),
        bitmask=any(r.structured_output is not None for r in requests),
    )


def _sampling_arrays(requests, rows: int, flags: StepFlags, bias_rows, vocab: int, max_len: int) -> dict:
    def col(fn, dtype, pad):
        out = np.full(rows, pad, dtype)
        out[: len(requests)] = [fn(r) for r in requests]
        return out

    arrays = {
        "temperature": col(lambda r: r.sampling_params.temperature, np.float32, 0.0),
        "top_k": col(lambda r: max(0, r.sampling_params.top_k), np.int32, 0),
        "top_p": col(lambda r: r.sampling_params.top_p, np.float32, 1.0),
        "min_p": col(lambda r: r.sampling_params.min_p, np.float32, 0.0),
        "seed_lo": col(lambda r: r.seed & 0xFFFFFFFF, np.uint32, 0),
        "seed_hi": col(lambda r: (r.seed >> 32) & 0xFFFFFFFF, np.uint32, 0),
        "step": col(lambda r: len(r.output_token_ids) + r.num_pending, np.int32, 0),
    }
    if flags.penalties:
        arrays["presence_penalty"] = col(lambda r: r.sampling_params.presence_penalty, np.float32, 0.0)
        arrays["frequency_penalty"] = col(lambda r: r.sampling_params.frequency_penalty, np.float32, 0.0)
        arrays["repetition_penalty"] = col(lambda r: r.sampling_params.repetition_penalty, np.float32, 1.0)
        arrays["prompt_lens"] = col(lambda r: r.num_prompt_tokens, np.int32, 0)
        ids = np.full((rows, max_len), -1, np.int32)
        for i, r in enumerate(requests):
            toks = r.all_token_ids
            ids[i, : len(toks)] = toks
        arrays["token_ids"] = ids
    if flags.bias:
        bias = np.zeros((rows, vocab), np.float32)
        for i, row in enumerate(bias_rows):
            if row is not None:
                bias[i] = row
        arrays["logit_bias"] = bias
    if flags.bitmask:  # all bits set: unconstrained (and padding) rows keep every token
        mask = np.full((rows, (vocab + 31) // 32), -1, np.int32)
        for i, r in enumerate(requests):
            if r.structured_output is not None:
                r.structured_output.fill_bitmask(mask, i)
        arrays["token_bitmask"] = mask
    return arrays


RAGGED_QUERY_BLOCK = 16  # query tokens per program of the ragged kernel


def build_prefill(requests, block_manager, token_buckets, max_num_seqs, vocab, max_len, bias_rows, table_width):
    """Pack each sequence's uncomputed tokens (all of them, or the suffix after a cached prefix)."""
    total = sum(r.num_new_tokens for r in requests)
    t = bucket_for(total, token_buckets)
    b = min(max_num_seqs, t)
    tokens = np.zeros(t, np.int32)
    positions = np.zeros(t, np.int32)
    segment_ids = np.full(t, -1, np.int32)
    slot_mapping = np.zeros(t, np.int32)  # padding writes into the null page
    logits_indices = np.zeros(b, np.int32)
    spans, start = [], 0
    for i, r in enumerate(requests):
        assert r.num_pending == 0, "a sequence with tokens in flight cannot be prefilled"
        first = r.num_computed_tokens
        n = r.num_new_tokens
        tokens[start : start + n] = r.all_token_ids[first : first + n]
        positions[start : start + n] = np.arange(first, first + n)
        segment_ids[start : start + n] = i
        slot_mapping[start : start + n] = [block_manager.slot(r, p) for p in range(first, first + n)]
        logits_indices[i] = start + n - 1
        spans.append((start, n))
        start += n
    flags = _flags(requests, True, bias_rows)
    ragged = {}
    if any(r.num_computed_tokens for r in requests):
        # Some prompt continues after pages already in the pool: every token attends through the pool.
        from pallas_kernels.ragged_paged_attention import query_blocks

        tables = np.zeros((b, table_width), np.int32)
        for i, r in enumerate(requests):
            tables[i, : len(r.block_ids)] = r.block_ids
        rows, starts, lens = query_blocks(
            np.array([s for s, _ in spans]), np.array([n for _, n in spans]), RAGGED_QUERY_BLOCK,
            -(-t // RAGGED_QUERY_BLOCK) + b,
        )
        ragged = dict(block_tables=tables, q_block_rows=rows, q_block_starts=starts, q_block_lens=lens)
        segment_ids = None
    return InputBatch(
        is_prefill=True,
        num_seqs=len(requests),
        tokens=tokens,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_indices=logits_indices,
        sampling=_sampling_arrays(requests, b, flags, bias_rows, vocab, max_len),
        flags=flags,
        token_dst_slots=np.where(np.arange(b) < len(requests), slot_mapping[logits_indices], 0).astype(np.int32),
        segment_ids=segment_ids,
        prompt_spans=spans,
        **ragged,
    )


def build_decode(requests, block_manager, batch_buckets, table_width, vocab, max_len, bias_rows):
    b = bucket_for(len(requests), batch_buckets)
    tokens = np.zeros(b, np.int32)
    positions = np.zeros(b, np.int32)
    slot_mapping = np.zeros(b, np.int32)
    block_tables = np.zeros((b, table_width), np.int32)
    context_lens = np.zeros(b, np.int32)
    src_slots = np.zeros(b, np.int32)
    from_buffer = np.ones(b, np.bool_)
    for i, r in enumerate(requests):
        if r.beam is not None:  # a beam's input token was chosen by the host, not sampled
            tokens[i], from_buffer[i] = r.output_token_ids[-1], False
        pos = r.num_tokens - 1
        positions[i] = pos
        slot_mapping[i] = block_manager.slot(r, pos)
        src_slots[i] = block_manager.slot(r, pos - 1)  # the step at pos - 1 sampled this row's input
        block_tables[i, : len(r.block_ids)] = r.block_ids
        context_lens[i] = r.num_tokens
    flags = _flags(requests, False, bias_rows)
    return InputBatch(
        is_prefill=False,
        num_seqs=len(requests),
        tokens=tokens,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_indices=np.arange(b, dtype=np.int32),
        sampling=_sampling_arrays(requests, b, flags, bias_rows, vocab, max_len),
        flags=flags,
        token_src_slots=src_slots,
        token_from_buffer=from_buffer,
        token_dst_slots=slot_mapping,
        block_tables=block_tables,
        context_lens=context_lens,
    )
