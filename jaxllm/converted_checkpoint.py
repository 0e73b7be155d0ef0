"""Checkpoints in jaxllm's own parameter layout and dtype: raw tensors, uncompressed, read at disk speed.

`jaxllm convert MODEL OUT` reads a Hugging Face model once (transposes, renames, casts) and writes

    OUT/params.bin    every tensor's bytes in the runner's layout ([in, out] linear weights, the chosen
                      dtype), each decoder layer's tensors next to each other, each tensor 4096-aligned
    OUT/params.json   {"tensors": [{"path": ["layers", 0, "wq"], "dtype", "shape", "offset", "nbytes"}, ...]}

next to `config.json`, the tokenizer files, `generation_config.json` and the marker `jaxllm_checkpoint.json`.
`LLM(model=OUT)` reads it through the same parallel reader as safetensors, with nothing left to
transpose or cast: on one device each layer is one read, one transfer and one device call (which fuses
q|k|v and gate|up); with tensor parallelism every tensor goes to its sharding on the mesh.

This module imports neither jax nor NumPy at import time (the CLI registers its parser cheaply).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import sys
from typing import Any

MARKER = "jaxllm_checkpoint.json"
FORMAT = "jaxllm-raw"
VERSION = 2
DATA_FILE = "params.bin"
INDEX_FILE = "params.json"
ALIGN = 4096
# Files copied next to the parameters: config, generation config, tokenizer and chat template files.
_COPY_PATTERNS = ("*.json", "tokenizer*", "*.model", "*.txt", "*.jinja")
_SKIP = ("config.json", "model.safetensors.index.json", MARKER, INDEX_FILE)


def is_converted_checkpoint(path: str | None) -> bool:
    """True when `path` is a folder written by `convert` (it holds the marker file)."""
    return bool(path) and os.path.isfile(os.path.join(path, MARKER))


def read_marker(path: str) -> dict:
    with open(os.path.join(path, MARKER)) as f:
        marker = json.load(f)
    if marker.get("format") == "jaxllm-orbax":
        raise ValueError(f"{path} was converted by an older jaxllm (orbax format); run `jaxllm convert` again.")
    if marker.get("format") != FORMAT:
        raise ValueError(f"{os.path.join(path, MARKER)} is not a {FORMAT} checkpoint marker.")
    if int(marker.get("version", 0)) > VERSION:
        raise ValueError(
            f"The checkpoint in {path} has format version {marker['version']}; this jaxllm reads up to {VERSION}."
        )
    return marker


class _Writer:
    """Appends tensors to params.bin (4096-aligned) and lists them for params.json."""

    def __init__(self, folder: str):
        self._file = open(os.path.join(folder, DATA_FILE), "wb")  # noqa: SIM115 (closed by close())
        self.tensors: list[dict] = []

    def write(self, path: tuple, array) -> None:
        import numpy as np

        offset = -(-self._file.tell() // ALIGN) * ALIGN
        self._file.seek(offset)
        data = np.ascontiguousarray(array)
        self._file.write(memoryview(data.reshape(-1).view(np.uint8)))
        self.tensors.append({"path": list(path), "dtype": data.dtype.name, "shape": list(data.shape),
                             "offset": offset, "nbytes": data.nbytes})

    def close(self, folder: str) -> None:
        self._file.close()
        with open(os.path.join(folder, INDEX_FILE), "w") as f:
            json.dump({"tensors": self.tensors}, f)


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

    from jaxllm.model_loader import load_params
    from jaxllm.models.registry import get_model_module

    writer = _Writer(out)  # layer by layer as they are read: host memory stays at a few layers
    try:
        load_params(cfg, get_model_module(cfg.architecture).name_table(cfg), put=writer.write)
    finally:
        writer.close(out)

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


def stored_tensors(path: str) -> list[dict]:
    """The index of a converted checkpoint: one dict per tensor (path, dtype, shape, offset, nbytes)."""
    read_marker(path)
    with open(os.path.join(path, INDEX_FILE)) as f:
        return json.load(f)["tensors"]


def converted_slices(path: str, cfg: Any) -> tuple[dict, dict]:
    """(slices, name table) to load a converted checkpoint with `model_loader.load_params`: every tensor's
    place in params.bin, named by its tree path, and the table that maps each name back to its path
    (nothing to transpose)."""
    from jaxllm.checkpoint_reader import TensorSlice, numpy_dtype
    from jaxllm.models.registry import get_model_module

    marker = read_marker(path)
    if marker.get("architecture") not in (None, cfg.architecture):
        raise ValueError(f"{path} was converted from {marker['architecture']}, but config.json says {cfg.architecture}.")
    data = os.path.join(os.path.abspath(path), DATA_FILE)
    slices, table = {}, {}
    for t in stored_tensors(path):
        name = ".".join(map(str, t["path"]))
        tree_path = tuple(int(k) if isinstance(k, int) else k for k in t["path"])
        slices[name] = TensorSlice(name, data, t["offset"], t["nbytes"], numpy_dtype(t["dtype"]), tuple(t["shape"]))
        table[name] = (tree_path, False)
    needed = {".".join(map(str, p)) for p, _ in get_model_module(cfg.architecture).name_table(cfg).values()}
    missing = sorted(needed - set(table))
    if missing:
        raise ValueError(f"The converted checkpoint in {path} lacks {', '.join(missing[:8])}.")
    return {k: v for k, v in slices.items() if k in needed}, {k: v for k, v in table.items() if k in needed}


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
        "convert", help="store a model's weights in jaxllm's layout (raw, uncompressed) for the fastest loading"
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
