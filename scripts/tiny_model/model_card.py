"""The model card (``README.md``) of the exported checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

from tiny_model.corpus import EXCLUDED_DIRS


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
