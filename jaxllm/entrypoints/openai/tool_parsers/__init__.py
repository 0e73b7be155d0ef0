"""Tool-call parsers (`--tool-call-parser NAME`): a model's tool-call text -> OpenAI `tool_calls`."""
