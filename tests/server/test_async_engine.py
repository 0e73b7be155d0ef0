"""AsyncLLMEngine over a fake engine (no model, no jax), and a real server whose engine dies (503)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time

import httpx
import pytest

from jaxllm.engine.async_engine import AsyncLLMEngine, EngineDeadError
from jaxllm.sampling_params import SamplingParams
from tests.server.conftest import free_port
from tests.server.fake_engine import FakeEngine


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_engine_module_has_no_jax():
    import subprocess

    code = ("import sys, jaxllm.engine.async_engine, jaxllm.entrypoints.openai.api_server; "
            "bad = [m for m in ('jax', 'fastapi', 'uvicorn') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_streams_deltas_until_finished():
    engine = AsyncLLMEngine(FakeEngine())

    async def main():
        outs = [o async for o in engine.generate("hello", SamplingParams(max_tokens=4), "r1")]
        engine.shutdown()
        return outs

    outs = _run(main())
    text = "".join(o.outputs[0].text for o in outs)
    assert text == "xxxx"
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
    assert not any(o.finished for o in outs[:-1])


def test_requests_from_many_tasks_share_steps():
    fake = FakeEngine()
    engine = AsyncLLMEngine(fake)

    async def one(i):
        return [o async for o in engine.generate(f"p{i}", SamplingParams(max_tokens=200), f"r{i}")]

    async def main():
        results = await asyncio.gather(*(one(i) for i in range(10)))
        engine.shutdown()
        return results

    results = _run(main())
    assert all(sum(len(o.outputs[0].token_ids) for o in r) == 200 for r in results)
    assert max(fake.batch_sizes) > 1  # continuous batching across callers


def test_invalid_request_raises_value_error_and_queues_nothing():
    fake = FakeEngine()
    engine = AsyncLLMEngine(fake)

    async def main():
        with pytest.raises(ValueError, match="invalid"):
            await engine.add_request("bad", "an invalid prompt", SamplingParams())
        with pytest.raises(ValueError, match="already in use"):
            stream = await engine.add_request("dup", "fine", SamplingParams(max_tokens=10**9))
            await engine.add_request("dup", "fine", SamplingParams())
        stream.close()
        engine.shutdown()

    _run(main())
    assert "bad" not in fake.requests


def test_leaving_a_stream_early_aborts_the_request():
    fake = FakeEngine()
    engine = AsyncLLMEngine(fake)

    async def main():
        gen = engine.generate("hello", SamplingParams(max_tokens=10**9), "long")
        async for _ in gen:
            break
        await gen.aclose()
        task = asyncio.ensure_future(_consume(engine.generate("hello", SamplingParams(max_tokens=10**9), "c")))
        await _until(lambda: "c" in fake.requests)  # the engine holds it: leaving now must abort it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: not fake.requests)
        engine.shutdown()

    _run(main())
    assert fake.aborted == ["long", "c"]
    assert engine.snapshot().num_running == 0


async def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def _consume(gen):
    async for _ in gen:
        pass


def test_engine_crash_fails_streams_and_later_requests():
    engine = AsyncLLMEngine(FakeEngine(crash_at_step=3))

    async def main():
        with pytest.raises(EngineDeadError, match="the device fell over"):
            await _consume(engine.generate("hello", SamplingParams(max_tokens=100), "r"))
        with pytest.raises(EngineDeadError):
            await engine.add_request("later", "hello", SamplingParams())

    _run(main())
    assert engine.errored
    with pytest.raises(EngineDeadError):
        engine.check_health()


def test_shutdown_ends_open_streams():
    engine = AsyncLLMEngine(FakeEngine())

    async def main():
        stream = await engine.add_request("r", "hello", SamplingParams(max_tokens=10**9))
        await stream.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass

    _run(main())


# ---- a real HTTP server around the fake engine -------------------------------------------------


@pytest.fixture
def fake_server(tiny_model_dir):
    """(url, fake engine): uvicorn in a thread serving build_app() over a FakeEngine."""
    import uvicorn
    from transformers import AutoTokenizer

    from jaxllm.entrypoints.openai.app import build_app, serving_config
    from jaxllm.entrypoints.openai.cli_args import add_frontend_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fake")
    add_frontend_arguments(parser)
    args = parser.parse_args(["--disable-log-stats"])
    fake = FakeEngine(crash_at_step=None)
    engine = AsyncLLMEngine(fake)
    app = build_app(engine, AutoTokenizer.from_pretrained(tiny_model_dir), serving_config(args, fake), args, [])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield url, fake
    server.should_exit = True
    thread.join(30)


def test_failed_generation_is_500(fake_server):
    url, _ = fake_server
    r = httpx.post(url + "/v1/completions", json={"prompt": "please fail", "max_tokens": 3})
    assert r.status_code == 500
    assert r.json()["error"] == {"message": "Internal server error", "type": "InternalServerError",
                                 "param": None, "code": 500}
    with httpx.stream("POST", url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "please fail"}], "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == 500 and events[-1] == "[DONE]"
    assert httpx.post(url + "/v1/completions", json={"prompt": "fine", "max_tokens": 3}).status_code == 200


def test_dead_engine_is_503(fake_server):
    url, fake = fake_server
    assert httpx.get(url + "/health").status_code == 200
    fake.crash_at_step = len(fake.batch_sizes) + 3
    body = {"prompt": "hello", "max_tokens": 50, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == 503 and events[-1] == "[DONE]"
    assert httpx.get(url + "/health").status_code == 503
    r = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 5})
    assert r.status_code == 503 and r.json()["error"]["code"] == 503
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503
