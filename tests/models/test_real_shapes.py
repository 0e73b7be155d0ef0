"""The real models users serve, from their config.json alone (no weights): our parameter shapes equal
those of transformers' model built from the same config (on the `meta` device), the KV cache takes the
right number of bytes per token, and the forward pass traces at full size (abstractly, no memory).
"""

import jax
import jax.numpy as jnp
import pytest
import torch

from jaxllm.config import ModelConfig
from jaxllm.models.registry import get_model_module

# config.json of each model as published on the Hugging Face hub (bookkeeping keys trimmed).
REAL_CONFIGS: dict[str, dict] = {
    "facebook/opt-125m": {
        "activation_dropout": 0.0, "activation_function": "relu", "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": True, "dropout": 0.1,
        "eos_token_id": 2, "ffn_dim": 3072, "hidden_size": 768, "init_std": 0.02, "layerdrop": 0.0,
        "max_position_embeddings": 2048, "model_type": "opt", "num_attention_heads": 12, "num_hidden_layers": 12,
        "pad_token_id": 1, "prefix": "</s>", "torch_dtype": "float16", "use_cache": True, "vocab_size": 50272,
        "word_embed_proj_dim": 768,
    },
    "facebook/opt-350m": {
        "activation_dropout": 0.0, "activation_function": "relu", "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": False, "dropout": 0.1,
        "eos_token_id": 2, "ffn_dim": 4096, "hidden_size": 1024, "init_std": 0.02, "layerdrop": 0.0,
        "max_position_embeddings": 2048, "model_type": "opt", "num_attention_heads": 16, "num_hidden_layers": 24,
        "pad_token_id": 1, "prefix": "</s>", "torch_dtype": "float16", "use_cache": True, "vocab_size": 50272,
        "word_embed_proj_dim": 512,
    },
    "microsoft/phi-1_5": {
        "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0, "bos_token_id": None, "embd_pdrop": 0.0,
        "eos_token_id": None, "hidden_act": "gelu_new", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "phi",
        "num_attention_heads": 32, "num_hidden_layers": 24, "num_key_value_heads": None,
        "partial_rotary_factor": 0.5, "qk_layernorm": False, "resid_pdrop": 0.0, "rope_scaling": None,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
        "vocab_size": 51200,
    },
    "google/gemma-2b": {
        "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 8192,
        "model_type": "gemma", "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
        "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 256000,
    },
    "mosaicml/mpt-7b": {
        "architectures": ["MPTForCausalLM"],
        "attn_config": {
            "alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
            "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
            "prefix_lm": False, "qk_ln": False, "softmax_scale": None,
        },
        "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
        "d_model": 4096, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4, "init_device": "cpu",
        "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 2048, "model_type": "mpt", "n_heads": 32,
        "n_layers": 32, "no_bias": True, "norm_type": "low_precision_layernorm", "resid_pdrop": 0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b", "torch_dtype": "bfloat16", "use_cache": False,
        "verbose": 0, "vocab_size": 50432,
    },
    "mosaicml/mpt-30b": {
        "architectures": ["MPTForCausalLM"],
        "attn_config": {
            "alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
            "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
            "prefix_lm": False, "qk_ln": False, "softmax_scale": None,
        },
        "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
        "d_model": 7168, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4, "init_device": "cpu",
        "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 8192, "model_type": "mpt", "n_heads": 64,
        "n_layers": 48, "no_bias": True, "norm_type": "low_precision_layernorm", "resid_pdrop": 0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b", "torch_dtype": "bfloat16", "use_cache": False,
        "verbose": 0, "vocab_size": 50432,
    },
    "tiiuae/falcon-7b": {
        "alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["FalconForCausalLM"],
        "attention_dropout": 0.0, "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
        "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon",
        "multi_query": True, "new_decoder_architecture": False, "num_attention_heads": 71,
        "num_hidden_layers": 32, "parallel_attn": True, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": 65024,
    },
    "tiiuae/falcon-40b": {
        "alibi": False, "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": False,
        "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 8192,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon", "multi_query": True,
        "new_decoder_architecture": True, "num_attention_heads": 128, "num_hidden_layers": 60, "num_kv_heads": 8,
        "parallel_attn": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 65024,
    },
    "gpt2": {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
        "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
        "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
        "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    },
    "Qwen/Qwen2.5-1.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
        "intermediate_size": 8960, "max_position_embeddings": 32768, "max_window_layers": 21,
        "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "meta-llama/Llama-2-7b-chat-hf": {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
        "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
        "vocab_size": 32000,
    },
}

# The same models as their repositories first published them, for transformers' remote code.
RW_CONFIGS: dict[str, tuple[str, dict]] = {
    "falcon-7b (RWForCausalLM)": ("tiiuae/falcon-7b", {
        "alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["RWForCausalLM"],
        "attention_dropout": 0.0, "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
        "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
        "model_type": "RefinedWebModel", "multi_query": True, "n_head": 71, "n_layer": 32, "parallel_attn": True,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 65024,
    }),
    "falcon-40b (RWForCausalLM)": ("tiiuae/falcon-40b", {
        "alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["RWForCausalLM"],
        "attention_dropout": 0.0, "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0,
        "hidden_size": 8192, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "RefinedWeb",
        "n_head": 128, "n_head_kv": 8, "n_layer": 60, "parallel_attn": True, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 65024,
    }),
}

# (num_kv_heads, head_dim, KV cache bytes per token over all layers in the checkpoint's dtype)
EXPECTED_KV = {
    "facebook/opt-125m": (12, 64, 2 * 12 * 12 * 64 * 2),  # 36 KiB
    "facebook/opt-350m": (16, 64, 2 * 24 * 16 * 64 * 2),
    "microsoft/phi-1_5": (32, 64, 2 * 24 * 32 * 64 * 2),  # 192 KiB
    "google/gemma-2b": (1, 256, 2 * 18 * 1 * 256 * 2),  # 18 KiB: multi-query
    "mosaicml/mpt-7b": (32, 128, 2 * 32 * 32 * 128 * 2),  # 512 KiB
    "mosaicml/mpt-30b": (64, 112, 2 * 48 * 64 * 112 * 2),
    "tiiuae/falcon-7b": (1, 64, 2 * 32 * 1 * 64 * 2),  # 8 KiB: multi-query
    "tiiuae/falcon-40b": (8, 64, 2 * 60 * 8 * 64 * 2),  # 120 KiB: 8 kv groups
    "gpt2": (12, 64, 2 * 12 * 12 * 64 * 4),  # no torch_dtype: float32
    "Qwen/Qwen2.5-1.5B-Instruct": (2, 128, 2 * 28 * 2 * 128 * 2),  # 28 KiB
    "meta-llama/Llama-2-7b-chat-hf": (32, 128, 2 * 32 * 32 * 128 * 2),  # 512 KiB
}


def _our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    module = get_model_module(cfg.architecture)
    table, shapes = module.name_table(cfg), module.hf_shapes(cfg)
    assert set(shapes) == set(table)
    return shapes


def _transformers_shapes(hf: dict) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """State-dict shapes of transformers' model for `hf`, and the names tied to another tensor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.tie_word_embeddings else set()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, tied


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_parameter_shapes_match_transformers(name):
    hf = REAL_CONFIGS[name]
    cfg = ModelConfig.from_dict(hf)
    ours = _our_shapes(cfg)
    theirs, tied = _transformers_shapes(hf)
    assert set(ours) == set(theirs) - tied, name
    assert {k: theirs[k] for k in ours} == ours, name


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_kv_cache_bytes_per_token(name):
    cfg = ModelConfig.from_dict(REAL_CONFIGS[name])
    kv_heads, head_dim, per_token = EXPECTED_KV[name]
    assert (cfg.num_kv_heads, cfg.head_dim) == (kv_heads, head_dim)
    assert cfg.kv_bytes_per_token() == per_token


@pytest.mark.parametrize("name", list(RW_CONFIGS))
def test_refinedweb_configs_read_like_the_falcon_ones(name):
    canonical, hf = RW_CONFIGS[name]
    cfg, ref = ModelConfig.from_dict(hf), ModelConfig.from_dict(REAL_CONFIGS[canonical])
    assert cfg.architecture == "RWForCausalLM"
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
        assert getattr(cfg, field) == getattr(ref, field), field
    assert _our_shapes(cfg) == _our_shapes(ref)
    assert cfg.kv_bytes_per_token() == EXPECTED_KV[canonical][2]


@pytest.mark.parametrize("name", ["google/gemma-2b", "tiiuae/falcon-7b", "tiiuae/falcon-40b", "mosaicml/mpt-30b",
                                  "facebook/opt-350m", "microsoft/phi-1_5", "gpt2"])
def test_forward_traces_at_full_size(name):
    """Prefill and paged decode over the real shapes, evaluated abstractly (nothing is allocated)."""
    from jaxllm.model_loader import init_dummy_params
    from jaxllm.models.layers import AttentionMetadata

    cfg = ModelConfig.from_dict(REAL_CONFIGS[name])
    module = get_model_module(cfg.architecture)
    dtype = jnp.dtype(cfg.dtype)
    params = init_dummy_params(
        cfg, module.name_table(cfg), module.hf_shapes(cfg), lambda path, shape, seed: jax.ShapeDtypeStruct(shape, dtype)
    )
    pages, page_size = 8, 16
    pool = jax.ShapeDtypeStruct((cfg.num_kv_heads, pages, page_size, cfg.head_dim), dtype)
    kv = [(pool, pool) for _ in range(cfg.num_layers)]
    i32 = jnp.int32
    steps = {
        16: AttentionMetadata(slot_mapping=jax.ShapeDtypeStruct((16,), i32), segment_ids=jax.ShapeDtypeStruct((16,), i32)),
        2: AttentionMetadata(
            slot_mapping=jax.ShapeDtypeStruct((2,), i32), block_tables=jax.ShapeDtypeStruct((2, 4), i32),
            context_lens=jax.ShapeDtypeStruct((2,), i32),
        ),
    }
    for t, md in steps.items():
        tokens = jax.ShapeDtypeStruct((t,), i32)

        def step(params, tokens, positions, kv, md):
            hidden, new_kv = module.forward(params, cfg, tokens, positions, kv, md)
            return module.compute_logits(params, cfg, hidden), new_kv

        logits, new_kv = jax.eval_shape(step, params, tokens, tokens, kv, md)
        assert logits.shape == (t, cfg.vocab_size) and logits.dtype == jnp.float32
        assert len(new_kv) == cfg.num_layers and new_kv[0][0].shape == pool.shape


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError, match="Unsupported architecture 'BloomForCausalLM'") as err:
        ModelConfig.from_dict({"architectures": ["BloomForCausalLM"], "model_type": "bloom", "vocab_size": 8})
    for arch in ("FalconForCausalLM", "GPT2LMHeadModel", "GemmaForCausalLM", "MptForCausalLM", "OPTForCausalLM",
                 "PhiForCausalLM", "LlamaForCausalLM"):
        assert arch in str(err.value)
