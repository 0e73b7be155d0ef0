"""The functions `ModelRunner` compiles: one whole step, or the same step in two halves.

    _step:        tokens -> forward -> logits -> sample -> (packed results, token buffer)
                  (under tensor parallelism, when the sampling allows: forward -> vocab-parallel sampler)
    logits_step:  tokens -> forward -> logits            (a step whose token masks are filled later)
    sample_step:                       logits -> sample  (once the masks are known)

A step holding a grammar-constrained row whose newest token is still being sampled cannot have its
mask yet: the matcher must first see that token. Such a step is split. Its forward pass runs on the
device while the host reads the previous step back, advances the matchers and fills the masks; its
sampling follows. The unconstrained rows beside it never wait for the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models.layers import AttentionMetadata
from jaxllm.runner.input_batch import InputBatch
from jaxllm.runner.sampler import SamplingMetadata, chunked_prompt_logprobs, sample
from jaxllm.runner.vocab_parallel_sampler import applies as vocab_parallel_applies
from jaxllm.runner.vocab_parallel_sampler import sample_vocab_parallel

_LARGE = 1 << 14  # elements: a leaf this big (a vocabulary-wide bias, bitmask or token table) travels alone


@jax.tree_util.register_pytree_node_class
class PackedStepInputs:
    """A step's per-call arrays as one int32 buffer (one host-to-device transfer) plus any large ones.

    The layout (each array's offset, shape and dtype, and the tree they form) is static pytree data: it
    is part of what selects a compiled program, and `unpack` inside the program cuts the buffer back into
    the arrays (float32 and uint32 by bit casts, bool as nonzero int32).
    """

    def __init__(self, buffer, large: tuple, layout: tuple):
        self.buffer, self.large, self.layout = buffer, large, layout

    def tree_flatten(self):
        return (self.buffer, self.large), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], children[1], layout)

    @classmethod
    def pack(cls, tree) -> PackedStepInputs:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        parts, large, places, offset = [], [], [], 0
        for leaf in leaves:
            leaf = np.asarray(leaf)
            if leaf.size >= _LARGE or leaf.dtype.itemsize != 4 and leaf.dtype != np.bool_:
                places.append((-1, len(large), leaf.shape, leaf.dtype.name))
                large.append(leaf)
                continue
            flat = leaf.reshape(-1)
            parts.append(flat.astype(np.int32) if leaf.dtype == np.bool_ else flat.view(np.int32))
            places.append((offset, 0, leaf.shape, leaf.dtype.name))
            offset += flat.size
        buffer = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return cls(buffer, tuple(large), (treedef, tuple(places)))

    @property
    def num_tokens(self) -> int:
        """Length of the first array packed (a step's tokens)."""
        return self.layout[1][0][2][0]

    def unpack(self):
        """The tree `pack` was given, as arrays (traceable)."""
        treedef, places = self.layout
        leaves = []
        for offset, index, shape, dtype in places:
            if offset < 0:
                leaves.append(self.large[index])
                continue
            size = int(np.prod(shape, dtype=np.int64))
            x = self.buffer[offset : offset + size].reshape(shape)
            if dtype == "bool":
                x = x != 0
            elif dtype != "int32":
                x = jax.lax.bitcast_convert_type(x, jnp.dtype(dtype))
            leaves.append(x)
        return jax.tree_util.tree_unflatten(treedef, leaves)


def step_inputs(batch: InputBatch) -> tuple:
    """The per-call arguments of `_step` after (params, kv_caches, token_buffer), from a padded batch:
    one `PackedStepInputs`, so a step's small arrays reach the device in one transfer."""
    md = AttentionMetadata(
        slot_mapping=batch.slot_mapping,
        segment_ids=batch.segment_ids,
        block_tables=batch.block_tables,
        context_lens=batch.context_lens,
        q_block_rows=batch.q_block_rows,
        q_block_starts=batch.q_block_starts,
        q_block_lens=batch.q_block_lens,
        decode_token_indices=batch.decode_token_indices,
    )
    next_tokens = np.roll(batch.tokens, -1) if batch.flags.prompt_logprobs else None
    return (PackedStepInputs.pack((
        batch.tokens, batch.positions, md, batch.logits_indices, SamplingMetadata(**batch.sampling), next_tokens,
        batch.token_src_slots, batch.token_dst_slots, batch.token_from_buffer,
    )),)


def _logits(params, kv_caches, token_buffer, tokens, positions, md, logits_indices, next_tokens, src_slots,
            from_buffer, *, module, cfg, flags, top):
    """(logits [B, V], prompt logprobs or None, kv_caches)."""
    hidden, prompt, kv_caches = _hidden(params, kv_caches, token_buffer, tokens, positions, md, next_tokens,
                                        src_slots, from_buffer, module=module, cfg=cfg, flags=flags, top=top)
    return module.compute_logits(params, cfg, hidden[logits_indices]), prompt, kv_caches


def _hidden(params, kv_caches, token_buffer, tokens, positions, md, next_tokens, src_slots, from_buffer, *,
            module, cfg, flags, top):
    """(hidden states [T, D], prompt logprobs or None, kv_caches)."""
    # A token still being sampled when this step was planned is read where its step left it on device.
    tokens = jnp.where(from_buffer, token_buffer[src_slots], tokens)
    hidden, kv_caches = module.forward(params, cfg, tokens, positions, kv_caches, md)  # [T, D]
    prompt = None
    if flags.prompt_logprobs:
        prompt = chunked_prompt_logprobs(lambda x: module.compute_logits(params, cfg, x), hidden, next_tokens, top)
    return hidden, prompt, kv_caches


def sample_step(logits, token_buffer, smd, dst_slots, *, flags, top):
    """((packed [4, B], top ids, top logprobs), token_buffer with each row's token stored at its slot)."""
    out = sample(
        logits,
        smd,
        use_penalties=flags.penalties,
        use_bias=flags.bias,
        use_filters=flags.filters,
        use_top_logprobs=flags.top_logprobs,
        num_top_logprobs=top,
        use_bitmask=flags.bitmask,
        use_logprobs=flags.logprobs,
    )
    finite = jnp.all(jnp.isfinite(logits), axis=-1).astype(jnp.float32)  # a NaN row fails alone
    return _pack(out, finite, token_buffer, dst_slots)


def _pack(out, finite, token_buffer, dst_slots):
    # One [4, B] array (token id, logprob, rank, finite) so the host reads the step back in one transfer;
    # ids and ranks are below 2**24, exact in float32.
    packed = jnp.stack([out.token_ids.astype(jnp.float32), out.logprobs, out.ranks.astype(jnp.float32), finite])
    token_buffer = token_buffer.at[dst_slots].set(out.token_ids)
    return (packed, out.top_ids, out.top_logprobs), token_buffer


def logits_step(params, kv_caches, token_buffer, packed: PackedStepInputs, *, module, cfg, flags, top):
    """The first half of a split step (same arguments as `_step`): (logits, prompt logprobs, kv_caches)."""
    tokens, positions, md, logits_indices, _, next_tokens, src_slots, _, from_buffer = packed.unpack()
    return _logits(params, kv_caches, token_buffer, tokens, positions, md, logits_indices, next_tokens, src_slots,
                   from_buffer, module=module, cfg=cfg, flags=flags, top=top)


def _step(params, kv_caches, token_buffer, packed: PackedStepInputs, *, module, cfg, flags, top, tp=1):
    tokens, positions, md, logits_indices, smd, next_tokens, src_slots, dst_slots, from_buffer = packed.unpack()
    if vocab_parallel_applies(params, tp, top, flags):  # each device samples from its own vocab slice
        hidden, prompt, kv_caches = _hidden(params, kv_caches, token_buffer, tokens, positions, md, next_tokens,
                                            src_slots, from_buffer, module=module, cfg=cfg, flags=flags, top=top)
        out, finite = sample_vocab_parallel(
            lambda head, x: module.compute_logits(head, cfg, x), params, hidden[logits_indices], smd, tp=tp,
            use_top_logprobs=flags.top_logprobs, num_top_logprobs=top, use_logprobs=flags.logprobs,
        )
        results, token_buffer = _pack(out, finite, token_buffer, dst_slots)
        return results, prompt, kv_caches, token_buffer
    logits, prompt, kv_caches = _logits(params, kv_caches, token_buffer, tokens, positions, md, logits_indices,
                                        next_tokens, src_slots, from_buffer, module=module, cfg=cfg, flags=flags,
                                        top=top)
    results, token_buffer = sample_step(logits, token_buffer, smd, dst_slots, flags=flags, top=top)
    return results, prompt, kv_caches, token_buffer
