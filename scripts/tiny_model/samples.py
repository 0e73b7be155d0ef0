"""Greedy samples of the exported checkpoint (shown in its model card)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiny_model.export import load_saved_params

SAMPLE_PROMPTS = ["def ", "import os\n", '    """Return the', "class "]


def greedy_jax(fwd, params, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = np.asarray(fwd(params, np.asarray([ids], np.int32)))
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos_id:
            break
    return ids[len(prompt_ids) :]


def greedy_samples(out_dir: Path, fwd, bos_id: int, eos_id: int, sample_tokens: int):
    """Greedy completions of ``SAMPLE_PROMPTS`` and of one chat request by the exported folder.

    Returns ``(samples, chat_user, chat_completion)``; each sample records whether the JAX greedy
    tokens are identical.
    """
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
                max_new_tokens=sample_tokens,
                do_sample=False,
            )
        return out[0, len(input_ids) :].tolist()

    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = loaded_tok(prompt)["input_ids"]
        assert ids[0] == bos_id
        hf_ids = hf_greedy(ids)
        jax_ids = greedy_jax(fwd, saved_params, ids, sample_tokens, eos_id)
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
    return samples, chat_user, chat_completion
