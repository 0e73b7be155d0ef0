"""scripts/benchmark_serving.py end to end: it starts `jaxllm serve` (the embedded model, CPU), sweeps two
concurrency levels with streamed token-id prompts, stops the server, and writes vLLM-style result files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="module")
def bench():
    """The script's modules (they import each other by name from scripts/)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))
        import benchmark_serving
        import benchmark_serving_metrics
        import benchmark_serving_server

        yield SimpleNamespace(main=benchmark_serving, metrics=benchmark_serving_metrics,
                              server=benchmark_serving_server)


NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN = 6, 16, 8
# A small engine: with the CPU default KV pool (1 GiB) a decode step of this tiny model took ~1 s here.
SERVER_ARGS = "--max-num-seqs 4 --num-gpu-blocks-override 64 --max-model-len 256 --disable-log-stats"


@pytest.fixture(scope="module")
def cpu_env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPTS / "benchmark_serving.py"), "--launch", "jaxllm serve",
           "--server-args", SERVER_ARGS, "--server-timeout", "120", "--request-timeout", "60", *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_sweep_against_the_embedded_model(cpu_env, tmp_path):
    proc = run_script(
        ["--num-prompts", str(NUM_PROMPTS), "--random-input-len", str(INPUT_LEN),
         "--random-output-len", str(OUTPUT_LEN), "--max-concurrency", "1,4", "--ignore-eos",
         "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
         "--http-client", "httpx", "--save-result", "--save-detailed",
         "--result-dir", str(tmp_path), "--result-filename", "bench.json"],
        cpu_env)
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2, proc.stdout
    assert proc.stdout.count("Serving Benchmark Result") == 2
    for level in (1, 4):
        result = json.loads((tmp_path / f"bench-concurrency{level}.json").read_text())
        assert result["max_concurrency"] == level
        assert result["completed"] == NUM_PROMPTS and result["failed"] == 0
        assert result["total_input_tokens"] == NUM_PROMPTS * INPUT_LEN
        assert result["total_output_tokens"] == NUM_PROMPTS * OUTPUT_LEN  # --ignore-eos
        assert result["output_lens"] == [OUTPUT_LEN] * NUM_PROMPTS
        assert 1 <= result["max_concurrent_requests"] <= level and result["client_cpu_s"] > 0
        for metric in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "std", "p50", "p90", "p99"):
                assert result[f"{stat}_{metric}_ms"] >= 0, (metric, stat)
        assert result["mean_ttft_ms"] <= result["mean_e2el_ms"]
        for ttft, itl, e2el in zip(result["ttfts"], result["itls"], result["e2els"]):
            assert 0 < ttft <= e2el
            assert ttft + sum(itl) == pytest.approx(e2el)  # the gaps tile the stream
        assert result["output_throughput"] == pytest.approx(NUM_PROMPTS * OUTPUT_LEN / result["duration"])


def test_aiohttp_client_and_request_rate(cpu_env, tmp_path):
    pytest.importorskip("aiohttp")
    proc = run_script(
        ["--num-prompts", "3", "--random-input-len", "8", "--random-output-len", "4", "--ignore-eos",
         "--request-rate", "20", "--http-client", "aiohttp", "--save-result", "--result-dir", str(tmp_path)],
        cpu_env)
    (path,) = tmp_path.glob("jaxllm-20.0qps-concurrencyNone-*.json")
    result = json.loads(path.read_text())
    assert (result["completed"], result["failed"], result["total_output_tokens"]) == (3, 0, 12)
    assert result["request_rate"] == 20.0 and "p99_itl_ms" in result
    assert "| none | 3 | 0 |" in proc.stdout


def test_metrics_follow_vllm_definitions(bench):
    RequestResult = bench.metrics.RequestResult
    a = RequestResult(prompt_len=4, output_len=3, success=True, output_tokens=3, ttft=0.1, itl=[0.2, 0.3],
                      latency=0.6, start=0.0, chunks=3)
    b = RequestResult(prompt_len=4, output_len=1, success=True, output_tokens=1, ttft=0.2, latency=0.2,
                      start=0.5, chunks=1)
    failed = RequestResult(prompt_len=4, output_len=3, error="HTTP 500")
    m = bench.metrics.calculate_metrics([a, b, failed], 2.0, ["ttft", "tpot", "itl", "e2el"], [50, 99])
    assert (m.completed, m.failed, m.total_input_tokens, m.total_output_tokens) == (2, 1, 8, 4)
    assert m.output_throughput == 2.0 and m.request_throughput == 1.0
    assert m.latency_ms["tpot"]["mean"] == pytest.approx(250.0)  # (0.6 - 0.1) / (3 - 1); b has no TPOT
    assert m.latency_ms["itl"]["mean"] == pytest.approx(250.0)
    assert m.latency_ms["ttft"]["p50"] == pytest.approx(150.0)
    assert m.max_concurrent_requests == 2 and bench.metrics.max_in_flight([a]) == 1


def test_random_requests_and_server_command(bench):
    random_requests = bench.main.random_requests
    args = bench.main.parse_args(["--random-input-len", "100", "--random-output-len", "10",
                                  "--random-range-ratio", "0.5", "--max-concurrency", "1,16",
                                  "--num-prompts", "4,64", "--launch", "jaxllm serve --port 9123"])
    assert args.levels == [1, 16] and args.prompts_per_level == [4, 64]
    requests = random_requests(200, args, 1000, seed=0)
    assert all(50 <= len(p) <= 150 and 5 <= o <= 15 for p, o in requests)
    assert all(0 <= t < 1000 for p, _ in requests for t in p)
    assert requests != random_requests(200, args, 1000, seed=1)  # each sweep level gets its own prompts
    pooled = random_requests(5, args, [3, 7], seed=0)
    assert {t for p, _ in pooled for t in p} <= {3, 7}
    launch = argparse.Namespace(config=None, launch=args.launch, server_args="--max-num-seqs 8")
    cmd, url = bench.server.server_command(launch)
    assert url == "http://127.0.0.1:9123" and cmd[-4:] == ["--max-num-seqs", "8", "--host", "127.0.0.1"]
