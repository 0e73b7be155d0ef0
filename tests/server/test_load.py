"""Under load: 200 concurrent streams, clients that hang up early, and a server that keeps answering."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.server.conftest import SERVED_NAME

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server(["--served-model-name", SERVED_NAME])
    yield server
    server.stop()


async def _stream_one(http: httpx.AsyncClient, i: int) -> tuple[int, int, str | None, bool]:
    """(completion_tokens from the usage chunk, chunks with text, finish_reason, saw [DONE])."""
    body = {"model": SERVED_NAME, "prompt": f"Request number {i} says", "max_tokens": MAX_TOKENS,
            "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    usage, chunks, finish, done = -1, 0, None, False
    async with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if event["choices"]:
                chunks += 1
                finish = event["choices"][0]["finish_reason"] or finish
            else:
                usage = event["usage"]["completion_tokens"]
    return usage, chunks, finish, done


async def _poll_health(http: httpx.AsyncClient, stop: asyncio.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        r = await http.get("/health")
        assert r.status_code == 200
        latencies.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)


def test_200_concurrent_streams(server):
    async def run():
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as http:
            stop, latencies = asyncio.Event(), []
            poller = asyncio.create_task(_poll_health(http, stop, latencies))
            results = await asyncio.gather(*(_stream_one(http, i) for i in range(200)))
            stop.set()
            await poller
            return results, latencies

    results, latencies = asyncio.run(run())
    assert all(r == (MAX_TOKENS, r[1], "length", True) for r in results), results[:5]
    assert all(1 <= r[1] <= MAX_TOKENS for r in results)
    assert latencies and max(latencies) < 10.0  # /health kept answering while 200 streams ran
    metrics = server.metrics()
    assert metrics["vllm:num_requests_running"] == 0
    assert metrics["vllm:kv_cache_usage_perc"] == 0


def _wait_idle(server, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        idle = m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
        if (idle and m["vllm:kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def test_disconnected_clients_free_their_kv_blocks(server):
    long_body = {"model": SERVED_NAME, "prompt": "Hang up early", "max_tokens": 200, "ignore_eos": True}
    aborted_key = f'vllm:request_success_total{{finished_reason="abort",model_name="{SERVED_NAME}"}}'
    aborted_before = server.metrics()[aborted_key]

    async def hang_up_streaming(http: httpx.AsyncClient) -> None:
        async with http.stream("POST", "/v1/completions", json={**long_body, "stream": True}) as r:
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen == 2:
                        return  # leaving the block closes the connection mid-stream

    async def run():
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            # Five clients wait for whole (non-streamed) answers of 240 tokens ...
            waiting = [asyncio.create_task(http.post("/v1/completions", json={**long_body, "max_tokens": 240}))
                       for _ in range(5)]
            await asyncio.gather(*(hang_up_streaming(http) for _ in range(45)))
            # ... and hang up once the streams have shown that generation is under way.
            assert not any(t.done() for t in waiting), "a 240-token answer came before two streamed chunks"
            for t in waiting:
                t.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            # the server answers while the aborted requests are being cleaned up
            r = await http.post("/v1/completions", json={"model": SERVED_NAME, "prompt": "Still there?",
                                                         "max_tokens": 3, "temperature": 0})
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"

    asyncio.run(run())
    m = _wait_idle(server)
    assert m["vllm:num_requests_running"] == 0
    assert m["vllm:num_requests_waiting"] == 0
    assert m["vllm:kv_cache_usage_perc"] == 0
    assert m[aborted_key] - aborted_before == 50
