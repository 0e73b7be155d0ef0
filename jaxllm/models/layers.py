"""Pieces shared by the model families: norms, rotary embeddings, attention over the paged pool.

Pure functions over arrays. Dimension alphabet: B batch, T tokens, D model dim, N query heads,
K kv heads, G = N // K, H head dim, F MLP hidden, V vocab, P pages, S page size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxllm.models.tensor_parallel import shard_map
# matmul(x, w): x @ w for a dense weight or a QuantizedWeight; the models call their linear layers through it.
from jaxllm.quantization.matmul import matmul  # also used by the models directly
from jaxllm.sharding import TP, active_mesh
from pallas_kernels.kv_quant import calibrated_scales
from pallas_kernels.paged_attention import paged_attention, write_to_kv_pages
from pallas_kernels.paged_attention_reference import paged_attention_reference
from pallas_kernels.ragged_paged_attention import ragged_paged_attention
from pallas_kernels.ragged_paged_attention_xla import ragged_paged_attention_xla


class AttentionMetadata(NamedTuple):
    """Where this step's tokens go in the pool and what they attend to.

    Prefill (packed prompts): `segment_ids` is set; each token attends to earlier tokens of its own
    segment (padding tokens have segment -1). Decode: `block_tables` and `context_lens` are set; each
    token attends to its whole sequence in the pool through the paged-attention kernel. Ragged (rows
    continuing after pages in the pool, mixed prefill/decode steps): the query-block plan covers the
    prompt chunks; rows of one token (decode rows) go through the decode kernel, their token at
    `decode_token_indices` and their length in `context_lens` (0 for the other rows).
    """

    slot_mapping: jax.Array  # [T] int32: page_id * S + offset of each new token's K/V
    segment_ids: jax.Array | None = None  # [T] int32, prefill only
    block_tables: jax.Array | None = None  # [B, W] int32: decode, and prefill after a cached prefix
    context_lens: jax.Array | None = None  # [B] int32: decode, and the decode rows of a ragged step
    # Prefill after a cached prefix: every packed token attends through the pool (ragged kernel plan).
    q_block_rows: jax.Array | None = None  # [Qn] int32
    q_block_starts: jax.Array | None = None  # [Qn] int32
    q_block_lens: jax.Array | None = None  # [Qn] int32
    decode_token_indices: jax.Array | None = None  # [B] int32, ragged: a decode row's token (T: not one)

    @property
    def is_prefill(self) -> bool:
        return self.segment_ids is not None

    @property
    def is_ragged(self) -> bool:
        return self.q_block_rows is not None


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """RMSNorm computed in float32, then cast back (as Hugging Face does)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32.astype(x.dtype) * (weight + offset).astype(x.dtype)).astype(x.dtype)


def linear(x: jax.Array, p: dict, name: str) -> jax.Array:
    """`x @ p["w" + name]` (+ `p["b" + name]` when the layer has a bias); quantized weights go through `matmul`."""
    y = matmul(x, p["w" + name])
    return y + p["b" + name] if ("b" + name) in p else y


def qkv_projection(x: jax.Array, p: dict, n: int, kv: int, h: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [T, N, H], k and v [T, K, H], from one fused `w_qkv` (see `fusion.py`) or from wq, wk, wv."""
    t = x.shape[0]
    if "w_qkv" not in p:
        return (linear(x, p, "q").reshape(t, n, h), linear(x, p, "k").reshape(t, kv, h),
                linear(x, p, "v").reshape(t, kv, h))
    y = linear(x, p, "_qkv")
    return (y[:, : n * h].reshape(t, n, h), y[:, n * h : (n + kv) * h].reshape(t, kv, h),
            y[:, (n + kv) * h :].reshape(t, kv, h))


def gate_up_projection(x: jax.Array, p: dict, act) -> jax.Array:
    """act(x @ w_gate) * (x @ w_up), from one fused `w_gate_up` or from the two weights."""
    if "w_gate_up" not in p:
        return act(linear(x, p, "_gate")) * linear(x, p, "_up")
    y = linear(x, p, "_gate_up")
    f = y.shape[-1] // 2
    return act(y[:, :f]) * y[:, f:]


def layer_norm(x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, eps: float) -> jax.Array:
    """LayerNorm computed in float32 (affine part included), then cast back, as torch's fused kernel does.

    `weight` and `bias` may be None (no affine scale, no shift).
    """
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    y = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * weight.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def activation(name: str, architecture: str = ""):
    """The elementwise activation that Hugging Face's `ACT2FN[name]` computes."""
    if name in ("silu", "swish"):
        return jax.nn.silu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_approximate"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(
        f"Unsupported activation {name!r}{' for ' + architecture if architecture else ''}; "
        "supported: silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu."
    )


def alibi_slopes(num_heads: int, alibi_bias_max: float | None = None) -> np.ndarray:
    """Per-head ALiBi slopes [N] in float32.

    Without `alibi_bias_max`: the BLOOM/Falcon formula (geometric sequence from the closest power of two
    below N, then every other slope of the next power of two). With it: MPT's formula (the sequence for
    the next power of two above N with exponents scaled to `alibi_bias_max`, odd-indexed slopes first).
    """
    n = num_heads
    if alibi_bias_max is not None:
        n2 = 1 << max(0, math.ceil(math.log2(n)))
        exps = np.arange(1, n2 + 1, dtype=np.float64) * (float(alibi_bias_max) / n2)
        slopes = 1.0 / np.power(2.0, exps)
        if n2 != n:
            slopes = np.concatenate([slopes[1::2], slopes[::2]])[:n]
        return slopes.astype(np.float32)
    closest = 1 << math.floor(math.log2(n))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** np.arange(1, closest + 1, dtype=np.float64)
    if closest != n:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, n - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * remaining, 2, dtype=np.float64)])
    return slopes.astype(np.float32)


def rope_inv_freq(rotary_dim: int, theta: float, scaling: dict | None) -> jax.Array:
    """Inverse frequencies [rotary_dim // 2], with linear and Llama-3 scaling."""
    inv = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    if not scaling:
        return inv
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_len / low, old_len / high
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv / factor + smooth * inv
        out = jnp.where(wavelen > low_wavelen, inv / factor, inv)
        middle = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(middle, smoothed, out)
    raise ValueError(f"Unsupported rope scaling type {kind!r}; supported: default, linear, llama3.")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate the first 2 * len(inv_freq) dims of x [T, heads, H] ("rotate_half" convention)."""
    rot = 2 * inv_freq.shape[0]
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, rot/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]  # [T, 1, rot]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = x_rot * cos + rotated * sin
    return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out


def prefill_attention(
    q: jax.Array,  # [T, N, H]
    k: jax.Array,  # [T, K, H]
    v: jax.Array,  # [T, K, H]
    positions: jax.Array,  # [T]
    segment_ids: jax.Array,  # [T]
    scale: float,
    alibi_slopes: jax.Array | None = None,  # [N]
) -> jax.Array:
    """Causal attention within each packed prompt; softmax in float32. Returns [T, N, H]."""
    t, n, h = q.shape
    kv = k.shape[1]
    # One prompt's non-finite value must not reach the prompts packed beside it: a masked-out key
    # still multiplies its V by a zero probability, and 0 * NaN = NaN. Zero such V rows and make
    # their keys NaN instead, which reaches only the queries allowed to attend to them.
    bad = ~jnp.all(jnp.isfinite(v), axis=-1, keepdims=True)
    k, v = jnp.where(bad, jnp.nan, k).astype(k.dtype), jnp.where(bad, 0, v).astype(v.dtype)
    qg = q.reshape(t, kv, n // kv, h)  # [T, K, G, H]
    scores = jnp.einsum("tkgh,skh->kgts", qg, k, preferred_element_type=jnp.float32) * scale
    if alibi_slopes is not None:
        rel = (positions[None, :] - positions[:, None]).astype(jnp.float32)  # [T, S]: key - query
        scores = scores + alibi_slopes.reshape(kv, n // kv, 1, 1) * rel
    mask = (segment_ids[:, None] == segment_ids[None, :]) & (positions[None, :] <= positions[:, None])
    scores = jnp.where(mask, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("kgts,skh->tkgh", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(t, n, h).astype(q.dtype)


def _inside_shard() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return mesh is not None and not mesh.empty and TP in mesh.manual_axes


def _per_shard(fn, mesh, in_specs, out_specs):
    """`fn(*args)` run per kv-head shard under `shard_map`; None arguments (absent options) stay None."""

    def call(*args):
        present = [i for i, a in enumerate(args) if a is not None]

        def local(*xs):
            full = [None] * len(args)
            for i, x in zip(present, xs):
                full[i] = x
            return fn(*full)

        specs = tuple(in_specs[i] for i in present)
        mapped = shard_map(local, mesh=mesh, in_specs=specs, out_specs=out_specs)
        return mapped(*(args[i] for i in present))

    return call


def paged_attention_impls():
    """(decode, ragged) attention over the pool, with the Pallas kernels' signatures.

    The Pallas kernels where they compile; on the CPU, XLA gathers of the block tables' pages instead:
    the Pallas interpreter copies every operand on each call, the whole KV pool included, which made a
    step's time grow with the pool's size.
    """
    if jax.default_backend() == "cpu":
        return paged_attention_reference, ragged_paged_attention_xla
    return paged_attention, ragged_paged_attention


def kv_write_impl() -> str:
    """How new K/V rows reach the pool: the Pallas write kernel on GPUs (XLA's scatter took 11-13 us
    a layer for 256 decode tokens on an H200, see scripts/bench_kv_write.py), XLA's scatter elsewhere."""
    return "pallas" if jax.default_backend() == "gpu" else "xla"


def attention(
    q: jax.Array,  # [T, N, H]
    k: jax.Array,  # [T, K, H]
    v: jax.Array,  # [T, K, H]
    kv_cache: tuple[jax.Array, ...],  # ([K, P, S, H], [K, P, S, H]) (+ k_scale, v_scale [] for float8 pages)
    positions: jax.Array,
    md: AttentionMetadata,
    scale: float,
    alibi_slopes: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Write this step's K/V into the pool, then attend: dense over the prompt, or paged for decode.

    A float8 pool carries the layer's K and V scales; a scale of 0 is set from this step's K/V
    (calibration on the first step, see pallas_kernels/kv_quant.py) and returned with the pool.
    Inside a per-shard block (`tensor_parallel.block`) q/k/v and the pool are this device's heads
    already. Called on whole arrays under a tensor-parallel mesh, the pool write and the Pallas
    kernel, which XLA cannot partition, run per kv-head shard under `shard_map` here.
    """
    h, pool_h = q.shape[-1], kv_cache[0].shape[-1]
    if pool_h != h:  # the pool stores heads zero-padded to a power of two (runner/kv_cache.pool_head_dim)
        pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pool_h - h)))
        out, cache = attention(pad(q), pad(k), pad(v), kv_cache, positions, md, scale, alibi_slopes)
        return out[..., :h], cache
    k_scale = v_scale = None
    if len(kv_cache) == 4:
        whole_k, whole_v = k, v
        if _inside_shard():  # every device sets the same scales: from all heads, not its own
            whole_k, whole_v = (jax.lax.all_gather(x, TP, axis=1, tiled=True) for x in (k, v))
        k_scale, v_scale = calibrated_scales(whole_k, whole_v, kv_cache[2], kv_cache[3])
    paged, ragged_paged = paged_attention_impls()

    def write(kp, vp, k, v, slots, ks, vs):
        return write_to_kv_pages(kp, vp, k, v, slots, k_scale=ks, v_scale=vs, impl=kv_write_impl())

    def decode(q, kp, vp, bt, lens, slopes, ks, vs):
        return paged(q, kp, vp, bt, lens, alibi_slopes=slopes, scale=scale, k_scale=ks, v_scale=vs)

    def ragged(q, kp, vp, pos, bt, rows, starts, lens, slopes, ks, vs):
        return ragged_paged(q, kp, vp, pos, bt, rows, starts, lens, alibi_slopes=slopes, scale=scale,
                            k_scale=ks, v_scale=vs)

    mesh = active_mesh()
    if mesh is not None:
        heads, pool, rep = P(None, "tp", None), P("tp"), P()
        write = _per_shard(write, mesh, (pool, pool, heads, heads, rep, rep, rep), (pool, pool))
        decode = _per_shard(decode, mesh, (heads, pool, pool, rep, rep, P("tp"), rep, rep), heads)
        ragged = _per_shard(ragged, mesh, (heads, pool, pool, *[rep] * 5, P("tp"), rep, rep), heads)

    k_pages, v_pages = write(kv_cache[0], kv_cache[1], k, v, md.slot_mapping, k_scale, v_scale)
    if md.is_ragged:
        out = ragged(q, k_pages, v_pages, positions, md.block_tables, md.q_block_rows, md.q_block_starts,
                     md.q_block_lens, alibi_slopes, k_scale, v_scale)
        if md.decode_token_indices is not None:  # the plan leaves out one-token rows: the decode kernel's work
            at = md.decode_token_indices
            rows = decode(q[jnp.minimum(at, q.shape[0] - 1)], k_pages, v_pages, md.block_tables, md.context_lens,
                          alibi_slopes, k_scale, v_scale)
            out = out.at[at].set(rows.astype(out.dtype), mode="drop")
    elif md.is_prefill:
        out = prefill_attention(q, k, v, positions, md.segment_ids, scale, alibi_slopes)
    else:
        out = decode(q, k_pages, v_pages, md.block_tables, md.context_lens, alibi_slopes, k_scale, v_scale)
    return out.astype(q.dtype), (k_pages, v_pages) + (() if k_scale is None else (k_scale, v_scale))
