#!/usr/bin/env python
"""Train the small default model that jaxllm ships in ``jaxllm/default_model/``.

The model is a Llama-architecture causal LM of a few million parameters, trained
from scratch with JAX + optax on the source code and docstrings of the CPython
standard library found in this machine's Python installation (PSF License).
Everything is deterministic given ``--seed``: the file list is sorted, the
held-out split is every ``--heldout-every``-th file, the parameter init and the
batch order come from the seed.

The output folder is a regular Hugging Face checkpoint (``config.json``,
``model.safetensors``, tokenizer files, ``generation_config.json``) plus a model
card ``README.md``. At the end the script checks that
``transformers.AutoModelForCausalLM`` (PyTorch) loads the folder and gives the
same next-token logits as the JAX forward pass in this file.

The defaults are the settings of the shipped model (its README.md has the
exact command, the measured wall time and the results)::

    nice -n 10 python scripts/train_tiny_model.py --seed 0 --steps 600 --lr 2e-3 \
        --warmup-steps 30 --eval-every 200 --out jaxllm/default_model
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import re
import shlex
import shutil
import sys
import sysconfig
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------
# Constants

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]  # ids 0..5 in this order

# Chat format: "<s><|system|>\n...</s>\n<|user|>\n...</s>\n<|assistant|>\n...</s>\n"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only system, user and assistant roles are supported') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Directories of the standard library that are left out: tests, third-party
# packages, the IDLE application, codec tables and generated data.
EXCLUDED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "encodings",
    "pydoc_data",
    "__pycache__",
    "ensurepip",
}

SAMPLE_PROMPTS = ["def ", "import os\n", '    """Return the', "class "]


# ----------------------------------------------------------------------------
# Data


def collect_stdlib_files(stdlib_dir: Path) -> list[Path]:
    """Sorted relative paths of the ``*.py`` files used as corpus."""
    files = []
    for path in stdlib_dir.rglob("*.py"):
        rel = path.relative_to(stdlib_dir)
        dirs = rel.parts[:-1]
        if any(d in EXCLUDED_DIRS for d in dirs):
            continue
        if dirs and dirs[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata"):
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text.replace("\r\n", "\n")


def chat_text(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Python rendering of CHAT_TEMPLATE (checked against the Jinja one)."""
    out = BOS
    for m in messages:
        out += f"<|{m['role']}|>\n{m['content']}{EOS}\n"
    if add_generation_prompt:
        out += f"{ASSISTANT}\n"
    return out


CHAT_SYSTEM_PROMPT = "You write Python code in the style of the standard library."


def chat_examples(source: str, max_lines: int = 12) -> list[str]:
    """Chat-formatted examples built from one module: the user asks for a
    function by the first line of its docstring, the assistant answers with
    the function's source. Gives the chat special tokens a trained meaning."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    examples = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_"):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = node.end_lineno or node.lineno
        if end - start + 1 > max_lines:
            continue
        request = doc.strip().split("\n\n")[0].replace("\n", " ")
        request = " ".join(request.split())
        if len(request) < 10:
            continue
        code = textwrap.dedent("\n".join(lines[start - 1 : end]))
        messages = []
        if len(examples) % 2 == 0:
            messages.append({"role": "system", "content": CHAT_SYSTEM_PROMPT})
        messages.append({"role": "user", "content": f"Write a function `{node.name}`: {request}"})
        messages.append({"role": "assistant", "content": code})
        examples.append(chat_text(messages))
    return examples


def build_corpus(stdlib_dir: Path, heldout_every: int, chat_max_lines: int):
    files = collect_stdlib_files(stdlib_dir)
    train_docs, heldout_docs, train_files, heldout_files, skipped = [], [], [], [], []
    train_chat, heldout_chat = [], []
    for i, rel in enumerate(files):
        text = read_text(stdlib_dir / rel)
        if text is None or not text.strip():
            skipped.append(rel.as_posix())
            continue
        is_heldout = (i + 1) % heldout_every == 0
        (heldout_docs if is_heldout else train_docs).append(text)
        (heldout_files if is_heldout else train_files).append(rel.as_posix())
        if chat_max_lines > 0:
            (heldout_chat if is_heldout else train_chat).extend(chat_examples(text, chat_max_lines))
    return {
        "train_docs": train_docs,
        "heldout_docs": heldout_docs,
        "train_chat": train_chat,
        "heldout_chat": heldout_chat,
        "train_files": train_files,
        "heldout_files": heldout_files,
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def wrap_tokenizer(tok, max_len: int):
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"system_token": SYSTEM, "user_token": USER, "assistant_token": ASSISTANT},
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def encode_stream(tok, docs: list[str], bos_id: int, eos_id: int) -> np.ndarray:
    """Concatenate ``<s> doc </s>`` for every document into one token stream.
    Chat documents already carry their own ``<s>`` and ``</s>`` tokens."""
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    parts = []
    for doc, enc in zip(docs, encodings):
        ids = enc.ids
        if doc.startswith(BOS):
            parts.append(np.asarray(ids, dtype=np.int32))
        else:
            parts.append(np.asarray([bos_id, *ids, eos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def split_space_prefixed(stream: np.ndarray, tok, prob: float, seed: int) -> np.ndarray:
    """Write a random fraction of the tokens ' word' as ' ' followed by 'word'.

    Byte-level BPE attaches a space to the word after it, so a prompt that ends
    with a space ("def ", "class ") ends with a lone space token that the plain
    corpus almost never contains. Seeing that split now and then teaches the
    model to continue such prompts."""
    if prob <= 0:
        return stream
    vocab = tok.get_vocab()
    space = "\u0120"  # byte-level symbol of " "
    space_id = vocab[space]
    rest_of = np.full(len(vocab), -1, dtype=np.int64)
    for token, idx in vocab.items():
        rest = token[1:]
        if token.startswith(space) and rest and not rest.startswith(space) and rest in vocab:
            rest_of[idx] = vocab[rest]
    rng = np.random.default_rng([seed, 1])
    chosen = np.nonzero((rest_of[stream] >= 0) & (rng.random(len(stream)) < prob))[0]
    out = stream.copy()
    out[chosen] = rest_of[stream[chosen]]
    return np.insert(out, chosen, space_id).astype(np.int32)


# ----------------------------------------------------------------------------
# Model: a minimal Llama in pure JAX (parameter names and layouts are those
# of Hugging Face's LlamaForCausalLM, linear weights are [out, in]).


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, d = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv, inter, v = (
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    )
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (nh * d, h)
        shapes[p + "self_attn.k_proj.weight"] = (nkv * d, h)
        shapes[p + "self_attn.v_proj.weight"] = (nkv * d, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, nh * d)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def init_params(cfg: dict, seed: int):
    import jax
    import jax.numpy as jnp

    shapes = param_shapes(cfg)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    std = cfg["initializer_range"]
    # Residual output projections are scaled down with depth (GPT-2 style).
    out_std = std / math.sqrt(2 * cfg["num_hidden_layers"])
    params = {}
    for key, (name, shape) in zip(keys, sorted(shapes.items())):
        if name.endswith("norm.weight"):
            params[name] = jnp.ones(shape, jnp.float32)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            params[name] = out_std * jax.random.normal(key, shape, jnp.float32)
        else:
            params[name] = std * jax.random.normal(key, shape, jnp.float32)
    return params


def rms_norm(x, weight, eps):
    import jax
    import jax.numpy as jnp

    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return weight * (x * jax.lax.rsqrt(var + eps))


def rope_cos_sin(positions, head_dim: int, theta: float):
    import jax.numpy as jnp

    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, head_dim]
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x):
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def linear(x, weight):
    """x @ weight.T for a torch-layout [out, in] weight."""
    return x @ weight.T


def forward(params, tokens, cfg: dict):
    """Logits [B, T, vocab] for token ids [B, T] (positions 0..T-1, causal), float32."""
    import jax
    import jax.numpy as jnp

    b, t = tokens.shape
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    groups = nh // nkv
    eps = cfg["rms_norm_eps"]
    cos, sin = rope_cos_sin(jnp.arange(t), d, cfg["rope_theta"])
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, D], broadcast over heads
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    scale = 1.0 / math.sqrt(d)

    x = params["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, params[p + "input_layernorm.weight"], eps)
        q = linear(h, params[p + "self_attn.q_proj.weight"]).reshape(b, t, nh, d)
        k = linear(h, params[p + "self_attn.k_proj.weight"]).reshape(b, t, nkv, d)
        v = linear(h, params[p + "self_attn.v_proj.weight"]).reshape(b, t, nkv, d)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Query head j uses kv head j // groups (as Hugging Face's repeat_kv).
        q = q.reshape(b, t, nkv, groups, d)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * scale
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        attn = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
        x = x + linear(attn.reshape(b, t, nh * d), params[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, params[p + "post_attention_layernorm.weight"], eps)
        gate = jax.nn.silu(linear(h, params[p + "mlp.gate_proj.weight"]))
        up = linear(h, params[p + "mlp.up_proj.weight"])
        x = x + linear(gate * up, params[p + "mlp.down_proj.weight"])
    x = rms_norm(x, params["model.norm.weight"], eps)
    return linear(x, params["lm_head.weight"])


def token_nll(params, batch, cfg: dict):
    """Per-token negative log-likelihood [B, T] of batch[:, 1:] given batch[:, :-1]."""
    import jax
    import jax.numpy as jnp

    logits = forward(params, batch[:, :-1], cfg)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------
# Training / evaluation


def make_optimizer(args, total_steps: int):
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=args.lr,
        warmup_steps=args.warmup_steps,
        decay_steps=max(total_steps, args.warmup_steps + 1),
        end_value=args.lr * args.final_lr_fraction,
    )

    def decay_mask(params):  # weight decay on matrices only, not on norm weights
        return jax.tree_util.tree_map(lambda p: p.ndim == 2, params)

    opt = optax.chain(
        optax.clip_by_global_norm(args.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=args.weight_decay, mask=decay_mask),
    )
    return opt, schedule


def sample_batch(rng: np.random.Generator, stream: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return np.stack([stream[s : s + seq_len + 1] for s in starts])


def heldout_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of seq_len + 1 tokens (consecutive windows share one token)."""
    n = (len(stream) - 1) // seq_len
    return np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def evaluate(nll_fn, params, windows: np.ndarray, batch_size: int) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        nll = np.asarray(nll_fn(params, chunk))
        total += float(nll.sum(dtype=np.float64))
        count += nll.size
    return total / count


def unigram_loss(train_stream: np.ndarray, windows: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy of an add-one smoothed unigram model fitted on the training
    tokens, measured on exactly the held-out target tokens the model is scored on."""
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[windows[:, 1:]].mean())


def round_to_bf16(params):
    import jax.numpy as jnp

    return {k: v.astype(jnp.bfloat16).astype(jnp.float32) for k, v in params.items()}


def greedy_jax(fwd, params, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = np.asarray(fwd(params, np.asarray([ids], np.int32)))
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos_id:
            break
    return ids[len(prompt_ids) :]


# ----------------------------------------------------------------------------
# Export


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


def write_model_card(out_dir: Path, info: dict) -> None:
    cfg = info["cfg"]
    samples = "\n\n".join(
        f"Prompt `{s['prompt']!r}`:\n\n```python\n{s['prompt']}{s['completion']}\n```"
        for s in info["samples"]
    )
    chat = info["chat_sample"]
    card = f"""---
license: other
license_name: psf-2.0
license_link: https://docs.python.org/3/license.html
library_name: transformers
pipeline_tag: text-generation
tags:
  - llama
  - jaxllm
  - tiny
---

# jaxllm default model

A very small Llama-architecture causal language model trained from scratch on
the source code and docstrings of the CPython {info["python_version"]} standard
library. jaxllm uses it when `LLM()` is created without a model name, so that
generation works offline with real (if modest) text. It writes Python that
looks like standard-library code; it is not an assistant and knows nothing
beyond that corpus.

## Data and licence

* Source: the `*.py` files of the Python standard library of the Python
  installation used for training (`sysconfig.get_paths()["stdlib"]`), sorted by
  path. Left out: the directories {", ".join(f"`{d}`" for d in sorted(EXCLUDED_DIRS))},
  `config-*` and `_sysconfigdata*`.
* {info["n_train_files"]} training files ({info["train_mb"]:.1f} MB of text),
  {info["n_heldout_files"]} held-out files (every {info["heldout_every"]}th file of the
  sorted list, {info["heldout_mb"]:.2f} MB).
* In addition, {info["n_train_chat"]} chat-formatted examples built from the training
  files (user: the first paragraph of a public function's docstring; assistant:
  the function's source), so that the chat tokens have a meaning.
* The Python standard library is distributed under the
  [PSF License Agreement for Python](https://docs.python.org/3/license.html)
  (Python Software Foundation License Version 2), which allows preparing and
  distributing derivative works provided that PSF's License Agreement and its
  copyright notice are retained and a brief summary of the changes is included.
  The weights and the tokenizer are derived from that text and are distributed
  under the same terms: `LICENSE.txt` in this folder is the licence file of the
  Python installation used for training ("Copyright (c) 2001-{info["psf_year"]}
  Python Software Foundation; All Rights Reserved"), and this card is the
  summary of the changes (the text was used as training data, see below).

## Architecture

| | |
|---|---|
| architecture | `LlamaForCausalLM` |
| parameters | {info["n_params"]:,} ({info["n_params_non_embedding"]:,} without embeddings and LM head) |
| layers | {cfg["num_hidden_layers"]} |
| hidden size | {cfg["hidden_size"]} |
| attention heads / KV heads | {cfg["num_attention_heads"]} / {cfg["num_key_value_heads"]} (grouped-query attention) |
| head dim | {cfg["head_dim"]} |
| MLP | SwiGLU, intermediate size {cfg["intermediate_size"]} |
| norm | RMSNorm, eps {cfg["rms_norm_eps"]} |
| position | RoPE, theta {cfg["rope_theta"]:g}, max {cfg["max_position_embeddings"]} positions (trained on {info["seq_len"]}) |
| embeddings | untied input embedding and LM head |
| vocabulary | {cfg["vocab_size"]} tokens, byte-level BPE |
| weights | `{info["storage_dtype"]}` safetensors ({info["weights_mb"]:.1f} MB) |

Special tokens: `<pad>` (0), `<s>` (1, BOS, added by the tokenizer), `</s>` (2,
EOS), `<|system|>`, `<|user|>`, `<|assistant|>`. Chat format (the
`chat_template` in `tokenizer_config.json`):

```
<s><|system|>
...</s>
<|user|>
...</s>
<|assistant|>
```

## Training

```
{info["command"]}
```

AdamW (b1 0.9, b2 0.95, weight decay {info["weight_decay"]}), peak learning rate
{info["lr"]}, {info["warmup_steps"]} warm-up steps then cosine decay to
{info["final_lr_fraction"]} of the peak, gradient clipping at {info["grad_clip"]},
batch {info["batch_size"]} x {info["seq_len"]} tokens, {info["steps"]} steps
({info["tokens_seen"] / 1e6:.1f} M tokens, {info["epochs"]:.2f} epochs over
{info["train_tokens"] / 1e6:.2f} M training tokens), float32, seed {info["seed"]}.
Pure JAX {info["jax_version"]} on CPU ({info["cpu"]}).

Wall time: {info["train_wall_s"] / 60:.1f} min for the training steps
({info["train_cpu_s"] / 60:.1f} min of CPU time; the machine's mean 1-minute load
average during training was {info["mean_load"]:.1f}, i.e. the run shared the
{info["cpu"]} with other jobs), {info["total_wall_s"] / 60:.1f} min for the whole
script (tokenizer, training, evaluation, export and checks).

Training windows are random {info["seq_len"] + 1}-token slices of the concatenated
documents (each `<s> ... </s>`). A fraction {info["space_split_prob"]} of the
tokens that start with a space (`" word"`) are written as a lone space token
followed by `"word"`, so that prompts ending with a space (`"def "`) continue
naturally.

## Evaluation

Mean cross-entropy per token (nats) on the {info["heldout_tokens"]:,} target
tokens of the held-out files (windows of {info["seq_len"]} tokens):

| model | held-out loss | perplexity |
|---|---|---|
| unigram baseline (add-one smoothed token frequencies of the training set) | {info["unigram_loss"]:.3f} | {math.exp(info["unigram_loss"]):.1f} |
| this model, float32 weights | {info["heldout_loss_fp32"]:.3f} | {math.exp(info["heldout_loss_fp32"]):.1f} |
| this model, shipped {info["storage_dtype"]} weights | {info["heldout_loss"]:.3f} | {math.exp(info["heldout_loss"]):.1f} |

Check against Hugging Face transformers {info["transformers_version"]}
(PyTorch, float32) on held-out windows: max abs difference of the next-token
logits {info["verify_max_abs_diff"]:.2e} (logits up to {info["verify_logit_scale"]:.1f}),
argmax agreement {info["verify_argmax_agreement"]:.4f}.

## Sample greedy output

Greedy decoding with transformers, {info["sample_tokens"]} new tokens.

{samples}

Chat (`apply_chat_template` with `add_generation_prompt=True`); user message:

> {chat["user"]}

Assistant:

```python
{chat["completion"]}
```
"""
    (out_dir / "README.md").write_text(card)


# ----------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "jaxllm" / "default_model"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--heldout-every", type=int, default=50)
    ap.add_argument(
        "--chat-max-lines",
        type=int,
        default=12,
        help="chat examples use functions of at most this many lines (0: no chat examples)",
    )
    ap.add_argument(
        "--space-split-prob",
        type=float,
        default=0.05,
        help="probability of writing a training token ' word' as the two tokens ' ' + 'word'",
    )
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate-size", type=int, default=768)
    ap.add_argument("--max-position-embeddings", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--final-lr-fraction", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--storage-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--sample-tokens", type=int, default=64)
    ap.add_argument("--skip-verify", action="store_true", help="skip the transformers comparison")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()

    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    out_dir: Path = args.out
    cfg = {
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden_size // args.heads,
        "max_position_embeddings": args.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
    }
    assert args.heads % args.kv_heads == 0 and args.hidden_size % args.heads == 0

    # --- data and tokenizer
    corpus = build_corpus(args.stdlib, args.heldout_every, args.chat_max_lines)
    print(
        f"corpus: {len(corpus['train_files'])} train files, {len(corpus['heldout_files'])} held-out files, "
        f"{len(corpus['skipped'])} skipped, {len(corpus['train_chat'])} chat examples",
        flush=True,
    )
    tok = train_tokenizer(corpus["train_docs"], args.vocab_size)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.get_vocab_size() == args.vocab_size, tok.get_vocab_size()
    hf_tok = wrap_tokenizer(tok, args.max_position_embeddings)
    bos_id, eos_id = hf_tok.bos_token_id, hf_tok.eos_token_id

    probe = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert hf_tok.apply_chat_template(probe, tokenize=False) == chat_text(probe)
    assert hf_tok.apply_chat_template(probe[:2], tokenize=False, add_generation_prompt=True) == chat_text(
        probe[:2], add_generation_prompt=True
    )

    train_stream = encode_stream(tok, corpus["train_docs"] + corpus["train_chat"], bos_id, eos_id)
    unigram_counts_stream = train_stream
    train_stream = split_space_prefixed(train_stream, tok, args.space_split_prob, args.seed)
    heldout_stream = encode_stream(tok, corpus["heldout_docs"], bos_id, eos_id)
    windows = heldout_windows(heldout_stream, args.seq_len)
    train_bytes = sum(len(d.encode()) for d in corpus["train_docs"])
    heldout_bytes = sum(len(d.encode()) for d in corpus["heldout_docs"])
    print(
        f"tokens: train {len(train_stream):,} (incl. chat), held-out {len(heldout_stream):,} "
        f"({heldout_bytes / max(1, len(heldout_stream)):.2f} bytes/token) -> {len(windows)} windows",
        flush=True,
    )

    # --- model and optimizer
    params = init_params(cfg, args.seed)
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    n_embed = params["model.embed_tokens.weight"].size + params["lm_head.weight"].size
    print(f"parameters: {n_params:,} ({n_params - n_embed:,} non-embedding)", flush=True)
    opt, schedule = make_optimizer(args, args.steps)
    opt_state = opt.init(params)

    def loss_fn(p, batch):
        return token_nll(p, batch, cfg).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(p, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return p, state, loss, optax.global_norm(grads)

    nll_fn = jax.jit(partial(token_nll, cfg=cfg))
    fwd = jax.jit(partial(forward, cfg=cfg))

    unigram = unigram_loss(unigram_counts_stream, windows, args.vocab_size)
    print(f"unigram baseline held-out loss: {unigram:.4f}", flush=True)

    rng = np.random.default_rng(args.seed)
    history = []
    t_train = time.time()
    cpu_train = time.process_time()
    t_log, last_logged = t_train, 0
    loads = []
    for step in range(1, args.steps + 1):
        batch = sample_batch(rng, train_stream, args.batch_size, args.seq_len)
        params, opt_state, loss, gnorm = train_step(params, opt_state, jnp.asarray(batch))
        if step % args.log_every == 0 or step == 1 or step == args.steps:
            loss = float(loss)
            now = time.time()
            rate = (step - last_logged) / max(now - t_log, 1e-9)
            t_log, last_logged = now, step
            loads.append(os.getloadavg()[0])
            print(
                f"step {step:5d}  loss {loss:.4f}  gnorm {float(gnorm):.3f}  lr {float(schedule(step - 1)):.2e}  "
                f"{rate:.2f} steps/s  {rate * args.batch_size * args.seq_len:,.0f} tok/s  "
                f"elapsed {now - t_train:,.0f}s",
                flush=True,
            )
            history.append({"step": step, "train_loss": loss})
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            ev = evaluate(nll_fn, params, windows, 32)
            print(f"step {step:5d}  held-out loss {ev:.4f}", flush=True)
    jax.block_until_ready(params)
    train_wall = time.time() - t_train
    train_cpu = time.process_time() - cpu_train
    print(
        f"training: {args.steps} steps in {train_wall:.1f}s wall ({args.steps / train_wall:.2f} steps/s), "
        f"{train_cpu:.1f}s CPU time",
        flush=True,
    )

    heldout_fp32 = evaluate(nll_fn, params, windows, 32)
    shipped = round_to_bf16(params) if args.storage_dtype == "bfloat16" else params
    heldout = evaluate(nll_fn, shipped, windows, 32)
    print(
        f"held-out loss: {heldout:.4f} ({args.storage_dtype} weights), {heldout_fp32:.4f} (float32), "
        f"unigram {unigram:.4f}",
        flush=True,
    )

    # --- export and checks
    save_checkpoint(out_dir, params, cfg, hf_tok, args.storage_dtype)

    info_verify = {
        "max_abs_diff": float("nan"),
        "argmax_agreement": float("nan"),
        "logit_scale": float("nan"),
    }
    if not args.skip_verify:
        info_verify = verify_against_transformers(out_dir, fwd, windows, 4)
        print(
            f"transformers check: max abs logit diff {info_verify['max_abs_diff']:.3e} "
            f"(|logits| up to {info_verify['logit_scale']:.1f}), argmax agreement {info_verify['argmax_agreement']:.4f}",
            flush=True,
        )
        if not (info_verify["max_abs_diff"] < 1e-3 and info_verify["argmax_agreement"] > 0.999):
            print("ERROR: transformers logits differ from the JAX forward", file=sys.stderr)
            return 1

    # Greedy samples: transformers generate, cross-checked with the JAX forward.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded_tok = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    saved_params = load_saved_params(out_dir)

    def hf_greedy(input_ids: list[int]) -> list[int]:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([input_ids]),
                attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                max_new_tokens=args.sample_tokens,
                do_sample=False,
            )
        return out[0, len(input_ids) :].tolist()

    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = loaded_tok(prompt)["input_ids"]
        assert ids[0] == bos_id
        hf_ids = hf_greedy(ids)
        jax_ids = greedy_jax(fwd, saved_params, ids, args.sample_tokens, eos_id)
        same = hf_ids[: len(jax_ids)] == jax_ids
        completion = loaded_tok.decode(hf_ids, skip_special_tokens=True)
        samples.append({"prompt": prompt, "completion": completion, "jax_matches": same})
        print(f"--- greedy {prompt!r} (JAX greedy identical: {same})\n{prompt}{completion}", flush=True)

    chat_user = "Write a function `is_even`: Return True if n is even."
    chat_ids = loaded_tok.apply_chat_template(
        [{"role": "user", "content": chat_user}], add_generation_prompt=True, tokenize=True
    )
    if hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    chat_completion = loaded_tok.decode(hf_greedy(list(chat_ids)), skip_special_tokens=True)
    print(f"--- chat {chat_user!r}\n{chat_completion}", flush=True)

    n_train_tokens = len(train_stream)
    license_text = (args.stdlib / "LICENSE.txt").read_text(encoding="utf-8")
    years = re.findall(
        r"\b(20\d\d)\b", license_text.split("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2")[-1]
    )
    total_wall = time.time() - t_start
    weights_mb = (out_dir / "model.safetensors").stat().st_size / 1e6
    niceness = os.nice(0)
    command = (
        (f"nice -n {niceness} " if niceness else "")
        + "python "
        + " ".join(
            shlex.quote(a) for a in ["scripts/train_tiny_model.py", *(sys.argv[1:] if argv is None else argv)]
        )
    )
    info = {
        "cfg": cfg,
        "python_version": platform.python_version(),
        "psf_year": max(years) if years else "",
        "n_train_files": len(corpus["train_files"]),
        "n_heldout_files": len(corpus["heldout_files"]),
        "n_train_chat": len(corpus["train_chat"]),
        "train_mb": train_bytes / 1e6,
        "heldout_mb": heldout_bytes / 1e6,
        "heldout_every": args.heldout_every,
        "n_params": n_params,
        "n_params_non_embedding": n_params - n_embed,
        "seq_len": args.seq_len,
        "storage_dtype": args.storage_dtype,
        "weights_mb": weights_mb,
        "command": command,
        "weight_decay": args.weight_decay,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "final_lr_fraction": args.final_lr_fraction,
        "grad_clip": args.grad_clip,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "epochs": args.steps * args.batch_size * args.seq_len / n_train_tokens,
        "train_tokens": n_train_tokens,
        "seed": args.seed,
        "jax_version": jax.__version__,
        "cpu": f"{os.cpu_count()} cores",
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "space_split_prob": args.space_split_prob,
        "mean_load": float(np.mean(loads)) if loads else float("nan"),
        "total_wall_s": total_wall,
        "heldout_tokens": int(windows[:, 1:].size),
        "unigram_loss": unigram,
        "heldout_loss_fp32": heldout_fp32,
        "heldout_loss": heldout,
        "transformers_version": transformers.__version__,
        "verify_max_abs_diff": info_verify["max_abs_diff"],
        "verify_logit_scale": info_verify["logit_scale"],
        "verify_argmax_agreement": info_verify["argmax_agreement"],
        "sample_tokens": args.sample_tokens,
        "samples": samples,
        "chat_sample": {"user": chat_user, "completion": chat_completion},
    }
    write_model_card(out_dir, info)
    shutil.copyfile(args.stdlib / "LICENSE.txt", out_dir / "LICENSE.txt")
    for path in (out_dir / "LICENSE.txt", out_dir / "README.md"):
        path.chmod(0o644)
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    print(f"wrote {out_dir} ({size / 1e6:.2f} MB): {sorted(f.name for f in out_dir.iterdir())}")
    print(f"total wall time {total_wall:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
