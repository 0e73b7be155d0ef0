"""Online serving benchmark, the protocol of `vllm bench serve --dataset-name random`, against `jaxllm serve`.

    # a server that is already running
    python scripts/benchmark_serving.py --base-url http://127.0.0.1:8000 --random-input-len 1024 \\
        --random-output-len 128 --num-prompts 200 --max-concurrency 1,16,64 --ignore-eos

    # start the server here, benchmark it, stop it: the embedded model on the CPU ...
    python scripts/benchmark_serving.py --launch "jaxllm serve" --num-prompts 8 --random-input-len 16 \\
        --random-output-len 8 --max-concurrency 1,4 --ignore-eos

    # ... or a model shape with random weights (`jaxllm serve <folder> --load-format dummy`)
    python scripts/benchmark_serving.py --config llama-3-8b --server-args "--max-num-seqs 256" ...

Each prompt is a list of random token ids of the drawn input length, so the server does not tokenize
anything; every request streams (`stream_options.include_usage`) with `max_tokens` = the drawn output
length. `--max-concurrency 1,16,64` runs one level after the other against the same server, each with
its own prompts (no level finds the previous one's prompts in the prefix cache), and prints the vLLM
result block per level and a markdown table with one row per level. Metrics: benchmark_serving_metrics.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import numpy as np
from benchmark_serving_metrics import (
    METRICS,
    RequestResult,
    calculate_metrics,
    result_json,
    summary,
    table_header,
    table_row,
)
from benchmark_serving_server import launched_server

try:
    import aiohttp
except ImportError:  # httpx is the fallback (the server's test extra has it)
    aiohttp = None
import httpx

Request = tuple[list[int], int]  # (prompt token ids, output length)

# ---- the random dataset ----------------------------------------------------------------------------


def random_lengths(n: int, mean: int, range_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """vLLM's random lengths: uniform integers in [mean * (1 - r), mean * (1 + r)], at least 1."""
    low, high = int(mean * (1 - range_ratio)), int(mean * (1 + range_ratio))
    return np.maximum(rng.integers(low, high + 1, size=n), 1)


def random_requests(n: int, args: argparse.Namespace, vocab: int | list[int], seed: int) -> list[Request]:
    """n (prompt token ids, output length): ids uniform over `vocab` (a size, or a pool of ids)."""
    rng = np.random.default_rng(seed)
    in_lens = random_lengths(n, args.random_input_len, args.random_range_ratio, rng)
    out_lens = random_lengths(n, args.random_output_len, args.random_range_ratio, rng)
    pool = np.asarray(vocab) if isinstance(vocab, list) else None
    requests = []
    for in_len, out_len in zip(in_lens, out_lens):
        ids = rng.choice(pool, in_len) if pool is not None else rng.integers(0, vocab, in_len)
        requests.append((ids.tolist(), int(out_len)))
    return requests


def token_source(url: str, model: str, args: argparse.Namespace, root: str | None) -> int | list[int]:
    """The vocabulary size (--vocab-size, the --config shape, or the config.json of the served folder when
    it is on this machine); otherwise a pool of valid ids, from the server's /tokenize of random text."""
    if args.vocab_size:
        return args.vocab_size
    if args.config:
        from bench_common import SHAPES

        if args.config in SHAPES:
            return SHAPES[args.config]["vocab_size"]
    for folder in (args.config, root):
        path = Path(folder or "")
        path = path if path.suffix == ".json" else path / "config.json"
        if folder and path.is_file():
            cfg = json.loads(path.read_text())
            size = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
            if size:
                return int(size)
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:()"))
    text = "".join(rng.choice(letters, 20_000))
    r = httpx.post(url + "/tokenize", json={"model": model, "prompt": text}, timeout=60)
    r.raise_for_status()
    return sorted(set(r.json()["tokens"]))


# ---- one streamed request --------------------------------------------------------------------------


async def sse_payloads(session, url: str, body: dict) -> AsyncIterator[str]:
    """The `data:` payloads of a streamed POST; an HTTP error raises RuntimeError with the answer."""
    if aiohttp is not None and isinstance(session, aiohttp.ClientSession):
        async with session.post(url, json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    yield line[5:].strip()
        return
    async with session.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:300]}")
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                yield line[5:].strip()


async def send_request(session, url: str, model: str, prompt: list[int], output_len: int,
                       args: argparse.Namespace) -> RequestResult:
    """Stream one completion and time it. A chunk's token count comes from its running usage
    (continuous_usage_stats); the final usage chunk gives the output token count."""
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "temperature": args.temperature,
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "ignore_eos": args.ignore_eos}
    res = RequestResult(prompt_len=len(prompt), output_len=output_len)
    counted = final_usage = 0
    done = False
    res.start = last = time.perf_counter()
    try:
        async for payload in sse_payloads(session, url, body):
            if payload == "[DONE]":
                done = True
                break
            data = json.loads(payload)
            if "error" in data:
                raise RuntimeError(f"error event: {data['error']}")
            now = time.perf_counter()
            if data.get("choices"):
                if res.chunks == 0:
                    res.ttft = now - res.start
                else:
                    res.itl.append(now - last)
                last = now
                res.chunks += 1
                usage = data.get("usage") or {}
                counted = usage.get("completion_tokens", counted + 1)
            elif data.get("usage"):
                final_usage = data["usage"].get("completion_tokens", 0)
        res.latency = last - res.start
        res.output_tokens = final_usage or counted
        res.success = res.chunks > 0 and done
        if not res.success:
            res.error = "the stream ended without " + ("[DONE]" if res.chunks else "a token")
    except Exception as err:  # a failed request is counted, not fatal
        res.error = f"{type(err).__name__}: {err}"
    return res


# ---- one concurrency level -------------------------------------------------------------------------


async def arrivals(n: int, rate: float, burstiness: float, seed: int) -> AsyncIterator[int]:
    """Request indices at vLLM's arrival times: all at once for an infinite rate, else gaps drawn from a
    gamma distribution with shape `burstiness` and mean 1/rate (burstiness 1: a Poisson process)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield i
        if rate != float("inf") and i + 1 < n:
            await asyncio.sleep(rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness)))


def open_session(args: argparse.Namespace, connections: int):
    if args.http_client == "aiohttp" or (args.http_client == "auto" and aiohttp is not None):
        if aiohttp is None:
            raise SystemExit("--http-client aiohttp: aiohttp is not installed")
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.request_timeout),
                                     connector=aiohttp.TCPConnector(limit=connections))
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=args.request_timeout, limits=limits)


async def run_level(url: str, model: str, requests: list[Request], max_concurrency: int | None,
                    args: argparse.Namespace,
                    warmups: list[Request]) -> tuple[list[RequestResult], float, float]:
    """One test request, then the warm-ups, then the measured requests (arrival times and concurrency cap
    as vLLM's); returns their results, the wall time from the first send to the last answer, and this
    process's CPU time in it."""
    limit = max_concurrency or len(requests)
    gate = asyncio.Semaphore(limit)
    async with open_session(args, limit) as session:

        async def limited(prompt: list[int], output_len: int) -> RequestResult:
            async with gate:
                return await send_request(session, url, model, prompt, output_len, args)

        first = await send_request(session, url, model, *warmups[0], args)
        if not first.success:
            raise SystemExit(f"the test request failed: {first.error}")
        await asyncio.gather(*(limited(*w) for w in warmups[1:]))
        t0, cpu0 = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(limited(*requests[i]))
                 async for i in arrivals(len(requests), args.request_rate, args.burstiness, args.seed)]
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - t0, time.process_time() - cpu0


# ---- the command -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="the server's URL (default: http://HOST:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", default=None, help="the served model name (default: the first of /v1/models)")
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len * (1 - r), len * (1 + r)]")
    p.add_argument("--vocab-size", type=int, default=None, help="draw prompt ids below this")
    p.add_argument("--num-prompts", default="1000", help="a number, or one per --max-concurrency level")
    p.add_argument("--max-concurrency", default=None, help="a number, or a comma list to sweep: 1,16,64,256")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps (1: Poisson)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-warmups", type=int, default=0, help="requests sent before each level, not measured")
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl", help="of " + ",".join(METRICS))
    p.add_argument("--metric-percentiles", default="99", help="comma list, e.g. 50,90,99")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--save-detailed", action="store_true", help="also per-request lengths, TTFTs, ITLs")
    p.add_argument("--result-dir", default=".")
    p.add_argument("--result-filename", default=None, help="with a sweep, -concurrencyN is added to the stem")
    p.add_argument("--request-timeout", type=float, default=6 * 3600.0, help="seconds per request")
    p.add_argument("--http-client", default="auto", choices=["auto", "aiohttp", "httpx"])
    srv = p.add_mutually_exclusive_group()
    srv.add_argument("--launch", default=None, help='start this server command first, e.g. "jaxllm serve"')
    srv.add_argument("--config", default=None, help="serve this shape (bench_common.SHAPES) or config.json "
                     "with random weights: jaxllm serve <folder> --load-format dummy")
    p.add_argument("--server-args", default="", help="more flags for the started server (one string)")
    p.add_argument("--server-log", default=None, help="the started server's output (default: a temp file)")
    p.add_argument("--server-timeout", type=float, default=900.0, help="seconds to get healthy")
    args = p.parse_args(argv)
    args.metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    args.percentiles = [float(x) for x in args.metric_percentiles.split(",") if x.strip()]
    levels = args.max_concurrency.split(",") if args.max_concurrency else [None]
    try:
        args.levels = [int(x) if x not in (None, "", "none") else None for x in levels]
        counts = [int(x) for x in args.num_prompts.split(",")]
    except ValueError as err:
        p.error(f"--max-concurrency / --num-prompts: {err}")
    if len(counts) not in (1, len(levels)):
        p.error("--num-prompts: give one number, or one per --max-concurrency level")
    args.prompts_per_level = counts * len(levels) if len(counts) == 1 else counts
    if unknown := set(args.metrics) - set(METRICS):
        p.error(f"--percentile-metrics: unknown {sorted(unknown)}; choose from {','.join(METRICS)}")
    if not all(0 < q < 100 for q in args.percentiles) or any(c is not None and c < 1 for c in args.levels):
        p.error("--metric-percentiles must lie in (0, 100) and --max-concurrency be at least 1")
    if not 0 <= args.random_range_ratio < 1 or args.random_input_len < 1 or args.random_output_len < 1:
        p.error("--random-range-ratio must lie in [0, 1), the lengths be at least 1")
    if min(args.prompts_per_level) < 1 or args.request_rate <= 0 or args.burstiness <= 0:
        p.error("--num-prompts, --request-rate and --burstiness must be positive")
    if "chat" in args.endpoint:
        p.error("--endpoint: token-id prompts need the completions API (/v1/completions)")
    return args


def result_path(args: argparse.Namespace, model: str, level: int | None) -> Path:
    if args.result_filename:
        name = Path(args.result_filename)
        if len(args.levels) > 1:
            name = name.with_name(f"{name.stem}-concurrency{level}{name.suffix}")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(f"jaxllm-{args.request_rate}qps-concurrency{level}-{Path(model).name}-{stamp}.json")
    return Path(args.result_dir) / name


def benchmark(args: argparse.Namespace, url: str) -> list[dict]:
    """Every concurrency level against the server at `url`: prints the blocks and the table, returns JSONs."""
    models = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    model = args.model or models[0]["id"]
    root = next((m.get("root") for m in models if m["id"] == model), None)
    vocab = token_source(url, model, args, root)
    endpoint_url = url + args.endpoint
    rows, out = [], []
    for i, level in enumerate(args.levels):
        seed = args.seed + 1000 * (i + 1)  # fresh prompts per level: no prefix-cache hits across levels
        requests = random_requests(args.prompts_per_level[i], args, vocab, seed)
        warmups = random_requests(1 + args.num_warmups, args, vocab, seed + 1)
        results, duration, cpu = asyncio.run(run_level(endpoint_url, model, requests, level, args, warmups))
        metrics = calculate_metrics(results, duration, args.metrics, args.percentiles, client_cpu_s=cpu)
        print(summary(metrics, level, args.request_rate, args.percentiles), flush=True)
        for err in sorted({r.error for r in results if r.error})[:5]:
            print(f"failed request: {err}", file=sys.stderr)
        rows.append(table_row(metrics, level, args.metrics, args.percentiles))
        out.append(result_json(args, model, level, metrics, results))
        if args.save_result:
            path = result_path(args, model, level)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out[-1], indent=2))
            print(f"wrote {path}", flush=True)
    print(f"\nmodel {model}, input {args.random_input_len}, output {args.random_output_len}, "
          f"request rate {args.request_rate}\n")
    print(table_header(args.metrics, args.percentiles))
    print("\n".join(rows), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.launch or args.config:
        with launched_server(args) as url:
            out = benchmark(args, url)
    else:
        out = benchmark(args, (args.base_url or f"http://{args.host}:{args.port}").rstrip("/"))
    return 0 if all(r["failed"] == 0 for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
