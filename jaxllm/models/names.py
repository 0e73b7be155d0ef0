"""Names of the architectures jaxllm implements (plain data, importable without jax)."""

# Hugging Face `architectures[0]` -> module in jaxllm/models/ that implements it.
ARCHITECTURE_MODULES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "MistralForCausalLM": "llama",
}

SUPPORTED_ARCHITECTURES = frozenset(ARCHITECTURE_MODULES)
