"""Shutdown (what SIGTERM triggers in uvicorn): running requests finish, new ones are refused, and with
`--shutdown-timeout` the ones still running afterwards are aborted with a 503 (an error event in a
stream), their KV blocks freed. A fake runner stands in for the model, with steps of known length.

The SIGTERM signal itself is tested on a `jaxllm serve` process in tests/server/test_shutdown.py.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.hardening.servers import ThreadServer, fake_llm_engine, server_args

STEP_SECONDS = 0.01


def start(model_dir: str, *flags: str) -> ThreadServer:
    engine = fake_llm_engine(model_dir)
    engine.runner.hook = lambda sched: time.sleep(STEP_SECONDS)
    return ThreadServer(server_args(model_dir, *flags), engine, engine.tokenizer)


class Client(threading.Thread):
    """A request in a thread: `.status` and `.events` (streaming) or `.body` when it is done."""

    def __init__(self, server: ThreadServer, body: dict):
        super().__init__(daemon=True)
        self.server, self.body = server, body
        self.first = threading.Event()
        self.status: int | None = None
        self.events: list[str] = []
        self.body_json: dict | None = None
        self.start()

    def run(self) -> None:
        if self.body.get("stream"):
            with httpx.stream("POST", self.server.url + "/v1/completions", json=self.body, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.first.set()
        else:
            self.first.set()
            r = httpx.post(self.server.url + "/v1/completions", json=self.body, timeout=60)
            self.status, self.body_json = r.status_code, r.json()


def test_shutdown_lets_running_requests_finish(tiny_model_dir):
    server = start(tiny_model_dir)
    stream = Client(server, {"prompt": "drain me", "max_tokens": 60, "ignore_eos": True, "stream": True,
                             "stream_options": {"include_usage": True}})
    plain = Client(server, {"prompt": "and me", "max_tokens": 60, "ignore_eos": True})
    assert stream.first.wait(30)
    time.sleep(0.05)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.2)
    with pytest.raises(httpx.TransportError):  # the listening socket is closed: new connections are refused
        httpx.post(server.url + "/v1/completions", json={"prompt": "late", "max_tokens": 1}, timeout=5)
    stopper.join(60)
    stream.join(30)
    plain.join(30)
    assert stream.status == 200 and stream.events[-1] == "[DONE]"
    assert json.loads(stream.events[-2])["usage"]["completion_tokens"] == 60
    assert plain.status == 200 and plain.body_json["usage"]["completion_tokens"] == 60
    assert not server.llm_engine.has_unfinished_requests() and server.kv_blocks_in_use() == 0


def test_shutdown_timeout_aborts_what_is_still_running(tiny_model_dir):
    server = start(tiny_model_dir, "--shutdown-timeout", "0.3")
    streams = [Client(server, {"prompt": f"long {i}", "max_tokens": 240, "ignore_eos": True, "stream": True})
               for i in range(3)]
    plain = Client(server, {"prompt": "long 9", "max_tokens": 240, "ignore_eos": True})
    for s in streams:
        assert s.first.wait(30)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 0.3 + 3, "the shutdown outlasted its timeout"
    for client in [*streams, plain]:
        client.join(30)
    for s in streams:
        assert s.status == 200 and s.events[-1] == "[DONE]"
        error = json.loads(s.events[-2])["error"]
        assert error["code"] == 503 and "--shutdown-timeout" in error["message"]
    assert plain.status == 503 and "--shutdown-timeout" in plain.body_json["error"]["message"]
    assert not server.llm_engine.has_unfinished_requests() and server.kv_blocks_in_use() == 0


def test_requests_arriving_while_draining_get_503(tiny_model_dir):
    server = start(tiny_model_dir)
    try:
        server.tracker.draining = True  # as the shutdown sets it, for requests on connections still open
        r = server.post("/v1/completions", {"prompt": "hi", "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["message"] == "The server is shutting down."
        assert httpx.get(server.url + "/health").status_code == 503  # load balancers stop sending
        assert httpx.get(server.url + "/metrics").status_code == 200
        server.tracker.draining = False
        assert server.post("/v1/completions", {"prompt": "hi", "max_tokens": 1}).status_code == 200
    finally:
        server.stop()
