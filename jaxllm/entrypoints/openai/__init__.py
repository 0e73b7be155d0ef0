"""vLLM's OpenAI-compatible server for jaxllm: `jaxllm serve MODEL` (see docs/serving.md)."""
