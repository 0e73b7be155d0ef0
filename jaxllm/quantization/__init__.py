"""Quantized linear weights: AWQ checkpoints (4-bit, read as stored) and weight-only int8 / fp8 at load.

    config.py       which quantization to use (the argument, the checkpoint's quantization_config)
    weights.py      QuantizedWeight (a pytree), per-channel int8 / fp8 quantization
    awq.py          the AutoAWQ GEMM format: packing, checkpoint -> QuantizedWeight, XLA dequantizer
    awq_layout.py   the device layout AWQ weights are repacked into at load time
    awq_unpack.py   nibbles -> float32 weights inside the kernels, launch plumbing they share
    awq_gemv.py     the AWQ matrix-vector kernel in Pallas (Triton lowering), a few rows
    awq_kernel.py   the AWQ tensor-core kernel in Pallas (Triton lowering), more rows
    matmul.py       matmul(x, w): the one entry point the models call

See docs/quantization.md.
"""

from jaxllm.quantization.config import QuantConfig, resolve_quantization
from jaxllm.quantization.matmul import matmul
from jaxllm.quantization.weights import (
    QuantizedWeight,
    dequantize_tree,
    is_linear_leaf,
    is_quantized,
    quantize_per_channel,
    tree_weight_bytes,
)

__all__ = [
    "QuantConfig",
    "QuantizedWeight",
    "dequantize_tree",
    "is_linear_leaf",
    "is_quantized",
    "matmul",
    "quantize_per_channel",
    "resolve_quantization",
    "tree_weight_bytes",
]
