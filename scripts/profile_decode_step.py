"""Where a decode step's time goes: the compiled step alone (back-to-back, device-bound) vs a full
engine step (schedule + inputs + dispatch + read back + detokenize), at one batch size.

    python scripts/profile_decode_step.py --config llama-3-8b --batch-size 1 --context 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_common import best_of, copy_bandwidth, decode_roofline_s, model_folder, param_bytes


def main() -> None:
    p = argparse.ArgumentParser()
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model")
    src.add_argument("--config")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--trace", default=None, help="also trace 20 back-to-back compiled steps into this folder and "
                   "print the device's kernels (scripts/trace_summary.py)")
    p.add_argument("--hlo", default=None, help="write the decode step's optimized HLO (XLA's fusions, named as in "
                   "the trace) to this file")
    p.add_argument("--attention", choices=["kernel", "reference"], default="kernel",
                   help="decode attention: the Pallas kernel, or the plain-jnp reference (gather + dense)")
    p.add_argument("--kv-write", choices=["xla", "pallas"], default=None,
                   help="how K/V rows reach the pool (default: jaxllm's choice for the backend)")
    args = p.parse_args()
    if args.kv_write:
        from jaxllm.models import layers

        layers.kv_write_impl = lambda: args.kv_write
    if args.attention == "reference":
        from jaxllm.models import layers
        from pallas_kernels.paged_attention_reference import paged_attention_reference

        layers.paged_attention = paged_attention_reference

    from jaxllm import LLM, SamplingParams
    from jaxllm.runner.model_step import step_inputs

    folder, load_format = model_folder(args)
    llm = LLM(folder, load_format=load_format, dtype=args.dtype, max_model_len=args.context + 512,
              max_num_seqs=args.batch_size, skip_tokenizer_init=True)
    engine, runner = llm.llm_engine, llm.runner
    rng = np.random.default_rng(0)
    vocab = llm.model_config.vocab_size
    for i in range(args.batch_size):
        engine.add_request(f"r{i}", {"prompt_token_ids": rng.integers(0, vocab, args.context).tolist()},
                           SamplingParams(temperature=0, ignore_eos=True, max_tokens=10_000, detokenize=False))
    for _ in range(1000):  # prefill (in chunks), then compile the decode bucket
        engine.step()
        running = engine.scheduler.running
        if not engine.scheduler.waiting and all(r.num_computed_tokens >= args.context for r in running):
            break
    for _ in range(3):
        engine.step()

    engine_step = best_of(lambda: engine.step(), repeats=3, calls=20)
    # With asynchronous scheduling the next decode step is already planned and on the device.
    sched = engine._inflight[0] if engine._inflight is not None else engine.scheduler.schedule()
    assert not sched.is_prefill and sum(sched.num_new) == args.batch_size, "not a pure decode step"
    batch = runner.prepare(sched, engine.block_manager)
    fn = runner._compiled(batch.flags)

    def call(*inputs):
        out, _, runner.kv_caches, runner.token_buffer = fn(runner.params, runner.kv_caches, runner.token_buffer,
                                                           *inputs)
        return out

    packed = step_inputs(batch)

    def device_step():
        return call(*packed)[0]

    device = best_of(device_step)

    import jax

    def split_times(step_args):
        times = {"dispatch": [], "wait": [], "readback": []}
        for _ in range(30):
            t0 = time.perf_counter()
            out = call(*step_args)
            t1 = time.perf_counter()
            jax.block_until_ready(out[0])
            t2 = time.perf_counter()
            jax.device_get(out)
            t3 = time.perf_counter()
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(v * 1e3)
        return " ".join(f"{k} {np.median(v):.3f}" for k, v in times.items())

    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(fn.lower(runner.params, runner.kv_caches, runner.token_buffer, *packed).compile().as_text())
    if args.trace:
        from trace_summary import device_events, summarize

        device_step()
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            for _ in range(20):
                out = device_step()
            jax.block_until_ready(out)
        print(summarize(device_events(args.trace), steps=20))
    print("numpy inputs (ms):", split_times(packed))
    print("device inputs (ms):", split_times(jax.device_put(packed)))
    prepare = best_of(lambda: runner.prepare(sched, engine.block_manager) and None)
    bw, _ = copy_bandwidth()
    cfg = llm.model_config
    roof = decode_roofline_s(param_bytes(cfg, cfg.dtype_bytes), cfg.kv_bytes_per_token(), args.batch_size,
                             args.context, bw)
    print(f"[{args.attention}] batch {args.batch_size}, context {args.context}: engine step {engine_step * 1e3:.2f} ms, "
          f"compiled step back-to-back {device * 1e3:.2f} ms, input preparation {prepare * 1e3:.3f} ms, "
          f"roofline {roof * 1e3:.2f} ms (copy {bw / 1e12:.2f} TB/s)")


if __name__ == "__main__":
    main()
