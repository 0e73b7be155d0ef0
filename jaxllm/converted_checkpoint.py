"""Checkpoints in jaxllm's own parameter layout and dtype, saved with orbax-checkpoint.

`jaxllm convert MODEL OUT` reads a Hugging Face model once (transposes, renames, casts) and writes
`OUT/params` (an orbax checkpoint of the parameter tree exactly as the model runner holds it) next to
`config.json`, the tokenizer files, `generation_config.json` and the marker `jaxllm_checkpoint.json`.
`LLM(model=OUT)` then restores each parameter straight into its sharding on the mesh: every device
reads only its own shard, and no full copy of a tensor lands on one device.

This module imports neither jax nor orbax at import time (the CLI registers its parser cheaply).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

MARKER = "jaxllm_checkpoint.json"
FORMAT = "jaxllm-orbax"
VERSION = 1
PARAMS_DIR = "params"
# Files copied next to the parameters: config, generation config, tokenizer and chat template files.
_COPY_PATTERNS = ("*.json", "tokenizer*", "*.model", "*.txt", "*.jinja")
_SKIP = ("config.json", "model.safetensors.index.json", MARKER)
_KV_LEAVES = ("wk", "wv", "bk", "bv")


def is_converted_checkpoint(path: str | None) -> bool:
    """True when `path` is a folder written by `convert` (it holds the marker file)."""
    return bool(path) and os.path.isfile(os.path.join(path, MARKER))


def read_marker(path: str) -> dict:
    with open(os.path.join(path, MARKER)) as f:
        marker = json.load(f)
    if marker.get("format") != FORMAT:
        raise ValueError(f"{os.path.join(path, MARKER)} is not a {FORMAT} checkpoint marker.")
    if int(marker.get("version", 0)) > VERSION:
        raise ValueError(
            f"The checkpoint in {path} has format version {marker['version']}; this jaxllm reads up to {VERSION}."
        )
    return marker


def _host_params(cfg: Any) -> dict:
    """The parameter tree as NumPy arrays, in the model runner's layout and cfg.dtype."""
    from jaxllm.model_loader import load_params
    from jaxllm.models.registry import get_model_module

    module = get_model_module(cfg.architecture)
    return load_params(cfg, module.name_table(cfg), put=lambda path, host: host)


def convert(
    model: str,
    out: str,
    dtype: str = "auto",
    quantization: str | None = None,
    revision: str | None = None,
    download_dir: str | None = None,
    overwrite: bool = False,
) -> str:
    """Convert a Hugging Face model (folder or hub id) into a jaxllm checkpoint folder `out`; returns `out`."""
    from jaxllm.config import ModelConfig
    from jaxllm.model_loader import resolve_model_path

    if quantization:
        raise ValueError(
            "convert does not store quantized weights; convert without quantization and pass "
            f"quantization={quantization!r} when loading the original model instead."
        )
    src = resolve_model_path(model, revision=revision, download_dir=download_dir)
    cfg = ModelConfig.from_pretrained(src, dtype=dtype)
    if cfg.hf_config.get("quantization_config"):
        raise ValueError(f"{model!r} is a quantized checkpoint; convert supports unquantized models only.")
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.abspath(src) == out:
        raise ValueError("The output folder must differ from the model folder.")
    if os.path.exists(out) and os.listdir(out):
        if not overwrite:
            raise ValueError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it).")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)

    import orbax.checkpoint as ocp

    tree = _host_params(cfg)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(out, PARAMS_DIR), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()

    for name in sorted(os.listdir(src)):
        file = os.path.join(src, name)
        if name in _SKIP or not os.path.isfile(file):
            continue
        if any(fnmatch.fnmatch(name, pattern) for pattern in _COPY_PATTERNS):
            shutil.copy2(file, os.path.join(out, name))
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    hf["torch_dtype"] = cfg.dtype  # dtype="auto" on load picks the stored dtype
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    marker = {"format": FORMAT, "version": VERSION, "dtype": cfg.dtype, "architecture": cfg.architecture}
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump(marker, f, indent=2)
    return out


def _repeat_heads(array, repeats: int, head_dim: int):
    """[..., K*H] -> [..., K*repeats*H] on device, each head repeated in place (as sharding.repeat_kv_heads)."""
    import jax.numpy as jnp

    lead = array.shape[:-1]
    k = array.shape[-1] // head_dim
    heads = array.reshape(*lead, k, 1, head_dim)
    return jnp.broadcast_to(heads, (*lead, k, repeats, head_dim)).reshape(*lead, k * repeats * head_dim)


def load_converted(
    path: str,
    cfg: Any,
    shardings_fn: Callable[[tuple, tuple[int, ...]], Any],
    kv_repeats: int = 1,
    quant_config: Any = None,
) -> dict:
    """Restore the parameter tree of a converted checkpoint onto the mesh.

    `shardings_fn(tree_path, shape)` gives each leaf's NamedSharding; orbax reads every leaf directly into
    it, cast to cfg.dtype. With `kv_repeats > 1` (more devices than kv heads) the k/v projections are
    restored replicated and their heads repeated on device into the sharding of the repeated shape.
    """
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxllm.models.registry import get_model_module

    if quant_config is not None:
        raise ValueError(
            f"{path} holds unquantized weights converted by jaxllm; quantization is not supported for "
            "converted checkpoints (load the original model to quantize)."
        )
    marker = read_marker(path)
    if marker.get("architecture") not in (None, cfg.architecture):
        raise ValueError(f"{path} was converted from {marker['architecture']}, but config.json says {cfg.architecture}.")
    params_dir = os.path.join(os.path.abspath(path), PARAMS_DIR)
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(params_dir).item_metadata.tree
    dtype = jnp.dtype(cfg.dtype)

    target: dict = {}
    repeated: list[tuple] = []
    for tree_path, _ in get_model_module(cfg.architecture).name_table(cfg).values():
        meta = stored
        try:
            for key in tree_path:
                meta = meta[str(key)] if str(key) in meta else meta[key]
        except (KeyError, TypeError):
            raise ValueError(f"The converted checkpoint in {path} lacks {'.'.join(map(str, tree_path))}.") from None
        shape = tuple(meta.shape)
        if kv_repeats > 1 and tree_path[-1] in _KV_LEAVES:
            sharding = shardings_fn(tree_path, shape)
            sharding = NamedSharding(sharding.mesh, PartitionSpec())
            repeated.append(tree_path)
        else:
            sharding = shardings_fn(tree_path, shape)
        node = target
        for key in tree_path[:-1]:
            node = node.setdefault(key, {})
        node[tree_path[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    params = checkpointer.restore(params_dir, target)
    checkpointer.close()

    for tree_path in repeated:
        node = params
        for key in tree_path[:-1]:
            node = node[key]
        leaf = node[tree_path[-1]]
        shape = (*leaf.shape[:-1], leaf.shape[-1] * kv_repeats)
        repeat = jax.jit(_repeat_heads, static_argnums=(1, 2), out_shardings=shardings_fn(tree_path, shape))
        node[tree_path[-1]] = repeat(leaf, kv_repeats, cfg.head_dim)
    return params


def _convert_cli(args: argparse.Namespace) -> int:
    try:
        out = convert(
            args.model, args.out, dtype=args.dtype, quantization=args.quantization, revision=args.revision,
            download_dir=args.download_dir, overwrite=args.overwrite,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Converted {args.model} to {out}; load it with LLM(model={out!r}) or `jaxllm generate --model {out}`.")
    return 0


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`jaxllm convert MODEL OUT [--dtype ...]`."""
    parser = subparsers.add_parser(
        "convert", help="store a model's weights in jaxllm's layout (orbax) for faster, sharded loading"
    )
    parser.add_argument("model", help="local folder or hub id of a Hugging Face model")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (half)")
    parser.add_argument("--quantization", "-q", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--download-dir", default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=_convert_cli)
    return parser
