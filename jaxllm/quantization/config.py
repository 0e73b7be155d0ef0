"""Which quantization a model runs with: the `quantization` argument and the checkpoint's own config.

Plain Python (no jax). Two sources, reconciled by :func:`resolve_quantization`:

* the checkpoint: `quantization_config` in `config.json`, else `quant_config.json` (AutoAWQ) or
  `quantize_config.json` (AutoGPTQ) beside it. Only AutoAWQ's GEMM format (4 bits, zero points) is
  read; every other format is refused with its name;
* the argument (`LLM(quantization=...)`, `--quantization/-q`): "awq" (the checkpoint must be AWQ;
  detected without it), or "int8" / "fp8" to quantize an unquantized checkpoint's linear weights at
  load time (weight-only, one scale per output channel).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

# Methods this build runs; "awq_marlin" is vLLM's name for the same checkpoints on its fast kernel.
CHECKPOINT_METHODS = ("awq",)
LOAD_TIME_METHODS = ("int8", "fp8")
_ALIASES = {"awq_marlin": "awq", "awq_gemm": "awq", "fp8_e4m3": "fp8", "float8": "fp8", "int8_weight_only": "int8"}

# Checkpoint formats that are recognised but not read, and what to say about them.
_UNSUPPORTED = {
    "gptq": "GPTQ checkpoints (quant_method 'gptq') are not supported",
    "gptq_marlin": "GPTQ checkpoints (quant_method 'gptq') are not supported",
    "marlin": "Marlin checkpoints are not supported",
    "bitsandbytes": "bitsandbytes checkpoints (load_in_4bit / load_in_8bit) are not supported",
    "fp8": (
        "FP8 checkpoints (quant_method 'fp8') are not supported; load the unquantized checkpoint with "
        "quantization='fp8' to quantize its weights at load time"
    ),
    "compressed-tensors": "compressed-tensors checkpoints are not supported",
    "aqlm": "AQLM checkpoints are not supported",
    "hqq": "HQQ checkpoints are not supported",
    "eetq": "EETQ checkpoints are not supported",
    "exl2": "EXL2 checkpoints are not supported",
    "squeezellm": "SqueezeLLM checkpoints are not supported",
    "modelopt": "ModelOpt checkpoints are not supported",
    "torchao": "torchao checkpoints are not supported",
    "mxfp4": "MXFP4 checkpoints are not supported",
    "quark": "Quark checkpoints are not supported",
    "gguf": "GGUF files are not supported",
}

SUPPORTED_SUMMARY = (
    "supported: 'awq' (AutoAWQ GEMM checkpoints: 4 bits, zero points, any group size dividing the input "
    "dimension), 'int8' and 'fp8' (weight-only, quantized at load time from an unquantized checkpoint)"
)


@dataclass(frozen=True)
class QuantConfig:
    """How the linear weights are stored. `group_size` -1 means one group over the whole input dim."""

    method: str  # "awq" | "int8" | "fp8"
    bits: int = 8
    group_size: int = -1
    zero_point: bool = False
    modules_to_not_convert: tuple[str, ...] = ()

    @property
    def from_checkpoint(self) -> bool:
        """True when the checkpoint stores the weights quantized (AWQ); False when quantized at load."""
        return self.method in CHECKPOINT_METHODS


def checkpoint_quant_config(path: str, hf_config: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The checkpoint's quantization config and where it came from, or None for an unquantized one."""
    qc = hf_config.get("quantization_config")
    if isinstance(qc, dict) and qc:
        return dict(qc), "config.json's quantization_config"
    for name in ("quant_config.json", "quantize_config.json"):
        file = os.path.join(path, name) if path else ""
        if file and os.path.isfile(file):
            with open(file) as f:
                data = json.load(f)
            if isinstance(data, dict) and data:
                return data, name
    return None


def _method_of(qc: dict[str, Any], source: str) -> str:
    method = qc.get("quant_method")
    if method:
        return str(method).lower()
    if "w_bit" in qc or "q_group_size" in qc or "version" in qc:  # AutoAWQ's own quant_config.json
        return "awq"
    if qc.get("load_in_4bit") or qc.get("load_in_8bit"):
        return "bitsandbytes"
    if source == "quantize_config.json" or "desc_act" in qc:  # AutoGPTQ's file
        return "gptq"
    return "unknown"


def parse_awq_config(qc: dict[str, Any], source: str) -> QuantConfig:
    """Validate an AWQ config (transformers' `AwqConfig` keys or AutoAWQ's) and return it."""
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    version = str(qc.get("version", "gemm")).lower()
    zero_point = bool(qc.get("zero_point", True))
    where = f" (from {source})"
    if version != "gemm":
        raise ValueError(
            f"AWQ checkpoints with version {version!r}{where} are not supported: only the GEMM layout "
            "(version 'gemm': qweight [in, out/8] packed in the 0,4,1,5,2,6,3,7 order) is read."
        )
    if bits != 4:
        raise ValueError(f"AWQ checkpoints with {bits} bits{where} are not supported: only 4-bit AWQ is read.")
    if not zero_point:
        raise ValueError(f"AWQ checkpoints without zero points (zero_point: false){where} are not supported.")
    if group == 0 or group < -1:
        raise ValueError(f"Invalid AWQ group size {group}{where}.")
    skip = qc.get("modules_to_not_convert") or ()
    return QuantConfig("awq", bits=4, group_size=group, zero_point=True, modules_to_not_convert=tuple(skip))


def resolve_quantization(
    requested: str | None, path: str, hf_config: dict[str, Any], random_weights: bool = False
) -> QuantConfig | None:
    """The QuantConfig to load `path` with, or None (unquantized). Raises ValueError with the reason.

    `random_weights` (load_format="dummy"): quantization="awq" needs no AWQ checkpoint then (random
    4-bit weights, group size 128), so a config-only folder can be benchmarked quantized.
    """
    method = None
    if requested is not None:
        method = str(requested).strip().lower()
        method = _ALIASES.get(method, method)
        if method in ("", "none"):
            method = None
        elif method not in CHECKPOINT_METHODS + LOAD_TIME_METHODS:
            known = f" ({_UNSUPPORTED[method]})" if method in _UNSUPPORTED else ""
            raise ValueError(f"Unknown or unsupported quantization method {requested!r}{known}; {SUPPORTED_SUMMARY}.")
    found = checkpoint_quant_config(path, hf_config)
    if found is None:
        if method == "awq" and random_weights:
            return QuantConfig("awq", bits=4, group_size=128, zero_point=True)
        if method == "awq":
            raise ValueError(
                f"quantization='awq' needs an AWQ checkpoint, but {path or 'the model'} has no quantization config "
                "(quantization_config in config.json, or quant_config.json). To quantize an unquantized "
                "checkpoint at load time use quantization='int8' or 'fp8'."
            )
        return QuantConfig(method, bits=8) if method in LOAD_TIME_METHODS else None
    qc, source = found
    ckpt_method = _method_of(qc, source)
    if ckpt_method == "awq":
        if method in LOAD_TIME_METHODS:
            raise ValueError(
                f"The checkpoint is already quantized with AWQ (from {source}); quantization={requested!r} "
                "quantizes unquantized checkpoints only. Pass quantization='awq' or leave it unset."
            )
        return parse_awq_config(qc, source)
    reason = _UNSUPPORTED.get(ckpt_method, f"quantization method {ckpt_method!r} is not supported")
    raise ValueError(f"Cannot load {path or 'the model'}: {reason} (from {source}); {SUPPORTED_SUMMARY}.")
