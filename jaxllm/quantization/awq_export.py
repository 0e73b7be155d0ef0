"""Write a Hugging Face model folder as a 4-bit AWQ checkpoint in AutoAWQ's GEMM format.

    jaxllm quantize --awq MODEL_FOLDER OUT_FOLDER [--group-size 128]

Every linear layer inside the decoder layers (the weights jaxllm would run quantized; the model's name
table says which) is stored as AutoAWQ stores it, per layer `X` with weight W [K in, N out]:

    X.qweight  int32 [K, N/8]    word c of row k holds columns 8c..8c+7; column 8c + j in the
                                 nibble at bit 4 * ORDER[j], ORDER = 0, 4, 1, 5, 2, 6, 3, 7
    X.qzeros   int32 [K/G, N/8]  the zero points, packed the same way
    X.scales   fp16  [K/G, N]    W[k, n] ~ (q[k, n] - z[k // G, n]) * s[k // G, n]

Quantization is round-to-nearest with a zero point per group of G input rows and output column:
s = (max - min) / 15 (at least 1e-5), z = round(-min / s), q = round(W / s) + z, both clamped to
0..15. AutoAWQ's activation-aware search rescales weights before this step; it changes the values,
not the format, and needs calibration data, so it is not done here. Every other tensor is stored in
float16; config.json gets `quantization_config` (quant_method "awq", bits 4, group_size, zero_point,
version "gemm"); tokenizer and generation files are copied. Layers whose shape the format cannot hold
(K not a multiple of G, N not a multiple of 8) stay dense and are listed in `modules_to_not_convert`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from jaxllm.quantization.awq import pack_awq

_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def quantize_linear(weight_out_in: np.ndarray, group: int):
    """Torch-layout weight [N, K] -> (qweight, qzeros, scales, dense [N, K] float32 it now stands for)."""
    qweight, qzeros, scales, dense = quantize_in_out(np.asarray(weight_out_in).T, group)
    return qweight, qzeros, scales, dense.T


def quantize_in_out(w_in_out: np.ndarray, group: int):
    """Weight [K in, N out] -> (qweight, qzeros, scales, dense [K, N] float32 it now stands for)."""
    w = np.asarray(w_in_out, np.float64)
    k, n = w.shape
    g = k if group == -1 else group
    wg = w.reshape(k // g, g, n)
    hi, lo = wg.max(axis=1), wg.min(axis=1)  # [K/G, N]
    scales = (np.maximum(hi - lo, 1e-5) / 15.0).astype(np.float16)
    s = scales.astype(np.float64)
    zeros = np.clip(np.round(-lo / s), 0, 15)
    q = np.clip(np.round(wg / s[:, None, :]) + zeros[:, None, :], 0, 15)
    dense = ((q - zeros[:, None, :]) * s[:, None, :]).reshape(k, n).astype(np.float32)
    return pack_awq(q.reshape(k, n).astype(np.uint8)), pack_awq(zeros.astype(np.uint8)), scales, dense


def _linear_layers(src: str, config: dict) -> dict[str, bool]:
    """Checkpoint name of each weight jaxllm runs quantized -> whether it is stored [out, in] (torch)."""
    from jaxllm.config import ModelConfig
    from jaxllm.models.registry import get_model_module
    from jaxllm.quantization.weights import is_linear_leaf

    cfg = ModelConfig.from_dict({k: v for k, v in config.items() if k != "quantization_config"}, path=src)
    table = get_model_module(cfg.architecture).name_table(cfg)
    return {name: transpose for name, (path, transpose) in table.items() if is_linear_leaf(path, 2)}


def _fits(k: int, n: int, group: int) -> bool:
    return n % 8 == 0 and (group == -1 or k % group == 0)


class _ShardWriter:
    """Saves tensors into safetensors shards of about `shard_bytes`, with an index when there are several."""

    def __init__(self, dst: str, shard_bytes: int):
        self.dst, self.shard_bytes = dst, shard_bytes
        self.pending: dict[str, np.ndarray] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []

    def add(self, name: str, array: np.ndarray) -> None:
        self.pending[name] = np.ascontiguousarray(array)
        self.size += array.nbytes
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        from safetensors.numpy import save_file

        tmp = f"shard-{len(self.files):05d}.tmp"
        save_file(self.pending, os.path.join(self.dst, tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        count = len(self.files)
        weight_map = {}
        for i, (tmp, names) in enumerate(self.files):
            final = "model.safetensors" if count == 1 else f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.dst, tmp), os.path.join(self.dst, final))
            os.chmod(os.path.join(self.dst, final), 0o644)  # readable by a server running as another user
            weight_map.update({name: final for name in names})
        if count == 1:
            return
        total = sum(os.path.getsize(os.path.join(self.dst, f)) for f in set(weight_map.values()))
        with open(os.path.join(self.dst, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_awq_checkpoint(
    src: str, dst: str, group_size: int = 128, *, quant_config_file: bool = False, in_config: bool = True,
    skip: tuple[str, ...] = (), return_dense: bool = True, shard_bytes: int = 4 << 30,
) -> dict[str, np.ndarray]:
    """Quantize the safetensors model folder `src` into `dst`.

    `group_size`: input rows per scale and zero point (-1: one group over all of K). `skip`:
    substrings of layer names left dense (listed in `modules_to_not_convert`). `in_config` writes
    transformers' `quantization_config` into config.json, `quant_config_file` AutoAWQ's own
    quant_config.json. Weights already in `dst` are replaced. Returns the dense tensors the checkpoint stands for (dequantized linear
    weights in the torch layout, the others as stored; float32), or {} with `return_dense=False`.
    """
    from jaxllm.checkpoint_reader import iter_tensors
    from jaxllm.model_loader import safetensors_files

    if group_size != -1 and group_size < 1:
        raise ValueError(f"group_size must be positive or -1, got {group_size}.")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("The AWQ checkpoint must go to a folder other than the source model's.")
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    if "quantization_config" in config:
        raise ValueError(f"{src} is already quantized ({config['quantization_config'].get('quant_method')}).")
    linear = _linear_layers(src, config)
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(dst):  # weights of an earlier run would mix with these (a stale index above all)
        if name.endswith((".safetensors", ".tmp")) or name in _WEIGHT_INDEXES:
            os.remove(os.path.join(dst, name))
    writer = _ShardWriter(dst, shard_bytes)
    dense: dict[str, np.ndarray] = {}
    unconverted = list(skip)
    for name, value in iter_tensors(safetensors_files(src)):
        torch_layout = linear.get(name)
        w = None if torch_layout is None or any(s in name for s in skip) else (value.T if torch_layout else value)
        stem = name[: -len(".weight")]
        if w is not None and not _fits(*w.shape, group_size):
            unconverted.append(stem)
            w = None
        if w is None:
            stored = np.asarray(value).astype(np.float16)
            writer.add(name, stored)
            if return_dense:
                dense[name] = stored.astype(np.float32)
            continue
        qweight, qzeros, scales, deq = quantize_in_out(w, group_size)
        writer.add(stem + ".qweight", qweight)
        writer.add(stem + ".qzeros", qzeros)
        writer.add(stem + ".scales", scales)
        if return_dense:
            dense[name] = deq.T if torch_layout else deq
    writer.close()
    config["torch_dtype"] = "float16"
    quant = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
             "modules_to_not_convert": unconverted or None}
    if in_config:
        config["quantization_config"] = quant
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if quant_config_file:  # AutoAWQ's own file
        with open(os.path.join(dst, "quant_config.json"), "w") as f:
            json.dump({"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM",
                       "modules_to_not_convert": unconverted or None}, f, indent=2)
    _copy_other_files(src, dst)
    return dense


def _copy_other_files(src: str, dst: str) -> None:
    """Tokenizer, generation config, chat template...: every file but the weights and config.json."""
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if (not os.path.isfile(path) or name in ("config.json", "quant_config.json", *_WEIGHT_INDEXES)
                or name.endswith(_WEIGHT_FILES)):
            continue
        shutil.copy(path, os.path.join(dst, name))


def summary(dst: str) -> dict[str, Any]:
    """What a written checkpoint holds: quantized layers, dense tensors, bytes on disk."""
    from jaxllm.checkpoint_reader import read_safetensors_header
    from jaxllm.model_loader import safetensors_files

    names = [n for f in safetensors_files(dst) for n in read_safetensors_header(f)[0]]
    size = sum(os.path.getsize(f) for f in safetensors_files(dst))
    return {"quantized_layers": sum(n.endswith(".qweight") for n in names),
            "dense_tensors": sum(n.endswith((".weight", ".bias")) for n in names), "bytes": size}
