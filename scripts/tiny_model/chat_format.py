"""Special tokens and chat format of the default model."""

from __future__ import annotations

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


def chat_text(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Python rendering of CHAT_TEMPLATE (checked against the Jinja one)."""
    out = BOS
    for m in messages:
        out += f"<|{m['role']}|>\n{m['content']}{EOS}\n"
    if add_generation_prompt:
        out += f"{ASSISTANT}\n"
    return out
