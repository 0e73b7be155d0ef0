"""Read the config.json of every supported family into one vocabulary (plain Python, no jax).

GPT-2, MPT, Falcon and OPT name their sizes their own way (`n_embd`, `d_model`, `n_head_kv`, `ffn_dim`...)
and leave some to class defaults that are not written into config.json. `normalize_hf_config` returns
the config with the Llama-style keys that `ModelConfig.from_dict` reads filled in from the family's
own keys (the family's keys win: they are what transformers reads), plus the family settings the
model files need, with defaults resolved. The original keys stay.

It also finds how a checkpoint prefixes its tensor names (`weight_prefix`): `gpt2` and older OPT
checkpoints were saved from the base model, without the `transformer.` / `model.` prefix.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from jaxllm.models.names import ARCHITECTURE_MODULES


def _first(hf: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    return default


def _attn_config(hf: dict[str, Any]) -> dict[str, Any]:
    attn = hf.get("attn_config") or {}
    return attn if isinstance(attn, dict) else dict(vars(attn))


def _gpt2(hf: dict[str, Any]) -> dict[str, Any]:
    d = int(_first(hf, "n_embd", "hidden_size", default=768))
    n = int(_first(hf, "n_head", "num_attention_heads", default=12))
    return dict(
        hidden_size=d,
        num_hidden_layers=int(_first(hf, "n_layer", "num_hidden_layers", default=12)),
        num_attention_heads=n,
        num_key_value_heads=n,
        head_dim=d // n,
        intermediate_size=int(_first(hf, "n_inner", default=4 * d)),
        max_position_embeddings=int(_first(hf, "n_positions", "max_position_embeddings", default=1024)),
        rms_norm_eps=float(_first(hf, "layer_norm_epsilon", default=1e-5)),
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=True)),
        hidden_act=str(_first(hf, "activation_function", default="gelu_new")),
        attention_bias=True,
        mlp_bias=True,
    )


def _opt(hf: dict[str, Any]) -> dict[str, Any]:
    d = int(_first(hf, "hidden_size", default=768))
    n = int(_first(hf, "num_attention_heads", default=12))
    bias = bool(_first(hf, "enable_bias", default=True))
    return dict(
        hidden_size=d,
        num_hidden_layers=int(_first(hf, "num_hidden_layers", default=12)),
        num_attention_heads=n,
        num_key_value_heads=n,
        head_dim=d // n,
        intermediate_size=int(_first(hf, "ffn_dim", default=3072)),
        max_position_embeddings=int(_first(hf, "max_position_embeddings", default=2048)),
        rms_norm_eps=1e-5,  # nn.LayerNorm's default: OPT's config has no epsilon
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=True)),
        hidden_act=str(_first(hf, "activation_function", default="relu")),
        attention_bias=bias,
        mlp_bias=bias,
        word_embed_proj_dim=int(_first(hf, "word_embed_proj_dim", default=d)),
        do_layer_norm_before=bool(_first(hf, "do_layer_norm_before", default=True)),
        enable_bias=bias,
        layer_norm_elementwise_affine=bool(_first(hf, "layer_norm_elementwise_affine", default=True)),
    )


def _phi(hf: dict[str, Any]) -> dict[str, Any]:
    d = int(_first(hf, "hidden_size", default=2048))
    n = int(_first(hf, "num_attention_heads", default=32))
    rope = hf.get("rope_parameters") or {}
    factor = _first(hf, "partial_rotary_factor", default=rope.get("partial_rotary_factor", 0.5))
    return dict(
        hidden_size=d,
        num_attention_heads=n,
        num_key_value_heads=int(_first(hf, "num_key_value_heads", default=n)),
        head_dim=int(_first(hf, "head_dim", default=d // n)),
        rms_norm_eps=float(_first(hf, "layer_norm_eps", default=1e-5)),
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=False)),
        hidden_act=str(_first(hf, "hidden_act", default="gelu_new")),
        attention_bias=True,
        mlp_bias=True,
        partial_rotary_factor=float(factor),
    )


def _gemma(hf: dict[str, Any]) -> dict[str, Any]:
    n = int(_first(hf, "num_attention_heads", default=16))
    act = _first(hf, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    return dict(
        num_attention_heads=n,
        num_key_value_heads=int(_first(hf, "num_key_value_heads", default=n)),
        head_dim=int(_first(hf, "head_dim", default=256)),
        max_position_embeddings=int(_first(hf, "max_position_embeddings", default=8192)),
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=True)),
        # The released configs say "gelu" but mean the tanh approximation (transformers converts it too).
        hidden_act="gelu_pytorch_tanh" if act == "gelu" else str(act),
    )


def _mpt(hf: dict[str, Any]) -> dict[str, Any]:
    d = int(_first(hf, "d_model", "hidden_size", default=2048))
    n = int(_first(hf, "n_heads", "num_attention_heads", default=16))
    attn = _attn_config(hf)
    return dict(
        hidden_size=d,
        num_hidden_layers=int(_first(hf, "n_layers", "num_hidden_layers", default=24)),
        num_attention_heads=n,
        num_key_value_heads=n,
        head_dim=d // n,
        intermediate_size=int(_first(hf, "expansion_ratio", default=4)) * d,
        max_position_embeddings=int(_first(hf, "max_seq_len", default=2048)),
        rms_norm_eps=float(_first(hf, "layer_norm_epsilon", default=1e-5)),
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=True)),
        hidden_act="gelu",
        attention_bias=not bool(_first(hf, "no_bias", default=True)),
        attn_config=dict(attn),
    )


def _falcon(hf: dict[str, Any]) -> dict[str, Any]:
    d = int(_first(hf, "hidden_size", "n_embed", default=4544))
    n = int(_first(hf, "num_attention_heads", "n_head", default=71))
    new_arch = hf.get("new_decoder_architecture")
    if new_arch is None:  # "RefinedWeb" (falcon-40b) is the new architecture, "RefinedWebModel" (7b) the old
        new_arch = hf.get("model_type") == "RefinedWeb"
    multi_query = bool(_first(hf, "multi_query", default=True))
    if new_arch:
        kv = int(_first(hf, "num_kv_heads", "n_head_kv", default=n))
    else:
        kv = 1 if multi_query else n
    return dict(
        hidden_size=d,
        num_hidden_layers=int(_first(hf, "num_hidden_layers", "n_layer", default=32)),
        num_attention_heads=n,
        num_key_value_heads=kv,
        head_dim=d // n,
        intermediate_size=int(_first(hf, "ffn_hidden_size", default=4 * d)),
        max_position_embeddings=int(_first(hf, "max_position_embeddings", default=2048)),
        rms_norm_eps=float(_first(hf, "layer_norm_epsilon", default=1e-5)),
        tie_word_embeddings=bool(_first(hf, "tie_word_embeddings", default=True)),
        hidden_act=str(_first(hf, "activation", default="gelu")),
        attention_bias=bool(_first(hf, "bias", default=False)),
        mlp_bias=bool(_first(hf, "bias", default=False)),
        new_decoder_architecture=bool(new_arch),
        multi_query=multi_query,
        parallel_attn=True if new_arch else bool(_first(hf, "parallel_attn", default=True)),
        num_ln_in_parallel_attn=int(_first(hf, "num_ln_in_parallel_attn", default=2)) if new_arch else 1,
        alibi=bool(_first(hf, "alibi", default=False)),
        bias=bool(_first(hf, "bias", default=False)),
    )


_FAMILIES = {"gpt2": _gpt2, "opt": _opt, "phi": _phi, "gemma": _gemma, "mpt": _mpt, "falcon": _falcon}


def normalize_hf_config(hf: dict[str, Any]) -> dict[str, Any]:
    """A copy of `hf` with the canonical (Llama-style) keys filled in for its family."""
    archs = hf.get("architectures") or []
    family = _FAMILIES.get(ARCHITECTURE_MODULES.get(archs[0], "")) if archs else None
    if family is None:
        return hf
    out = dict(hf)
    out.update(family(hf))
    return out


def _safetensors_names(file: str) -> list[str]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def checkpoint_tensor_names(path: str) -> set[str]:
    """Names of the tensors of the safetensors checkpoint in folder `path` (empty if it has none)."""
    if not path or not os.path.isdir(path):
        return set()
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return set(json.load(f)["weight_map"])
    names: set[str] = set()
    for file in sorted(os.listdir(path)):
        if file.endswith(".safetensors"):
            names.update(_safetensors_names(os.path.join(path, file)))
    return names


def weight_prefix(path: str, probe: str, prefixes: tuple[str, ...]) -> str:
    """The first of `prefixes` under which the checkpoint in `path` has tensor `probe` (else the first)."""
    names = checkpoint_tensor_names(path)
    for prefix in prefixes:
        if prefix + probe in names:
            return prefix
    return prefixes[0]
