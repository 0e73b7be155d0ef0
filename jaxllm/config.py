"""Configuration objects: what the model is, how big the KV pool is, how the scheduler batches.

Plain Python (no jax) so the engine can import it. The model side reads `ModelConfig`; the engine
reads `CacheConfig` and `SchedulerConfig`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from jaxllm.models.hf_config import normalize_hf_config

# Architectures whose forward pass lives in `jaxllm/models/` (see models/registry.py).
SUPPORTED_DTYPES = {
    "auto": None,
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
}

# vLLM's `kv_cache_dtype` names -> the element type of the KV pool ("auto": the model's dtype).
KV_CACHE_DTYPES = {
    "auto": None,
    "fp8": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}


def _resolve_dtype(requested: str, hf: dict[str, Any]) -> str:
    key = str(requested).lower().replace("torch.", "")
    if key not in SUPPORTED_DTYPES:
        raise ValueError(
            f"Unsupported dtype {requested!r}. Choose one of: auto, float32, bfloat16, float16 (alias half)."
        )
    if SUPPORTED_DTYPES[key] is not None:
        return SUPPORTED_DTYPES[key]
    cfg_dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    cfg_dtype = str(cfg_dtype).replace("torch.", "")
    if cfg_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(
            f"The checkpoint's dtype {cfg_dtype!r} is not supported; pass dtype='float32', 'bfloat16' or 'float16'."
        )
    return cfg_dtype


def _rope_parameters(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling) from either the old (`rope_theta`+`rope_scaling`) or new (`rope_parameters`) layout."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type in ("default", None):
            return theta, None
        scaling = dict(scaling, rope_type=rope_type)
    return theta, scaling or None


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape, read from Hugging Face `config.json`. Frozen; fields say what they mean."""

    path: str
    architecture: str
    vocab_size: int
    hidden_size: int  # D
    num_layers: int
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    intermediate_size: int  # F
    dtype: str  # "float32" | "bfloat16" | "float16": weights, activations and KV pool
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    hf_config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "auto") -> ModelConfig:
        cfg_file = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise ValueError(f"No config.json in {path!r}: not a Hugging Face model folder.")
        with open(cfg_file) as f:
            hf = json.load(f)
        return cls.from_dict(hf, path=path, dtype=dtype)

    @classmethod
    def from_dict(cls, hf: dict[str, Any], path: str = "", dtype: str = "auto") -> ModelConfig:
        hf = normalize_hf_config(hf)  # GPT-2/MPT/Falcon/OPT/... keys -> the Llama-style keys read below
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else ""
        from jaxllm.models.names import SUPPORTED_ARCHITECTURES  # plain data, no jax

        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"Unsupported architecture {arch or '(none in config.json)'!r}. "
                f"Supported architectures: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}."
            )
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        theta, scaling = _rope_parameters(hf)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        window = hf.get("sliding_window")
        if hf.get("use_sliding_window") is False:
            window = None
        return cls(
            path=path,
            architecture=arch,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            intermediate_size=int(hf["intermediate_size"]),
            dtype=_resolve_dtype(dtype, hf),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", arch == "Qwen2ForCausalLM")),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            hidden_act=str(hf.get("hidden_act", "silu")),
            sliding_window=int(window) if window else None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            hf_config=hf,
        )

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def kv_bytes_per_token(self, itemsize: int | None = None) -> int:
        """Bytes of K and V per token over all layers, with elements of `itemsize` bytes (default: the model's)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * (itemsize or self.dtype_bytes)


@dataclass
class CacheConfig:
    """The paged KV pool. `num_blocks` is filled in by the runner from memory or the overrides."""

    block_size: int = 16  # S: tokens per page
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    num_blocks: int | None = None  # P, including the null block 0
    enable_prefix_caching: bool = True  # share the pages of equal prompt prefixes
    cache_dtype: str = "auto"  # vLLM's kv_cache_dtype: auto (the model's dtype), fp8 (= fp8_e4m3), fp8_e5m2
    calculate_kv_scales: bool = False  # fp8: per-layer K/V scales from the first step instead of 1.0

    def __post_init__(self) -> None:
        if self.cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"Unknown kv_cache_dtype {self.cache_dtype!r}; choose one of: {', '.join(KV_CACHE_DTYPES)}."
            )
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}.")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}."
            )
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 2:
            raise ValueError("num_gpu_blocks_override must be at least 2 (block 0 is the null block).")

    def kv_dtype(self, model_dtype: str, backend: str | None = None) -> str:
        """The pool's element type (a NumPy/JAX dtype name) for a model computing in `model_dtype` on
        `backend`. On the CPU a bfloat16 model keeps a float32 pool (the same values): XLA's CPU backend
        widens a whole bfloat16 pool to float32 and back around every write, so a step's time would grow
        with the pool's size."""
        chosen = KV_CACHE_DTYPES[self.cache_dtype]
        if chosen is None and backend == "cpu" and model_dtype == "bfloat16":
            return "float32"
        return chosen or model_dtype

    @property
    def is_fp8(self) -> bool:
        return self.cache_dtype != "auto"


@dataclass
class SchedulerConfig:
    """How many sequences and tokens one step may hold."""

    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # default: max(max_model_len, 2048)
    enable_chunked_prefill: bool = True  # split prompts over steps and mix them with decodes
    async_scheduling: bool = True  # plan and launch step N+1 while step N runs on the device

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}.")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be at least 1, got {self.max_model_len}.")
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = max(self.max_model_len, 2048)
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}.")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                f"({self.max_model_len}): a prompt of max_model_len tokens could never be scheduled. "
                "Raise max_num_batched_tokens, lower max_model_len, or enable chunked prefill."
            )
