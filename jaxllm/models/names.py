"""Names of the architectures jaxllm implements (plain data, importable without jax)."""

# Hugging Face `architectures[0]` -> module in jaxllm/models/ that implements it. Adding an architecture
# is one module (name_table, hf_shapes, forward, compute_logits) and one line here.
ARCHITECTURE_MODULES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "OPTForCausalLM": "opt",
    "PhiForCausalLM": "phi",
    "GemmaForCausalLM": "gemma",
    "MptForCausalLM": "mpt",
    "MPTForCausalLM": "mpt",  # mosaicml/mpt-* config.json (written for its own remote code)
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",  # tiiuae/falcon-* before the port to transformers ("RefinedWeb*")
    "GPT2LMHeadModel": "gpt2",
}

SUPPORTED_ARCHITECTURES = frozenset(ARCHITECTURE_MODULES)

