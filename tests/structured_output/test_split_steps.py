"""Constrained rows keep the engine's overlap: a step that holds a row whose newest token is still being
sampled runs its forward pass first and samples once the matcher has seen that token (a split step)."""

import json

import jsonschema_rs
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.sampling_params import StructuredOutputsParams

PROMPTS = ["hello world", "The quick brown fox", "def fibonacci(n):", "import os", "Once upon", "x = "]
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                   "tags": {"type": "array", "items": {"enum": ["a", "bb", "ccc"]}, "minItems": 1, "maxItems": 4}},
    "required": ["id", "tags"],
}


def _run(llm: LLM, temperature: float):
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    constrained = SamplingParams(temperature=temperature, max_tokens=80, seed=5, structured_outputs=so)
    free = SamplingParams(temperature=temperature, max_tokens=30, seed=9, ignore_eos=True)
    params = [constrained if i % 2 else free for i in range(len(PROMPTS))]
    waited = llm.llm_engine.stats["steps_waited"]
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    return [o.outputs[0] for o in outs], llm.llm_engine.stats["steps_waited"] - waited


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_split_steps_give_the_tokens_of_steps_planned_after_each_read(tiny_model_dir, temperature):
    engine = dict(max_model_len=256, max_num_seqs=8, enable_chunked_prefill=True, max_num_batched_tokens=32)
    overlapped, waited = _run(LLM(tiny_model_dir, **engine), temperature)
    serial, _ = _run(LLM(tiny_model_dir, async_scheduling=False, **engine), temperature)
    assert [c.token_ids for c in overlapped] == [c.token_ids for c in serial]
    for c in overlapped[1::2]:
        assert c.finish_reason == "stop", c.text
        jsonschema_rs.validate(SCHEMA, json.loads(c.text, strict=False))
    assert all(len(c.token_ids) == 30 for c in overlapped[::2])
    assert waited == 0, f"{waited} steps waited for the host"
