"""Find a model on disk (local folder or the Hugging Face cache) and load its safetensors into a pytree.

Weights go from safetensors (read as NumPy, bf16 through ml_dtypes) straight into the parameter tree
named by the architecture's name table; nothing of the checkpoint is kept besides what the table names.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

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


_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


def read_safetensors_header(file: str) -> tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _numpy_dtype(name: str):
    if name in _ST_DTYPES:
        return np.dtype(_ST_DTYPES[name])
    import ml_dtypes

    return {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}.get(name)


def iter_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (checkpoint name, NumPy array) for every tensor of every weight file, in file order.

    The arrays are read-only views of the memory-mapped file: nothing is copied until the caller
    transposes, casts or uploads a tensor, so the page cache is read once.
    """
    for file in safetensors_files(path):
        header, start = read_safetensors_header(file)
        mapped = np.memmap(file, dtype=np.uint8, mode="r")
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            dtype = _numpy_dtype(info["dtype"])
            if dtype is None:
                raise ValueError(f"{file}: tensor {name} has dtype {info['dtype']}, which jaxllm does not read.")
            begin, end = info["data_offsets"]
            yield name, mapped[start + begin : start + end].view(dtype).reshape(info["shape"])
        del mapped


def load_params(
    config: Any, name_table: dict[str, tuple[tuple, bool]], put: Any, quant: Any = None, put_transposed: Any = None
) -> dict:
    """Build the parameter pytree from safetensors.

    name_table maps a checkpoint name to (path in the tree, transpose?). `put(path, array)` turns a host
    array (already cast to the model dtype) into a device array; it is where sharding happens.
    `put_transposed(path, array)`, when given, places a 2-D array the table transposes as its transpose
    (done on the device, much faster than NumPy's strided copy); without it the host transposes.
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
    params: dict = {}
    seen: set[str] = set()
    for name, array in iter_safetensors(config.path):
        base = awq.base_name(name) if awq is not None else None
        on_device = False
        if base is not None:
            if base not in name_table:
                continue
            done = awq.add(name, array)
            if done is None:
                continue
            name, host = done
            tree_path = name_table[name][0]
            _check_quantizable(name, tree_path)
        else:
            entry = name_table.get(name)
            if entry is None:
                continue
            tree_path, transpose = entry
            on_device = transpose and put_transposed is not None and array.ndim == 2
            # One pass at most: transpose and cast together, no copy of a tensor already in place.
            host = (array.T if transpose and not on_device else array).astype(np_dtype, order="C", copy=False)
        node = params
        for key in tree_path[:-1]:
            node = node.setdefault(key, {})
        node[tree_path[-1]] = put_transposed(tree_path, host) if on_device else put(tree_path, host)
        seen.add(name)
    if awq is not None and awq.incomplete():
        raise ValueError(f"The AWQ checkpoint in {config.path} lacks tensors: {', '.join(awq.incomplete()[:8])}.")
    missing = sorted(set(name_table) - seen)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"The checkpoint in {config.path} lacks weights the model needs: {shown}.")
    return params


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
