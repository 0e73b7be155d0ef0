"""--shutdown-timeout answers every open request with a 503 in OpenAI's shape, whatever its state: generating,
or not yet admitted because the engine is busy in a long step (a first step that compiles)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from jaxllm.entrypoints.openai.api_server import SHUTDOWN_GRACE_SECONDS, create_server, make_arg_parser
from tests.server.conftest import free_port
from tests.server.fake_engine import FakeEngine

SHUTDOWN_TIMEOUT = 1.0


@dataclass
class CompilingEngine(FakeEngine):
    """A FakeEngine whose steps block until `release` is set, as a step that compiles does."""

    in_step: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def step(self, cursors=None):
        self.in_step.set()
        self.release.wait(120)
        return super().step(cursors)


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def compiling_server(tiny_model_dir):
    from transformers import AutoTokenizer

    engine = CompilingEngine()
    port = free_port()
    args = make_arg_parser().parse_args([
        "--model", "fake", "--port", str(port), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
        "--disable-log-stats", "--uvicorn-log-level", "warning"])
    server = create_server(args, engine, AutoTokenizer.from_pretrained(tiny_model_dir), host="127.0.0.1")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started, "the server to start")
    yield f"http://127.0.0.1:{port}", engine, server
    engine.release.set()
    server.should_exit = True
    thread.join(60)
    assert not thread.is_alive()


def _request(url: str, kind: str, out: list) -> None:
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    completion = {"model": "fake", "prompt": "hello", "max_tokens": 50}
    path, body = ("/v1/chat/completions", chat) if kind.startswith("chat") else ("/v1/completions", completion)
    body = {**body, "stream": kind.endswith("stream")}
    with httpx.stream("POST", url + path, json=body, timeout=60) as r:
        text = r.read().decode()
        out.append((kind, r.status_code, r.headers.get("content-type", ""), text, time.monotonic()))


def _error_of(status: int, content_type: str, text: str) -> dict:
    """The OpenAI error a response ended with: its JSON body, or a stream's last event before [DONE]."""
    if content_type.startswith("text/event-stream"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert status == 200 and events[-1] == "[DONE]", text
        return json.loads(events[-2])["error"]
    assert content_type.startswith("application/json"), (status, content_type, text)
    assert status == 503, text
    return json.loads(text)["error"]


def test_requests_not_yet_admitted_get_503_at_the_shutdown_timeout(compiling_server):
    url, engine, server = compiling_server
    results: list = []
    first = threading.Thread(target=_request, args=(url, "completion-stream", results))
    first.start()
    _wait_for(engine.in_step.is_set, "the first request to reach the engine")
    kinds = ["completion-stream", "completion-stream", "completion", "completion", "chat-stream", "chat-stream",
             "chat", "chat", "completion"]
    clients = [threading.Thread(target=_request, args=(url, kind, results)) for kind in kinds]
    for client in clients:
        client.start()
    queued = server.config.app.state.engine._commands
    _wait_for(lambda: queued.qsize() >= len(kinds), "the other requests to wait for admission")

    t0 = time.monotonic()
    server.should_exit = True  # what SIGTERM does
    for client in [first, *clients]:
        client.join(60)
    assert len(results) == 1 + len(kinds)
    for kind, status, content_type, text, finished in results:
        error = _error_of(status, content_type, text)
        assert error["code"] == 503 and error["type"] == "ServiceUnavailableError", (kind, error)
        assert "--shutdown-timeout" in error["message"]
        assert finished - t0 < SHUTDOWN_TIMEOUT + SHUTDOWN_GRACE_SECONDS, (kind, finished - t0)
    # the requests that gave up waiting are never added once the engine frees up; the first is aborted
    engine.release.set()
    _wait_for(lambda: not engine.requests and queued.qsize() == 0, "the engine to drop the aborted requests")
    assert len(engine.aborted) == 1 and engine.aborted[0].startswith("cmpl-")


def test_a_request_cancelled_by_the_shutdown_backstop_gets_a_503_body():
    """uvicorn cancels what is still running at the end of the graceful shutdown: the answer is a 503 in
    OpenAI's shape, not a plain-text 500."""
    import asyncio

    from jaxllm.entrypoints.openai.middleware import DrainMiddleware
    from jaxllm.entrypoints.openai.request_tracker import RequestTracker

    async def stuck_app(scope, receive, send):
        await asyncio.Event().wait()

    async def run() -> list[dict]:
        tracker = RequestTracker()
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        app = DrainMiddleware(stuck_app, tracker)
        task = asyncio.ensure_future(app({"type": "http", "method": "POST", "path": "/v1/completions"}, None, send))
        await asyncio.sleep(0)
        tracker.draining = True
        task.cancel()
        await task
        return sent

    start, body = asyncio.run(run())
    assert start["status"] == 503 and (b"content-type", b"application/json") in start["headers"]
    error = json.loads(body["body"])["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
