"""Explicit tensor-parallel collectives: a layer's attention and MLP run per shard, one all-reduce each.

Under a mesh with a "tp" axis (the runner traces its steps inside `jax.set_mesh`), each block runs
under `shard_map` on the device's own slice of the weights, as `jaxllm/sharding.py` splits them:

    x [T, D] (replicated) ─ norm ─┬─ q|k|v heads of this device ─ attention on its kv heads ─ o rows ─ psum ─ + bo
                                  └─ gate|up columns of this device ─ act ─ down rows ──────────── psum ─ + b_down

so a layer costs exactly two all-reduces of [T, D], the Pallas kernels see only their local heads and
the norms and the residual stream stay replicated. The block functions are the models' own code,
called with the local head counts; without a tensor-parallel mesh they run as they are, on whole arrays.

Row-parallel biases (bo, b_down, b_fc2) are replicated and added once, after the all-reduce. A layer
whose split weights did not divide (a quantized field kept whole) runs on whole arrays instead, with
XLA choosing the collectives (logged once per weight name).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm import sharding
from jaxllm.quantization.weights import QuantizedWeight

logger = logging.getLogger(__name__)

_ROW_BIASES = ("bo", "b_down", "b_fc2")
_UNEVEN_LOGGED: set[str] = set()

try:
    _shard_map = jax.shard_map
except AttributeError:  # jax before shard_map left jax.experimental
    from jax.experimental.shard_map import shard_map as _experimental_shard_map

    def _shard_map(f, *, mesh, in_specs, out_specs, check_vma=False):
        return _experimental_shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)


def shard_map(f, *, mesh, in_specs, out_specs):
    """`jax.shard_map` without replication checks (outputs are made replicated by explicit psums)."""
    return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _local_weight(leaf, spec, tp: int):
    """A QuantizedWeight's static (K, N) set to the shard's own, so matmul reshapes to local columns."""
    if not isinstance(leaf, QuantizedWeight):
        return leaf
    k, n = leaf.shape
    split = [axis == sharding.TP for axis in spec.qweight]
    return dataclasses.replace(leaf, shape=(k // tp if split[0] else k, n // tp if split[-1] else n))


def _runs_per_shard(p: dict, tp: int) -> bool:
    uneven = [name for name, leaf in p.items() if not sharding.splits_evenly(name, leaf, tp)]
    for name in uneven:
        if name not in _UNEVEN_LOGGED:
            _UNEVEN_LOGGED.add(name)
            logger.warning("%s does not split evenly over tp=%d: its layers run on whole arrays, "
                           "with collectives chosen by XLA", name, tp)
    return not uneven


def block(fn, p: dict, *args, arg_specs: tuple, bias: str, extra_spec=None):
    """`fn(p, tp, *args)` -> partial sum [T, D] (or (partial, extra)), all-reduced over "tp", + p[bias].

    `fn` computes one block with `tp`-th of the heads / MLP columns (local counts = global // tp) and
    returns its row-parallel product before the bias (`bias`: "bo" or "b_down", added after the sum when
    the layer has it). `arg_specs` place `args` (P() replicated, P("tp") split on the leading axis);
    `extra_spec` places the extra output.
    """
    bias = p.get(bias)
    local = {name: leaf for name, leaf in p.items() if name not in _ROW_BIASES}
    mesh = sharding.active_mesh()
    tp = 1 if mesh is None else mesh.shape[sharding.TP]
    if tp == 1 or not _runs_per_shard(local, tp):
        out = fn(local, 1, *args)
    else:
        specs = {name: sharding.leaf_spec(name, leaf, tp) for name, leaf in local.items()}

        def per_shard(weights, *xs):
            weights = {name: _local_weight(leaf, specs[name], tp) for name, leaf in weights.items()}
            result = fn(weights, tp, *xs)
            partial, extra = result if extra_spec is not None else (result, None)
            summed = jax.lax.psum(partial, sharding.TP)
            return summed if extra_spec is None else (summed, extra)

        out_specs = P() if extra_spec is None else (P(), extra_spec)
        out = shard_map(per_shard, mesh=mesh, in_specs=(specs, *arg_specs), out_specs=out_specs)(local, *args)
    if bias is None:
        return out
    return out + bias if extra_spec is None else (out[0] + bias, out[1])


def pool_spec(cache: tuple) -> tuple:
    """Placement of one layer's pool: pages [K, P, S, H] split on K, float8 scales [] replicated."""
    return tuple(P(sharding.TP) if x.ndim == 4 else P() for x in cache)


def local_heads(x: jax.Array, count: int, axis: int = 1) -> jax.Array:
    """This shard's `count` heads of a whole heads axis (a weight kept whole, e.g. a packed q|k|v)."""
    if x.shape[axis] == count:
        return x
    start = jax.lax.axis_index(sharding.TP) * count
    return jax.lax.dynamic_slice_in_dim(x, start, count, axis=axis)


def embed_tokens(embed: jax.Array, tokens: jax.Array) -> jax.Array:
    """embed[tokens] [T, D]; a vocab-split table looks up its own rows and the shards are summed."""
    mesh = sharding.active_mesh()
    tp = 1 if mesh is None else mesh.shape[sharding.TP]
    spec = sharding.leaf_spec("embed", embed, tp)
    if tp == 1 or isinstance(embed, QuantizedWeight) or spec == P():
        return embed[tokens]

    def per_shard(table, ids):
        rows = table.shape[0]
        local = ids - jax.lax.axis_index(sharding.TP) * rows
        mine = (local >= 0) & (local < rows)
        x = jnp.where(mine[:, None], table[jnp.clip(local, 0, rows - 1)], 0)
        return jax.lax.psum(x, sharding.TP)

    return shard_map(per_shard, mesh=mesh, in_specs=(spec, P()), out_specs=P())(embed, tokens)
