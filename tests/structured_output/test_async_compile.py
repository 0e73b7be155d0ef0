"""AsyncLLMEngine compiles a request's grammar off the engine thread, and its error is the caller's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jaxllm.engine.async_engine import AsyncLLMEngine
from jaxllm.sampling_params import SamplingParams, StructuredOutputsParams
from tests.server.fake_engine import FakeEngine


class CompilingEngine(FakeEngine):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.compiled_on: list[str] = []
        self.added_on: list[str] = []

    def compile_grammar(self, structured_outputs):
        self.compiled_on.append(threading.current_thread().name)
        if structured_outputs.regex == "(":
            raise ValueError("Invalid regex in structured_outputs.regex: not closed")

    def add_request(self, request_id, prompt, params) -> None:
        self.added_on.append(threading.current_thread().name)
        super().add_request(request_id, prompt, params)


def test_grammar_compiles_off_the_engine_thread_and_errors_reach_the_caller():
    fake = CompilingEngine()
    engine = AsyncLLMEngine(fake)

    async def main():
        ok = SamplingParams(max_tokens=2, structured_outputs=StructuredOutputsParams(regex="x+"))
        outs = [o async for o in engine.generate("hello", ok, "r1")]
        with pytest.raises(ValueError, match="Invalid regex"):
            await engine.add_request("r2", "hello", SamplingParams(structured_outputs=StructuredOutputsParams(regex="(")))
        engine.shutdown()
        return outs

    outs = asyncio.run(asyncio.wait_for(main(), 30))
    assert outs[-1].finished
    assert fake.added_on == ["jaxllm-engine"]  # the rejected request never reached the engine
    assert len(fake.compiled_on) == 2 and "jaxllm-engine" not in fake.compiled_on
