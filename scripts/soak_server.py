"""Soak test of the OpenAI-compatible server: mixed traffic for a bounded time, then a leak check.

    # start a server on a free loopback port and soak it for 2 minutes
    python scripts/soak_server.py --model /path/to/model --minutes 2 \\
        --server-args "--max-num-seqs 16 --num-gpu-blocks-override 64 --request-timeout 60"

    # soak a server that is already running (loopback addresses only)
    python scripts/soak_server.py --url http://127.0.0.1:8000 --minutes 10

`--concurrency` clients send, back to back, a mix of requests (weights in `MIX`):

    completion       non-streaming /v1/completions (random prompt, max_tokens, n, logprobs, stop)
    stream           streaming /v1/completions, read to [DONE]
    chat             non-streaming /v1/chat/completions
    chat_stream      streaming /v1/chat/completions
    abort_stream     a stream the client hangs up on after a few events
    abort_request    a non-streaming request the client gives up on (short client timeout)
    invalid          a request that must be refused with a 4xx (bad JSON, bad values, unknown model, ...)

`--warmup-minutes` runs the same mix first (the server compiles its step shapes then) and leaves it out
of the latency figures. Each phase stops after its minutes or `--max-requests`, whichever comes first.
Then the script waits for the server to go idle and reads /metrics. The report gives p50/p99 latency per
kind, answers by status code, what went wrong (5xx, a valid request refused, an invalid one accepted, a
stream without [DONE], an error event, a transport error), and the KV blocks still in use
(vllm:kv_cache_usage_perc * num_gpu_blocks of vllm:cache_config_info), which must be 0. The exit status
is 1 if anything went wrong or blocks leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlparse

try:
    import httpx
except ImportError:  # pragma: no cover
    sys.exit("soak_server.py needs httpx: pip install httpx")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MIX = {"completion": 30, "stream": 20, "chat": 15, "chat_stream": 10, "abort_stream": 8, "abort_request": 5,
       "invalid": 12}
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "small", "models", "write",
         "text", "about", "paged", "attention", "héllo", "wörld", "✓", "日本語", "🙂", "def", "return", "import"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)  # (kind, status)
    problems: Counter = field(default_factory=Counter)  # what went wrong, by kind
    examples: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def problem(self, what: str, detail: str) -> None:
        self.problems[what] += 1
        self.examples.setdefault(what, detail[:300])


class Soak:
    def __init__(self, url: str, model: str | None, args: argparse.Namespace, minutes: float, seed: int):
        self.url = url.rstrip("/")
        self.model = model
        self.args = args
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.deadline = time.monotonic() + 60 * minutes

    def prompt(self, lo: int = 2, hi: int = 40) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi)))

    def sampling(self) -> dict:
        r = self.rng
        body = {"max_tokens": r.randint(1, self.args.max_tokens), "temperature": r.choice([0, 0.7, 1.0])}
        if body["temperature"] and r.random() < 0.3:
            body["n"] = r.randint(1, 3)
        if r.random() < 0.2:
            body["seed"] = r.randint(0, 1000)
        if r.random() < 0.15:
            body["stop"] = [r.choice(WORDS)]
        if r.random() < 0.2:
            body["ignore_eos"] = True
        if self.model:
            body["model"] = self.model
        return body

    def invalid(self) -> tuple[dict | str, str]:
        """(body, what is wrong): each must get a 4xx."""
        r = self.rng
        base = {"prompt": self.prompt(), "max_tokens": 4}
        if self.model:
            base["model"] = self.model
        cases = [
            ('{"prompt": "unterminated', "bad JSON"),
            ({**base, "temperature": -1}, "temperature < 0"),
            ({**base, "max_tokens": 0}, "max_tokens 0"),
            ({**base, "n": 0}, "n 0"),
            ({**base, "top_p": 1.5}, "top_p > 1"),
            ({**base, "model": "no-such-model"}, "unknown model"),
            ({**base, "prompt": []}, "empty prompt"),
            ({**base, "prompt": [10**9]}, "token out of vocabulary"),
            ({**base, "max_tokens": 10**7}, "max_tokens over the context"),
            ({**base, "logprobs": 10**4}, "logprobs over the limit"),
            ({"messages": "not a list", "model": self.model}, "chat messages not a list"),
            ({**base, "stream_options": {"include_usage": True}}, "stream_options without stream"),
        ]
        return r.choice(cases)

    # ---- one request of each kind --------------------------------------------------------------

    async def run_one(self, client: httpx.AsyncClient, kind: str) -> None:
        t0 = time.monotonic()
        status = "transport"
        try:
            status = await getattr(self, f"_{kind}")(client)
        except (httpx.TimeoutException, httpx.TransportError) as err:
            if kind != "abort_request":
                self.stats.problem(f"{kind}: transport error", repr(err))
            else:
                status = "client gave up"
        elapsed = time.monotonic() - t0
        self.stats.statuses[(kind, status)] += 1
        if status == 200 and not kind.startswith("abort"):
            self.stats.latencies[kind].append(elapsed)

    async def _completion(self, client: httpx.AsyncClient) -> int:
        body = {"prompt": self.prompt(), **self.sampling()}
        if self.rng.random() < 0.2:
            body["logprobs"] = self.rng.randint(0, 5)
        r = await client.post("/v1/completions", json=body)
        self._check(r, "completion", body)
        return r.status_code

    async def _chat(self, client: httpx.AsyncClient) -> int:
        body = {"messages": [{"role": "user", "content": self.prompt()}], **self.sampling()}
        r = await client.post("/v1/chat/completions", json=body)
        self._check(r, "chat", body)
        return r.status_code

    def _check(self, r: httpx.Response, kind: str, body: dict) -> None:
        if r.status_code >= 500:
            self.stats.problem(f"{kind}: {r.status_code}", r.text)
        elif r.status_code != 200:
            self.stats.problem(f"{kind}: valid request refused ({r.status_code})", f"{json.dumps(body)} -> {r.text}")
        else:
            choices = r.json()["choices"]
            if len(choices) != body.get("n", 1):
                self.stats.problem(f"{kind}: wrong number of choices", r.text)

    async def _stream_to_end(self, client: httpx.AsyncClient, path: str, body: dict, kind: str,
                             hang_up_after: int | None = None) -> int:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                self.stats.problem(f"{kind}: {r.status_code}", text)
                return r.status_code
            events = 0
            last = ""
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                last = line[6:]
                if hang_up_after is not None and events >= hang_up_after:
                    return 200  # leaving the block closes the connection: the server must abort the request
                if last != "[DONE]" and '"error"' in last[:12]:
                    code = json.loads(last)["error"].get("code")
                    self.stats.problem(f"{kind}: error event {code}", last)
            if hang_up_after is None and last != "[DONE]":
                self.stats.problem(f"{kind}: stream without [DONE]", last)
            return 200

    async def _stream(self, client: httpx.AsyncClient) -> int:
        body = {"prompt": self.prompt(), "stream": True, **self.sampling()}
        if self.rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        return await self._stream_to_end(client, "/v1/completions", body, "stream")

    async def _chat_stream(self, client: httpx.AsyncClient) -> int:
        body = {"messages": [{"role": "user", "content": self.prompt()}], "stream": True, **self.sampling()}
        return await self._stream_to_end(client, "/v1/chat/completions", body, "chat_stream")

    async def _abort_stream(self, client: httpx.AsyncClient) -> int:
        body = {"prompt": self.prompt(), "stream": True, **self.sampling()}
        body["max_tokens"], body["ignore_eos"] = self.args.max_tokens, True
        return await self._stream_to_end(client, "/v1/completions", body, "abort_stream",
                                         hang_up_after=self.rng.randint(1, 4))

    async def _abort_request(self, client: httpx.AsyncClient) -> int:
        body = {"prompt": self.prompt(), **self.sampling(), "max_tokens": self.args.max_tokens, "ignore_eos": True}
        r = await client.post("/v1/completions", json=body, timeout=self.rng.uniform(0.01, 0.3))
        return r.status_code  # finished before the client gave up

    async def _invalid(self, client: httpx.AsyncClient) -> int:
        body, what = self.invalid()
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        if isinstance(body, str):
            r = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = await client.post(path, json=body)
        if not 400 <= r.status_code < 500:
            self.stats.problem(f"invalid: {what} answered {r.status_code}", r.text)
        return r.status_code

    # ---- the run -------------------------------------------------------------------------------

    async def worker(self, client: httpx.AsyncClient) -> None:
        kinds, weights = zip(*MIX.items())
        while time.monotonic() < self.deadline and self.stats.sent < self.args.max_requests:
            self.stats.sent += 1
            await self.run_one(client, self.rng.choices(kinds, weights)[0])

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.args.concurrency * 2)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.args.request_timeout, limits=limits) as client:
            await asyncio.gather(*(self.worker(client) for _ in range(self.args.concurrency)))


def read_metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
            out.setdefault(key.split("{", 1)[0], float(value))
            if key.startswith("vllm:cache_config_info{"):
                labels = dict(part.split("=", 1) for part in key[len("vllm:cache_config_info{"):-1].split(","))
                out["num_gpu_blocks"] = float(labels["num_gpu_blocks"].strip('"'))
    return out


def wait_idle(url: str, timeout: float = 60.0) -> dict[str, float]:
    """/metrics once nothing runs or waits any more (aborts reach the engine asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(url)
        idle = metrics.get("vllm:num_requests_running", 0) == 0 and metrics.get("vllm:num_requests_waiting", 0) == 0
        if (idle and metrics.get("vllm:kv_cache_usage_perc", 0) == 0) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started_server(args: argparse.Namespace):
    port = free_port()
    cmd = [sys.executable, "-m", "jaxllm.entrypoints.openai.api_server", "--model", args.model, "--host",
           "127.0.0.1", "--port", str(port), "--disable-log-stats", "--uvicorn-log-level", "warning",
           *shlex.split(args.server_args)]
    log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}: {shlex.join(cmd)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start in time")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log is not subprocess.DEVNULL:
            log.close()


def report(soak: Soak, metrics: dict[str, float], duration: float) -> dict:
    s = soak.stats
    by_code = Counter()
    for (_, status), count in s.statuses.items():
        by_code[str(status)] += count
    in_use = round(metrics.get("vllm:kv_cache_usage_perc", 0) * metrics.get("num_gpu_blocks", 0))
    result = {
        "duration_s": round(duration, 1),
        "requests": sum(s.statuses.values()),
        "by_kind": {k: sum(c for (kind, _), c in s.statuses.items() if kind == k) for k in MIX},
        "answers_by_code": dict(sorted(by_code.items())),
        "latency_s": {k: {"p50": round(percentile(v, 50), 3), "p99": round(percentile(v, 99), 3), "n": len(v)}
                      for k, v in sorted(s.latencies.items())},
        "problems": dict(s.problems),
        "problem_examples": s.examples,
        "kv_blocks_in_use": in_use,
        "num_gpu_blocks": int(metrics.get("num_gpu_blocks", 0)),
        "running": metrics.get("vllm:num_requests_running"),
        "waiting": metrics.get("vllm:num_requests_waiting"),
        "preemptions": metrics.get("vllm:num_preemptions_total"),
        "finished_by_reason": {k.split('finished_reason="')[1].split('"')[0]: v for k, v in metrics.items()
                               if k.startswith("vllm:request_success_total{")},
    }
    all_latencies = [x for v in s.latencies.values() for x in v]
    result["latency_s"]["all"] = {"p50": round(percentile(all_latencies, 50), 3),
                                  "p99": round(percentile(all_latencies, 99), 3), "n": len(all_latencies)}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server (loopback only)")
    target.add_argument("--model", help="start `python -m jaxllm.entrypoints.openai.api_server --model MODEL`")
    p.add_argument("--server-args", default="", help="extra flags for the started server (one string)")
    p.add_argument("--server-log", default=None, help="write the started server's output here")
    p.add_argument("--served-model", default=None, help="the `model` field to send (default: none)")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--warmup-minutes", type=float, default=0.0,
                   help="run the same mix first, outside the latency figures (problems still count)")
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48, help="the largest max_tokens a request asks for")
    p.add_argument("--request-timeout", type=float, default=120.0, help="client timeout per request, seconds")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the report to this file")
    args = p.parse_args()
    if not 0 < args.minutes <= 24 * 60 or not 0 <= args.warmup_minutes <= 60:
        p.error("--minutes must be in (0, 1440] and --warmup-minutes in [0, 60]")
    if args.max_requests < 1 or args.concurrency < 1:
        p.error("--max-requests and --concurrency must be at least 1")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))})")

    with (contextlib.nullcontext(args.url) if args.url else started_server(args)) as url:
        warmup = Soak(url, args.served_model, args, args.warmup_minutes, args.seed + 1)
        if args.warmup_minutes:
            asyncio.run(warmup.run())  # the same mix: the server compiles its step shapes here
        soak = Soak(url, args.served_model, args, args.minutes, args.seed)
        t0 = time.monotonic()
        asyncio.run(soak.run())
        duration = time.monotonic() - t0
        metrics = wait_idle(url)
        healthy = httpx.get(url + "/health", timeout=10).status_code
    result = report(soak, metrics, duration)
    result["health_after"] = healthy
    result["warmup"] = {"requests": sum(warmup.stats.statuses.values()), "problems": dict(warmup.stats.problems)}
    result["problems"].update({f"warmup {k}": v for k, v in warmup.stats.problems.items()})
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    ok = not result["problems"] and result["kv_blocks_in_use"] == 0 and healthy == 200
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
