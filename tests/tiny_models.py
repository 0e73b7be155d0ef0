"""Tiny random Hugging Face models (saved with `save_pretrained`) and a small BPE tokenizer, built offline."""

from __future__ import annotations

import functools
import os

TOKENIZER_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\nimport sys\nprint('hello world')\n",
    "Paged attention stores keys and values in fixed-size blocks.",
    "héllo wörld ✓ 日本語 🙂 naïve café",
    "Once upon a time there was a small model that could generate text.",
]

ARCH_CONFIGS = {
    "LlamaForCausalLM": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    ),
    "Qwen2ForCausalLM": dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    ),
    "MistralForCausalLM": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=None,
    ),
}


@functools.lru_cache(maxsize=1)
def build_tokenizer():
    """A byte-level BPE tokenizer (vocab ~400) as a transformers fast tokenizer with <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        chat_template=(
            "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
        ),
    )


def make_tiny_model(path: str, architecture: str = "LlamaForCausalLM", seed: int = 0, **overrides):
    """Save a random `architecture` model (fp32, peaked logits) and the tokenizer into `path`."""
    import torch
    import transformers

    tok = build_tokenizer()
    cfg_cls = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    kwargs = dict(ARCH_CONFIGS[architecture], vocab_size=len(tok), initializer_range=0.15,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    kwargs.update(overrides)
    config = cfg_cls(**kwargs)
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval().float()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return model, tok
