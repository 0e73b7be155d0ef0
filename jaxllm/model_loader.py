"""Find a model on disk (local folder or the Hugging Face cache) and load its safetensors into a pytree.

Weights go from safetensors (read in parallel, one buffer per decoder layer, bf16 through ml_dtypes)
straight into the parameter tree named by the architecture's name table; nothing of the checkpoint is
kept besides what the table names.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from jaxllm.checkpoint_reader import CheckpointReader, HostGroup, TensorSlice, safetensors_slices

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def hf_cache_dir() -> str:
    """The hub cache folder, following HF_HUB_CACHE, then HF_HOME, as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def resolve_model_path(model: str, revision: str | None = None, download_dir: str | None = None) -> str:
    """A local folder for `model`: itself if it is a folder, else the cached (or downloaded) snapshot."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    cache = download_dir or hf_cache_dir()
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local:
        raise ValueError(f"Model {model!r} not found: {os.path.abspath(expanded)} is not a directory.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            model, revision=revision, cache_dir=cache, local_files_only=True, allow_patterns=WEIGHT_PATTERNS
        )
    except Exception as cache_err:  # not in the cache: try the network unless told not to
        if _offline():
            raise ValueError(
                f"Model {model!r} not found: not a local directory, and not in the Hugging Face cache at "
                f"{cache} (offline mode, so no download was tried)."
            ) from cache_err
        try:
            return snapshot_download(model, revision=revision, cache_dir=cache, allow_patterns=WEIGHT_PATTERNS)
        except Exception as net_err:
            raise ValueError(
                f"Model {model!r} not found: not a local directory, not in the Hugging Face cache at {cache}, "
                f"and the download failed ({type(net_err).__name__}: {net_err})."
            ) from net_err


def safetensors_files(path: str) -> list[str]:
    """The weight files of a model folder: the sharded index if present, else model.safetensors, else *.safetensors."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise ValueError(f"Weight shards listed in {index} are missing: {', '.join(missing)}.")
        return [os.path.join(path, f) for f in files]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (found {', '.join(others)}: convert them to safetensors)" if others else ""
        raise ValueError(f"No weights in {path}: no model.safetensors or *.safetensors files{hint}.")
    return [os.path.join(path, f) for f in files]


def load_params(
    config: Any, name_table: dict[str, tuple[tuple, bool]], put: Any, quant: Any = None, put_transposed: Any = None,
    put_layer: Any = None, slices: dict[str, TensorSlice] | None = None,
) -> dict:
    """Build the parameter pytree from safetensors (or from `slices`: where each named tensor is stored).

    name_table maps a checkpoint name to (path in the tree, transpose?). The tensors are read by a
    CheckpointReader, one host buffer per decoder layer (and per other tensor), many layers at once.
    `put_layer(buffer, layout)`, when given, receives a whole dense layer: its buffer and, per tensor,
    (leaf name, start in the buffer, dtype name, stored shape, transpose?); it returns the layer's leaves
    (one transfer and one device call per layer). Otherwise each tensor goes through
    `put(path, array)` (the array cast to the model dtype on the host; sharding happens there), or through
    `put_transposed(path, array)` for a 2-D array the table transposes (placed as its transpose, done on
    the device); without either the host transposes.
    Unknown checkpoint names are ignored (e.g. rotary caches); missing ones raise.

    With an AWQ `quant` (a QuantConfig), a layer's `X.qweight`, `X.qzeros` and `X.scales` become one
    host QuantizedWeight put at the place the dense `X.weight` would go (layers listed in the config's
    modules_to_not_convert keep their dense `X.weight`).
    """
    import ml_dtypes

    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[config.dtype]
    awq = None
    if quant is not None and quant.method == "awq":
        from jaxllm.quantization.awq import AwqCollector

        awq = AwqCollector(quant.group_size)
    if slices is None:
        slices = safetensors_slices(safetensors_files(config.path))
    groups = _groups(slices, name_table, awq)
    params: dict = {}
    seen: set[str] = set()
    for host in CheckpointReader().groups(list(groups.values())):
        layer = _layer_layout(host, name_table) if put_layer is not None and awq is None else None
        if layer is not None:
            tree_path, layout = layer
            node = params
            for key in tree_path:
                node = node.setdefault(key, {})
            node.update(put_layer(host.buffer, layout))
            seen.update(s.name for s in host.slices)
            continue
        for s in host.slices:
            name, array = s.name, host.array(s.name)
            base = awq.base_name(name) if awq is not None else None
            on_device = False
            if base is not None:
                done = awq.add(name, array)
                if done is None:
                    continue
                name, host_array = done
                tree_path = name_table[name][0]
                _check_quantizable(name, tree_path)
            else:
                tree_path, transpose = name_table[name]
                on_device = transpose and put_transposed is not None and array.ndim == 2
                # One pass at most: transpose and cast together, no copy of a tensor already in place.
                host_array = (array.T if transpose and not on_device else array).astype(np_dtype, order="C", copy=False)
            node = params
            for key in tree_path[:-1]:
                node = node.setdefault(key, {})
            node[tree_path[-1]] = put_transposed(tree_path, host_array) if on_device else put(tree_path, host_array)
            seen.add(name)
    if awq is not None and awq.incomplete():
        raise ValueError(f"The AWQ checkpoint in {config.path} lacks tensors: {', '.join(awq.incomplete()[:8])}.")
    missing = sorted(set(name_table) - seen)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"The checkpoint in {config.path} lacks weights the model needs: {shown}.")
    return params


def _groups(slices: dict[str, TensorSlice], name_table: dict, awq: Any) -> dict[tuple, list[TensorSlice]]:
    """The tensors the table names, grouped by decoder layer (others alone), in the order they are stored."""
    groups: dict[tuple, list[TensorSlice]] = {}
    for name, s in slices.items():
        base = awq.base_name(name) if awq is not None else None
        entry = name_table.get(base if base is not None else name)
        if entry is None:
            continue
        tree_path = entry[0]
        key = tuple(tree_path[:2]) if tree_path[0] == "layers" and len(tree_path) == 3 else (name,)
        groups.setdefault(key, []).append(s)
    return groups


def _layer_layout(host: HostGroup, name_table: dict) -> tuple[tuple, tuple] | None:
    """(("layers", i), ((leaf, start, dtype, shape, transpose), ...)) for a decoder layer's group, else None."""
    paths = [name_table[s.name] for s in host.slices]
    if paths[0][0][0] != "layers" or len(paths[0][0]) != 3:
        return None
    layout = tuple(
        (tree_path[-1], host.offsets[s.name], s.dtype.name, s.shape, transpose)
        for s, (tree_path, transpose) in zip(host.slices, paths)
    )
    return tuple(paths[0][0][:2]), layout


def _check_quantizable(name: str, tree_path: tuple) -> None:
    from jaxllm.quantization.weights import is_linear_leaf

    if not is_linear_leaf(tree_path, 2):
        raise ValueError(
            f"{name} is stored quantized, but jaxllm runs {tree_path[-1]!r} unquantized (only the linear layers "
            "inside the decoder layers are read quantized)."
        )


def init_dummy_params(config: Any, name_table: dict, hf_shapes: dict, make: Any) -> dict:
    """Random parameters of the right shapes (vLLM's `load_format="dummy"`), made on device.

    `make(path, shape, seed)` returns the device array; norms come out as ones so activations stay sane.
    """
    params: dict = {}
    for seed, (name, (tree_path, transpose)) in enumerate(sorted(name_table.items())):
        shape = tuple(reversed(hf_shapes[name])) if transpose else tuple(hf_shapes[name])
        node = params
        for key in tree_path[:-1]:
            node = node.setdefault(key, {})
        node[tree_path[-1]] = make(tree_path, shape, seed if "norm" not in tree_path[-1] else None)
    return params


def load_generation_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return json.load(f)
