"""Export to a Hugging Face checkpoint folder, and the check against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tiny_model.chat_format import ASSISTANT, SYSTEM, USER


def save_checkpoint(out_dir: Path, params, cfg: dict, hf_tok, storage_dtype: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[storage_dtype]
    tensors = {
        name: torch.from_numpy(np.ascontiguousarray(np.asarray(value, np.float32))).to(tdtype).contiguous()
        for name, value in sorted(params.items())
    }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        hidden_act="silu",
        max_position_embeddings=cfg["max_position_embeddings"],
        initializer_range=cfg["initializer_range"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        architectures=["LlamaForCausalLM"],
        dtype=storage_dtype,
    )
    config.save_pretrained(out_dir)
    # Older readers look for the pre-5.x key names: write them as well.
    cfg_path = out_dir / "config.json"
    data = json.loads(cfg_path.read_text())
    data["torch_dtype"] = storage_dtype
    data["rope_theta"] = cfg["rope_theta"]
    cfg_path.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")

    GenerationConfig(
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    ).save_pretrained(out_dir)

    # Keep the chat template inside tokenizer_config.json (no separate .jinja file).
    hf_tok.save_pretrained(out_dir, save_jinja_files=False)
    # Write tokenizer_config.json in the form that transformers 4.x and 5.x both read.
    tok_cfg_path = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    for key in ("backend", "extra_special_tokens", "system_token", "user_token", "assistant_token"):
        tok_cfg.pop(key, None)
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["additional_special_tokens"] = [SYSTEM, USER, ASSISTANT]
    tok_cfg_path.write_text(json.dumps(dict(sorted(tok_cfg.items())), indent=2, ensure_ascii=False) + "\n")
    for path in out_dir.iterdir():
        path.chmod(0o644)


def load_saved_params(out_dir: Path):
    import jax.numpy as jnp
    from safetensors.torch import load_file

    tensors = load_file(str(out_dir / "model.safetensors"))
    return {k: jnp.asarray(v.float().numpy()) for k, v in tensors.items()}


def verify_against_transformers(out_dir: Path, fwd, windows: np.ndarray, n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    model.eval()
    batch = windows[:n, :-1]
    with torch.no_grad():
        ref = model(torch.from_numpy(batch.astype(np.int64))).logits.float().numpy()
    ours = np.asarray(fwd(load_saved_params(out_dir), batch))
    diff = float(np.abs(ref - ours).max())
    agree = float((ref.argmax(-1) == ours.argmax(-1)).mean())
    return {"max_abs_diff": diff, "argmax_agreement": agree, "logit_scale": float(np.abs(ref).max())}
