"""Tiny random models of the non-Llama families, built from transformers' own config and model classes
and saved with `save_pretrained` (fp32), with the shared test tokenizer (vocab ~400).

Every parameter is redrawn after construction: matrices N(0, 0.15) (peaked logits, so greedy decoding
has no near-ties), and biases and norm scales perturbed (transformers initializes them to 0 and 1,
which would hide a bias or norm parameter that is loaded wrongly).
"""

from __future__ import annotations

import os

from tests.tiny_models import build_tokenizer

# name -> (transformers config class, model class, architectures[0], config kwargs)
VARIANTS: dict[str, tuple[str, str, str, dict]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "GPT2LMHeadModel", dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=256,
    )),
    "opt": ("OPTConfig", "OPTForCausalLM", "OPTForCausalLM", dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
    )),
    # opt-350m style: LayerNorm after each block, embeddings narrower than the model (projected in and out).
    "opt-post-ln-proj": ("OPTConfig", "OPTForCausalLM", "OPTForCausalLM", dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
        do_layer_norm_before=False, word_embed_proj_dim=32,
    )),
    "phi": ("PhiConfig", "PhiForCausalLM", "PhiForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, partial_rotary_factor=0.5,
    )),
    # Multi-query with head_dim 32, so N * H (128) != D (64), like gemma-2b (8 heads of 256 over 2048).
    "gemma": ("GemmaConfig", "GemmaForCausalLM", "GemmaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, max_position_embeddings=256,
    )),
    "mpt": ("MptConfig", "MptForCausalLM", "MptForCausalLM", dict(
        d_model=64, n_heads=4, n_layers=2, max_seq_len=256, attn_config=dict(alibi=True, alibi_bias_max=8),
    )),
    # Six heads: MPT's slopes for a head count that is not a power of two; q/k/v clamped to +-1.
    "mpt-clip-qkv": ("MptConfig", "MptForCausalLM", "MptForCausalLM", dict(
        d_model=96, n_heads=6, n_layers=2, max_seq_len=256,
        attn_config=dict(alibi=True, alibi_bias_max=8, clip_qkv=1.0),
    )),
    # falcon-7b style: one kv head, attention and MLP in parallel off one LayerNorm, rotary.
    "falcon-7b": ("FalconConfig", "FalconForCausalLM", "FalconForCausalLM", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True, parallel_attn=True,
        new_decoder_architecture=False, alibi=False, bias=False, max_position_embeddings=256,
    )),
    # falcon-40b style: grouped kv heads fused per group, two LayerNorms.
    "falcon-40b": ("FalconConfig", "FalconForCausalLM", "FalconForCausalLM", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
        alibi=False, bias=False, max_position_embeddings=256,
    )),
    # falcon-rw style: ALiBi, sequential block, biases, q/k/v interleaved per head.
    "falcon-alibi": ("FalconConfig", "FalconForCausalLM", "FalconForCausalLM", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=False, parallel_attn=False,
        new_decoder_architecture=False, alibi=True, bias=True, max_position_embeddings=256,
    )),
}


def _redraw(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                param.copy_(0.15 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:  # norm scales (1 for LayerNorm, 0 for Gemma's (1 + w) RMSNorm)
                param.add_(0.1 * noise)


def make_arch_model(path: str, variant: str, seed: int = 0):
    """Save the tiny `variant` model (fp32) and the tokenizer into `path`; returns (torch model, tokenizer)."""
    import torch
    import transformers

    cfg_name, model_name, arch, kwargs = VARIANTS[variant]
    tok = build_tokenizer()
    config = getattr(transformers, cfg_name)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **kwargs,
    )
    config.architectures = [arch]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval().float()
    _redraw(model, seed)
    model.tie_weights()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return model, tok
