"""Host time per engine step, with the device taken out: scheduling, input building, output processing.

    PYTHONPATH=.:scripts python scripts/benchmark_host_overhead.py --batch-size 256

A real `LLM` (the `--config` shape, random weights) whose runner keeps its input building
(`ModelRunner.prepare`: the NumPy arrays a step sends to the device) but returns a fixed token instead
of running the model. Everything the engine does between two device steps is what is timed: when this
is longer than the device step, the GPU waits for Python (small models at large batch). Reports the
milliseconds per decode step, how much of it is input building, and how many steps waited for the host
(planned only after the previous step's results were read back, instead of while it ran), for
`--batch-size` sequences of `--input-len` prompt and `--output-len` generated tokens.

`--constrained N` puts a JSON schema on N of the sequences (structured outputs, with the embedded
model's tokenizer): their token bitmasks are filled on the host every step (once the step before is
read: such steps are split), and the stub returns a random token each mask allows (that pick stands
in for the device and is not counted).

`--stream` drives the engine as `jaxllm serve` does: every step returns a DELTA `RequestOutput` for every
sequence, with the text detokenized as it grows (the stub's tokens are words of the embedded model's
tokenizer), instead of `LLM.generate`'s final outputs only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from types import SimpleNamespace

import numpy as np
from bench_common import model_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="a shape name or a config.json path (random weights)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--constrained", type=int, default=0, help="sequences that follow a JSON schema")
    p.add_argument("--stream", action="store_true", help="DELTA outputs with text every step, as the server")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the last repeat in Python (cProfile) and print its N costliest functions")
    args = p.parse_args()

    from jaxllm import LLM, SamplingParams, default_model_path
    from jaxllm.runner.input_batch import fill_token_bitmask
    from jaxllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    folder, load_format = model_folder(SimpleNamespace(model=None, config=args.config))
    llm = LLM(folder, load_format=load_format, max_model_len=args.input_len + args.output_len,
              max_num_seqs=args.batch_size, skip_tokenizer_init=not (args.constrained or args.stream),
              precompile="off", tokenizer=default_model_path() if args.constrained or args.stream else None)
    words = (llm.tokenizer.encode(" the model reads a page of text and writes the next word of it, one at a time",
                                  add_special_tokens=False) if args.stream else [7])
    runner = llm.runner
    counters = {"steps": 0, "prepare_s": 0.0, "stub_s": 0.0}

    pick = np.random.default_rng(1)

    def dispatch(sched, block_manager):
        started = time.perf_counter()
        batch = runner.prepare(sched, block_manager)
        counters["prepare_s"] += time.perf_counter() - started
        counters["steps"] += 1
        return SimpleNamespace(batch=batch, requests=list(sched.requests), late=batch.late_bitmask)

    def complete(handle):  # a split step: its masks are filled once the step before it is read
        if handle.late:
            fill_token_bitmask(handle.requests, handle.batch.sampling["token_bitmask"])
            handle.late = False

    def collect(handle):
        complete(handle)
        n = len(handle.requests)
        ids = [words[(counters["steps"] + i) % len(words)] for i in range(n)]
        if handle.batch.flags.bitmask:  # what the device's masked sampling would do: draw an allowed token
            picked = time.perf_counter()
            bits = np.unpackbits(handle.batch.sampling["token_bitmask"][:n].view(np.uint8), axis=1, bitorder="little")
            ids = [int(pick.choice(np.flatnonzero(row))) if r.structured_output is not None else 7
                   for row, r in zip(bits, handle.requests)]
            counters["stub_s"] += time.perf_counter() - picked
        return SimpleNamespace(sampled_token_ids=ids, logprobs=np.zeros(n, np.float32), ranks=np.ones(n, np.int64),
                               top_ids=None, top_logprobs=None, prompt_logprobs={}, finite=np.ones(n, bool))

    runner.dispatch, runner.complete, runner.collect = dispatch, complete, collect
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(1, llm.model_config.vocab_size, args.input_len).tolist()}
               for _ in range(args.batch_size)]
    params = SamplingParams(temperature=0.8, top_p=0.95, ignore_eos=True, max_tokens=args.output_len,
                            detokenize=args.stream, output_kind=RequestOutputKind.DELTA if args.stream else RequestOutputKind.CUMULATIVE)
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "label": {"type": "string"}},
        "required": ["id", "label"]}}}, "required": ["items"]}
    constrained = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.output_len, detokenize=False,
                                 structured_outputs=StructuredOutputsParams(json=schema))
    params = [constrained if i < args.constrained else params for i in range(args.batch_size)]
    llm.generate(prompts[:2], params[-2:], use_tqdm=False)  # warm-up
    stats = llm.llm_engine.stats
    best, constrained_tokens = None, 0
    profiler = cProfile.Profile() if args.profile else None
    for repeat in range(args.repeats):
        counters.update(steps=0, prepare_s=0.0, stub_s=0.0)
        waited = stats["steps_waited"]
        profiling = profiler is not None and repeat == args.repeats - 1
        if profiling:
            profiler.enable()
        started = time.perf_counter()
        outs = stream(llm, prompts, params) if args.stream else llm.generate(prompts, params, use_tqdm=False)
        if profiling:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
            continue  # the profiler's own cost is not host time
        per_step = (time.perf_counter() - started - counters["stub_s"]) / counters["steps"]
        if best is None or per_step < best[0]:
            best = (per_step, counters["prepare_s"] / counters["steps"], counters["steps"], stats["steps_waited"] - waited)
            constrained_tokens = sum(len(o.outputs[0].token_ids) for o in outs[: args.constrained])
    print(json.dumps({"batch_size": args.batch_size, "constrained": args.constrained, "steps": best[2],
                      "host_ms_per_step": round(best[0] * 1e3, 3),
                      "input_building_ms_per_step": round(best[1] * 1e3, 3), "steps_waited_for_host": best[3],
                      "constrained_tokens": constrained_tokens}))


def stream(llm, prompts, params) -> list:
    """Run the requests through the engine as the server does (DELTA outputs, cursors); the final outputs."""
    engine, cursors, finals = llm.llm_engine, {}, {}
    for i, (prompt, p) in enumerate(zip(prompts, params if isinstance(params, list) else [params] * len(prompts))):
        engine.add_request(f"s{i}", prompt, p)
    while engine.has_unfinished_requests():
        for out in engine.step(cursors):
            if out.request_id in finals:
                finals[out.request_id].add(out, aggregate=True)
            else:
                finals[out.request_id] = out
    return [finals[f"s{i}"] for i in range(len(prompts))]


if __name__ == "__main__":
    main()
