"""Checks of the default model shipped in ``jaxllm/default_model/``.

These only need transformers and torch (not the jaxllm engine): they make sure
the folder is a valid, small Hugging Face Llama checkpoint with a working
tokenizer and chat template, and that it generates Python-like text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MODEL_DIR = Path(__file__).resolve().parents[1] / "jaxllm" / "default_model"
REQUIRED_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "LICENSE.txt",
]
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32)
    return m.eval()


def test_folder_has_all_files():
    assert MODEL_DIR.is_dir()
    for name in REQUIRED_FILES:
        path = MODEL_DIR / name
        assert path.is_file(), f"missing {name}"
        assert path.stat().st_size > 0, f"empty {name}"


def test_folder_is_small():
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert total < MAX_BYTES, f"{total / 1e6:.1f} MB"


def test_config_is_llama():
    from transformers import AutoConfig

    raw = json.loads((MODEL_DIR / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["model_type"] == "llama"
    config = AutoConfig.from_pretrained(str(MODEL_DIR))
    assert config.model_type == "llama"
    # Grouped-query attention: fewer KV heads than query heads.
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.max_position_embeddings >= 1024
    gen = json.loads((MODEL_DIR / "generation_config.json").read_text())
    assert gen["bos_token_id"] == config.bos_token_id
    assert gen["eos_token_id"] == config.eos_token_id


def test_weights_use_hf_llama_names():
    from safetensors import safe_open

    config = json.loads((MODEL_DIR / "config.json").read_text())
    with safe_open(str(MODEL_DIR / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
        q = f.get_slice("model.layers.0.self_attn.q_proj.weight").get_shape()
        k = f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape()
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expected |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        expected |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    assert names == expected
    head_dim = config["head_dim"]
    assert embed == [config["vocab_size"], config["hidden_size"]]
    assert q == [config["num_attention_heads"] * head_dim, config["hidden_size"]]
    assert k == [config["num_key_value_heads"] * head_dim, config["hidden_size"]]


@pytest.mark.parametrize(
    "text",
    [
        "import os\n\ndef main(argv=None):\n    return 0\n",
        '    """Return the number of items."""\n\tx = {"a": [1, 2.5e-3]}  # comment\n',
        "caf\u00e9 \u00fcber \u4e2d\u6587 \U0001f40d  trailing  \n\n",
    ],
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 0
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos[0] == tokenizer.bos_token_id
    assert with_bos[1:] == ids


def test_special_tokens(tokenizer):
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token == "<pad>"
    for tok in ("<|system|>", "<|user|>", "<|assistant|>"):
        ids = tokenizer(tok, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tok
        assert tokenizer.decode(ids, skip_special_tokens=True) == ""


def test_chat_template_in_tokenizer_config():
    raw = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    assert "chat_template" in raw and "add_generation_prompt" in raw["chat_template"]


def test_chat_template_renders_roles(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a function."},
        {"role": "assistant", "content": "def f():\n    pass"},
        {"role": "user", "content": "Another one."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|system|>\nBe brief.</s>\n"
        "<|user|>\nWrite a function.</s>\n"
        "<|assistant|>\ndef f():\n    pass</s>\n"
        "<|user|>\nAnother one.</s>\n"
        "<|assistant|>\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.endswith("Write a function.</s>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.eos_token_id) == 4


def test_greedy_generation_is_python_like(tokenizer, model):
    inputs = tokenizer("import os\n\n\ndef ", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    assert text.strip(), "empty generation"
    python_markers = ["(", ")", ":", "=", "self", "return", "def ", "    "]
    assert sum(m in text for m in python_markers) >= 3, text


def test_chat_generation_runs(tokenizer, model):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a function `clamp`: Return x limited to the range [lo, hi]."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()
