"""Write a dense Hugging Face checkpoint in AutoAWQ's GEMM format, from the format's definition.

Written independently of jaxllm's reader, so that the tests check one against the other:

* every linear layer `X` of the decoder layers ([N out, K in] as `X.weight`) becomes
    X.qweight int32 [K, N/8]:  word c of row k holds output columns 8c..8c+7, column 8c + j in the
                               nibble at bit offset 4 * ORDER[j], ORDER = 0, 4, 1, 5, 2, 6, 3, 7
    X.qzeros  int32 [K/G, N/8]: the zero points, packed the same way
    X.scales  fp16  [K/G, N]
  with W[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]: per group of G input rows and per output
  column, s = (max - min) / 15 (at least 1e-5), z = round(-min / s) and q = round(W / s) + z, both
  clamped to 0..15 (zero-point quantization of the weight itself, with no activation-aware search:
  the search changes the values, not the format);
* every other tensor is stored as fp16 (biases and norms included), as AutoAWQ saves them;
* config.json gets transformers' `quantization_config` (quant_method "awq", bits, group_size,
  zero_point, version "gemm") and torch_dtype float16; optionally AutoAWQ's own quant_config.json.

`write_awq_checkpoint` also returns the dense tensors the AWQ checkpoint stands for (dequantized
linear weights, fp16-rounded others, in float32), and `write_dense_checkpoint` saves them as an
ordinary float32 checkpoint to compare against.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
LINEAR = re.compile(r"\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")


def pack_columns(values: np.ndarray) -> np.ndarray:
    """[R, N] ints in 0..15 -> int32 [R, N/8] (column 8c + j -> nibble ORDER[j] of word c)."""
    rows, n = values.shape
    words = np.zeros((rows, n // 8), dtype=np.uint64)
    for c in range(n // 8):
        for j in range(8):
            words[:, c] |= values[:, 8 * c + j].astype(np.uint64) << np.uint64(4 * ORDER[j])
    return words.astype(np.uint32).view(np.int32)


def quantize_linear(weight_out_in: np.ndarray, group: int):
    """Torch-layout weight [N, K] -> (qweight, qzeros, scales, dense [N, K] float32 it now stands for)."""
    w = np.asarray(weight_out_in, np.float64).T  # [K, N]
    k, n = w.shape
    g = k if group == -1 else group
    wg = w.reshape(k // g, g, n)
    hi, lo = wg.max(axis=1), wg.min(axis=1)  # [K/G, N]
    scales = (np.maximum(hi - lo, 1e-5) / 15.0).astype(np.float16)
    s = scales.astype(np.float64)
    zeros = np.clip(np.round(-lo / s), 0, 15)
    q = np.clip(np.round(wg / s[:, None, :]) + zeros[:, None, :], 0, 15)
    dense = ((q - zeros[:, None, :]) * s[:, None, :]).reshape(k, n)
    qweight = pack_columns(q.reshape(k, n).astype(np.int64))
    qzeros = pack_columns(zeros.astype(np.int64))
    return qweight, qzeros, scales, dense.T.astype(np.float32)


def write_awq_checkpoint(
    src: str, dst: str, group_size: int = 64, *, quant_config_file: bool = False, in_config: bool = True,
    skip: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Quantize the safetensors checkpoint in `src` into `dst`; returns the dense tensors it stands for.

    `skip`: substrings of layer names left unquantized (listed as modules_to_not_convert).
    """
    from safetensors.numpy import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    out: dict[str, np.ndarray] = {}
    dense: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if LINEAR.search(name) and not any(s in name for s in skip):
            qweight, qzeros, scales, deq = quantize_linear(value, group_size)
            stem = name[: -len(".weight")]
            out[stem + ".qweight"], out[stem + ".qzeros"], out[stem + ".scales"] = qweight, qzeros, scales
            dense[name] = deq
        else:
            out[name] = value.astype(np.float16)
            dense[name] = out[name].astype(np.float32)
    # safetensors writes an array's memory as it lies: make every array C-contiguous first
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["torch_dtype"] = "float16"
    qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": list(skip) or None}
    if in_config:
        config["quantization_config"] = qc
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if quant_config_file:  # AutoAWQ's own file
        with open(os.path.join(dst, "quant_config.json"), "w") as f:
            json.dump({"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}, f)
    _copy_tokenizer(src, dst)
    return dense


def write_dense_checkpoint(src: str, dst: str, tensors: dict[str, np.ndarray]) -> None:
    """`tensors` as an ordinary float32 checkpoint with `src`'s config (minus any quantization)."""
    from safetensors.numpy import save_file

    os.makedirs(dst, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    _copy_tokenizer(src, dst)


def _copy_tokenizer(src: str, dst: str) -> None:
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "generation_config", "vocab", "merges")):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
