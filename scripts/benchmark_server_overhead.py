"""Host cost of serving, with the device taken out: `jaxllm serve`'s engine thread, event loop and HTTP
streaming against the same engine driven offline.

    PYTHONPATH=.:scripts python scripts/benchmark_server_overhead.py --concurrency 256 --output-len 128

A real server (uvicorn, the OpenAI routes, the engine thread) over a real `LLM` (the `--config` shape,
random weights, the embedded model's tokenizer so that detokenization is real work) whose runner keeps
its input building but returns tokens instead of running the model (`--device-ms` sleeps per step, as
a device would, letting other threads run). `scripts/benchmark_serving.py` runs in its own process as
the client (streaming `/v1/completions`, `--concurrency` requests at a time). Reports the output tokens
per second and the engine steps per second reached over HTTP, next to the same requests through
`LLM.generate` in this process: where the server reaches far fewer steps per second than offline, the
serving path (not the model) limits a fast GPU. `--profile N` prints the event loop's and the engine
thread's N costliest functions (cProfile, by own CPU time of the thread; profiling slows the run).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
from bench_common import model_folder
from benchmark_serving_server import free_port


def stub_runner(llm, device_ms: float, vocab: list[int]) -> dict:
    """Replace the model with a stub that returns plausible text tokens; count the steps."""
    runner = llm.runner
    counter = {"steps": 0, "due": 0.0}

    def dispatch(sched, block_manager):  # steps run one after another on the stand-in device
        counter["steps"] += 1
        batch = runner.prepare(sched, block_manager)
        counter["due"] = max(counter["due"], time.perf_counter()) + device_ms / 1e3
        return SimpleNamespace(batch=batch, requests=list(sched.requests), due=counter["due"])

    def collect(handle):
        wait = handle.due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        n = len(handle.requests)
        ids = [vocab[(counter["steps"] * 7 + i) % len(vocab)] for i in range(n)]
        return SimpleNamespace(sampled_token_ids=ids, logprobs=np.zeros(n, np.float32), ranks=np.ones(n, np.int64),
                               top_ids=None, top_logprobs=None, prompt_logprobs={}, finite=np.ones(n, bool))

    runner.dispatch, runner.complete, runner.collect = dispatch, lambda handle: None, collect
    return counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="a shape name or a config.json path (random weights)")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=None, help="default: 2 x --concurrency")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--device-ms", type=float, default=0.0, help="a stand-in device step, slept per step")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval for the server (seconds; default: the server's own)")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    num_prompts = args.num_prompts or 2 * args.concurrency

    from jaxllm import LLM, SamplingParams, default_model_path
    from jaxllm.entrypoints.openai.api_server import GIL_SWITCH_INTERVAL_S, create_server, make_arg_parser

    folder, load_format = model_folder(SimpleNamespace(model=None, config=args.config))
    max_len = args.input_len + args.output_len + 8
    llm = LLM(folder, load_format=load_format, tokenizer=default_model_path(), max_model_len=max_len,
              max_num_seqs=args.concurrency, precompile="off")
    words = llm.tokenizer.encode(" the model reads a page of text and writes the next word of it, one at a time",
                                 add_special_tokens=False)
    counter = stub_runner(llm, args.device_ms, words)
    vocab = llm.model_config.vocab_size

    # Offline: the same requests through LLM.generate.
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(1, min(vocab, 4000), args.input_len).tolist()} for _ in range(num_prompts)]
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.output_len)
    llm.generate(prompts[:4], params, use_tqdm=False)
    counter["steps"] = 0
    t = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    offline_s, offline_steps = time.perf_counter() - t, counter["steps"]

    # Online: the server in this process, the client in its own.
    port = free_port()
    server_args = make_arg_parser().parse_args(["--model", folder, "--port", str(port), "--disable-log-stats",
                                                "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"])
    server = create_server(server_args, llm.llm_engine, llm.tokenizer, "127.0.0.1")
    result: dict = {}
    # per-thread CPU time: a wall-clock profile would charge each function the time its thread waited for the GIL
    profilers = ({"event loop": cProfile.Profile(time.thread_time), "engine thread": cProfile.Profile(time.thread_time)}
                 if args.profile else {})
    engine = server.config.app.state.engine
    run, cpu = engine._run, {}

    def profiled_run() -> None:  # the engine thread's own CPU time (not its waits for the GIL or the device)
        if profilers:
            profilers["engine thread"].enable()
        started = time.thread_time()
        try:
            run()
        finally:
            cpu["engine"] = time.thread_time() - started
            if profilers:
                profilers["engine thread"].disable()

    engine._run = profiled_run
    if profilers:  # each profiler is enabled on the thread it profiles
        import asyncio

        original_startup = server.startup

        async def startup(sockets=None) -> None:
            await original_startup(sockets)
            asyncio.get_running_loop().call_soon(profilers["event loop"].enable)

        server.startup = startup

    def client() -> None:
        while not server.started:
            time.sleep(0.05)
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "benchmark_serving.py"),
               "--base-url", f"http://127.0.0.1:{port}", "--random-input-len", str(args.input_len),
               "--random-output-len", str(args.output_len), "--num-prompts", str(num_prompts),
               "--max-concurrency", str(args.concurrency), "--ignore-eos", "--vocab-size", str(min(vocab, 4000)),
               "--save-result", "--result-dir", "/tmp", "--result-filename", f"server-overhead-{port}.json"]
        try:
            counter["steps"] = 0  # the client's one warm-up request is counted too: a few steps
            done = subprocess.run(cmd, capture_output=True, text=True)
            result["client_rc"] = done.returncode
            result["client_tail"] = done.stdout[-1500:] + done.stderr[-1500:]
            with open(f"/tmp/server-overhead-{port}.json") as f:
                result["serving"] = json.load(f)
            result["steps"] = counter["steps"]
        finally:
            server.should_exit = True

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S if args.switch_interval is None else args.switch_interval)
    threading.Thread(target=client, daemon=True).start()
    loop_started = time.thread_time()
    server.run()
    cpu["event loop"] = time.thread_time() - loop_started
    if profilers:
        profilers["event loop"].disable()
    serving = result.get("serving", {})
    report = {
        "concurrency": args.concurrency, "num_prompts": num_prompts, "input_len": args.input_len,
        "output_len": args.output_len, "device_ms": args.device_ms,
        "offline_output_tok_s": num_prompts * args.output_len / offline_s,
        "offline_steps_per_s": offline_steps / offline_s,
        "server_output_tok_s": serving.get("output_throughput"),
        "server_mean_tpot_ms": serving.get("mean_tpot_ms"), "client_rc": result.get("client_rc"),
        "engine_cpu_ms_per_step": 1e3 * cpu.get("engine", 0.0) / max(result.get("steps", 0), 1),
        "event_loop_cpu_us_per_token": 1e6 * cpu.get("event loop", 0.0) / max(num_prompts * args.output_len, 1),
    }
    if result.get("client_rc"):
        print(result.get("client_tail"))
    print(json.dumps(report, indent=2))
    for name, prof in profilers.items():
        print(f"--- {name}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
