"""The parameter tree a runner will hold, as `jax.ShapeDtypeStruct`s with shardings, known before loading.

Compiling a step needs only shapes, dtypes and shardings, so the runner predicts its final tree from
metadata and starts compiling while the weights are still being read:

    safetensors      tensor shapes from each file's JSON header (no tensor is read)
    jaxllm convert   shapes from the checkpoint's index (params.json)
    dummy            jax.eval_shape over the runner's own random-weight loader

then the same steps as the real load, abstractly: transposes from the name table, kv heads repeated
for tensor parallelism, int8/fp8 quantization at load (`quantize_per_channel` under eval_shape), and
q|k|v / gate|up fusion (`fuse_projections` under eval_shape). AWQ checkpoints are not predicted (None):
the runner then compiles after loading. The prediction is checked against the loaded tree, leaf by leaf,
before any precompiled executable is used.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import sharding
from jaxllm.checkpoint_reader import read_safetensors_header
from jaxllm.model_loader import safetensors_files
from jaxllm.quantization.weights import is_linear_leaf, is_quantized, quantize_per_channel

_KV_LEAVES = ("wk", "wv", "bk", "bv")


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the header of each weight file (8-byte length, then JSON)."""
    shapes = {}
    for file in safetensors_files(path):
        shapes.update({k: tuple(v["shape"]) for k, v in read_safetensors_header(file)[0].items()})
    return shapes


def _converted_shapes(path: str) -> dict[tuple, tuple[int, ...]]:
    from jaxllm.converted_checkpoint import stored_tensors

    return {tuple(t["path"]): tuple(t["shape"]) for t in stored_tensors(path)}


def _from_table(runner, shape_of) -> dict:
    """The unfused tree from the name table; shape_of(checkpoint name, tree path) -> stored shape."""
    cfg, quant = runner.model_config, runner.quant_config
    dtype = jnp.dtype(cfg.dtype)
    params: dict = {}
    for name, (tree_path, transpose) in runner.module.name_table(cfg).items():
        shape = tuple(shape_of(name, tree_path, transpose))
        if runner.kv_repeats > 1 and tree_path[-1] in _KV_LEAVES:
            shape = (*shape[:-1], shape[-1] * runner.kv_repeats)
        leaf = jax.ShapeDtypeStruct(shape, dtype)
        if quant is not None and is_linear_leaf(tree_path, len(shape)):
            leaf = jax.eval_shape(functools.partial(quantize_per_channel, kind=quant.method), leaf)
        node = params
        for key in tree_path[:-1]:
            node = node.setdefault(key, {})
        node[tree_path[-1]] = leaf
    return params


def _unfused(runner, load_format: str) -> dict | None:
    from jaxllm.converted_checkpoint import is_converted_checkpoint

    cfg, quant = runner.model_config, runner.quant_config
    if load_format == "dummy":
        return jax.eval_shape(lambda: runner.weights.load("dummy"))
    if quant is not None and quant.from_checkpoint:
        return None  # AWQ: the packed layout is known only once the three tensors of a layer are read
    if is_converted_checkpoint(cfg.path):
        if quant is not None:
            return None  # refused by the loader, with its own message
        stored = _converted_shapes(cfg.path)

        return _from_table(runner, lambda name, tree_path, transpose: stored[tuple(tree_path)])
    if load_format not in ("auto", "safetensors"):
        return None
    stored = safetensors_shapes(cfg.path)
    return _from_table(runner, lambda name, _, transpose: stored[name][::-1] if transpose else stored[name])


def with_shardings(tree: Any, mesh) -> Any:
    """Abstract leaves with the sharding the runner gives each parameter (by its leaf name)."""

    def attach(path, leaf):
        name = path[-1].key if hasattr(path[-1], "key") else path[-1]
        if is_quantized(leaf):
            shardings = sharding.leaf_sharding(mesh, name, leaf)
            return jax.tree_util.tree_map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), leaf, shardings
            )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding.param_sharding(mesh, name, leaf.shape))

    return jax.tree_util.tree_map_with_path(attach, tree, is_leaf=is_quantized)


def predict(runner, load_format: str) -> dict | None:
    """The runner's parameter tree after loading (and fusing), abstract; None when it cannot be told."""
    from jaxllm.models.fusion import fuse_projections

    try:
        tree = _unfused(runner, load_format)
    except Exception:  # let the real load report what is wrong with the checkpoint
        return None
    if tree is None:
        return None
    if runner.fuses_projections:
        tree = jax.eval_shape(functools.partial(fuse_projections, shards=runner.tp), tree)
    return with_shardings(tree, runner.mesh)


def abstract(tree: Any) -> Any:
    """A loaded tree's leaves as ShapeDtypeStructs with their shardings."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def difference(expected: Any, actual: Any) -> str | None:
    """None when both trees have the same structure, shapes, dtypes and equivalent shardings; else the first
    difference, in words."""
    a, tree_a = jax.tree_util.tree_flatten_with_path(expected)
    b, tree_b = jax.tree_util.tree_flatten_with_path(actual)
    if tree_a != tree_b:
        return f"the tree differs: predicted {tree_a}, loaded {tree_b}"
    for (path, x), (_, y) in zip(a, b):
        where = jax.tree_util.keystr(path)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{where}: predicted {x.dtype}{list(x.shape)}, loaded {y.dtype}{list(y.shape)}"
        if not x.sharding.is_equivalent_to(y.sharding, len(x.shape)):
            return f"{where}: predicted sharding {x.sharding}, loaded {y.sharding}"
    return None


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of an abstract tree (its shard of every leaf)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total
