"""Time from process start to the first generated token, cold and warm, from real files on disk.

    PYTHONPATH=.:scripts python scripts/benchmark_startup.py --config llama-3-8b \\
        --from safetensors,converted,dummy --precompile off,background --work-dir /tmp/startup --out results/

With --config, a random-weight checkpoint of that shape is written to WORK/hf as Hugging Face writes one
(config.json, sharded *.safetensors with model.safetensors.index.json, the embedded model's tokenizer
files), then `jaxllm convert` turns it into WORK/converted. With --model, that folder is used as it is.
Each start is a new Python process timed from launch to the first token of one 128-token request;
its per-phase timeline (phase, thread, start, end: imports, tokenizer, weights, each step bucket loaded
or compiled, first step) is printed as a table on stderr and kept in the JSON line as "timeline";
"cold" starts with an empty compilation cache folder (no stored executables either), "warm" finds the
executables and cache entries the cold start stored. The
weight files stay in the OS page cache unless --drop-page-cache (root) empties it before each start.

One JSON line per start, printed as it finishes and appended to OUT/startup.jsonl when --out is given:
process start to first token, LLM() time, time spent loading the weights (read, cast, place, fuse),
XLA compilations and compile seconds (summed over compile threads) at the first token, and, with
precompilation, when every bucket was compiled and how many compilations that took in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_common import SHAPES

_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
_BLOCK_ELEMENTS = 1 << 22  # values of one random block (8 MiB in bf16), tiled over every tensor
_ST_DTYPES_BY_NAME = {name: size for name, size in _ST_DTYPES.values()}
_NORMS = ("norm", "ln_f.", ".ln_1.", ".ln_2.", "layer_norm")  # written as ones, as load_format="dummy" makes them

CHILD = r"""
import json, sys, time
t_import = time.time()
cfg = json.loads(sys.argv[1])
from jaxllm import LLM, SamplingParams, timeline
from jaxllm.runner import compile_counter
from jaxllm.runner.model_runner import ModelRunner
timeline.record("imports", t_import)

loading = [0.0]
original = ModelRunner._load_and_fuse

def timed(self, load_format):
    t = time.perf_counter()
    try:
        return original(self, load_format)
    finally:
        loading[0] += time.perf_counter() - t

ModelRunner._load_and_fuse = timed
t = time.time()
llm = LLM(cfg["model"], load_format=cfg["load_format"], compilation_cache_dir=cfg["cache"], precompile=cfg["precompile"],
          max_model_len=cfg["max_model_len"], max_num_seqs=cfg["max_num_seqs"])
t_llm = time.time()
with timeline.phase("first step"):
    out = llm.generate({"prompt_token_ids": list(range(1, 129))}, SamplingParams(max_tokens=1, detokenize=False),
                       use_tqdm=False)
t_first = time.time()
res = {"t_import": t_import, "t_first_token": t_first, "llm_init_s": t_llm - t, "weights_load_s": loading[0],
       "compilations_at_first_token": compile_counter.num_compilations(),
       "compile_s_at_first_token": compile_counter.seconds_building(), "token": out[0].outputs[0].token_ids,
       "step_traces_at_first_token": compile_counter.num_traces("_step"), "timeline": timeline.as_dicts(),
       "buckets": llm.runner.num_buckets, "precompile_mode": llm.precompile,
       "device": __import__("jax").devices()[0].device_kind}
if llm.runner.precompiler is not None:
    llm.runner.precompiler.wait()
    res["buckets_loaded"] = llm.runner.precompiler.loaded
    res.update(t_all_compiled=time.time(), compilations_total=compile_counter.num_compilations(),
               compile_s_total=compile_counter.seconds_building())
print("RESULT " + json.dumps(res), flush=True)
"""


def _shape_config(name: str) -> dict:
    if name in SHAPES:
        return dict(SHAPES[name])
    with open(name) as f:
        return json.load(f)


def _encode(values: np.ndarray, st_dtype: str) -> bytes:
    """float32 values as raw bytes of the checkpoint's dtype (bf16: round to nearest even)."""
    if st_dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    return values.astype(np.float16 if st_dtype == "F16" else np.float32).tobytes()


def _write_tensor(f, name: str, count: int, st_dtype: str, block: bytes) -> None:
    """One tensor straight to the file: norms as ones, the rest tiled from a block of N(0, 0.02) values."""
    if any(n in name for n in _NORMS):
        f.write(_encode(np.ones(count, np.float32), st_dtype))
        return
    left = count * _ST_DTYPES_BY_NAME[st_dtype]
    while left > 0:
        chunk = block if left >= len(block) else block[:left]
        f.write(chunk)
        left -= len(chunk)


def write_checkpoint(cfg: dict, out: str, shard_bytes: int) -> float:
    """A Hugging Face style random checkpoint of cfg's shape in `out`; returns the seconds it took."""
    from jaxllm.config import ModelConfig
    from jaxllm.models.registry import get_model_module

    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    model_cfg = ModelConfig.from_pretrained(out, dtype="auto")
    st_dtype, itemsize = _ST_DTYPES[model_cfg.dtype]
    shapes = sorted(get_model_module(model_cfg.architecture).hf_shapes(model_cfg).items())
    shards, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(shape)))
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(0)
    block = _encode(rng.standard_normal(_BLOCK_ELEMENTS, dtype=np.float32) * 0.02, st_dtype)
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in tensors:
            end = offset + math.prod(shape) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, end]}
            offset, weight_map[name] = end, file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(os.path.join(out, file), "wb", buffering=1 << 24) as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in tensors:
                _write_tensor(f, name, math.prod(shape), st_dtype, block)
        total += offset
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    _copy_tokenizer(out)
    return time.perf_counter() - started


def _copy_tokenizer(out: str) -> None:
    """The embedded default model's tokenizer (a smaller vocabulary than most shapes: prompts are token ids)."""
    from jaxllm.llm import default_model_path

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(os.path.join(default_model_path(), name), os.path.join(out, name))


def _drop_page_cache() -> None:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as err:
        print(f"warning: could not drop the page cache ({err})", file=sys.stderr)


def print_timeline(title: str, phases: list[dict], launched: float) -> None:
    """One start's phases as a table (phase, thread, start, end), in seconds from process launch."""
    print(f"\n{title}", file=sys.stderr)
    print(f"  {'phase':<52} {'thread':<22} {'start':>7} {'end':>7} {'seconds':>8}", file=sys.stderr)
    for p in phases:
        start, end = p["start"] - launched, p["end"] - launched
        print(f"  {p['name'][:52]:<52} {p['thread'][:22]:<22} {start:7.2f} {end:7.2f} {end - start:8.2f}",
              file=sys.stderr)


def run_start(spec: dict, env: dict, drop_page_cache: bool) -> dict:
    if drop_page_cache:
        _drop_page_cache()
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"start failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    phases = [{"name": "interpreter start", "thread": "MainThread", "start": launched, "end": res["t_import"]},
              *res.pop("timeline")]
    res["timeline"] = [{**p, "start": round(p["start"] - launched, 3), "end": round(p["end"] - launched, 3)}
                       for p in phases]
    out = {
        "process_start_to_first_token_s": round(res.pop("t_first_token") - launched, 3),
        "interpreter_start_s": round(res.pop("t_import") - launched, 3),
    }
    if "t_all_compiled" in res:
        out["process_start_to_all_buckets_compiled_s"] = round(res.pop("t_all_compiled") - launched, 3)
    out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an existing Hugging Face folder (safetensors)")
    src.add_argument("--config", help=f"a shape ({', '.join(SHAPES)}) or a config.json; random weights")
    p.add_argument("--from", dest="formats", default="safetensors,converted,dummy",
                   help="comma-separated: safetensors, converted (jaxllm convert), dummy (random weights on device)")
    p.add_argument("--precompile", default="auto", help="comma-separated modes to compare: auto, off, background, wait")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--work-dir", default=None, help="where the checkpoints and caches go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--shard-gb", type=float, default=5.0, help="size of each written safetensors file (as HF: 5 GB)")
    p.add_argument("--drop-page-cache", action="store_true", help="empty the OS page cache before each start (root)")
    p.add_argument("--out", default=None, help="folder for startup.jsonl")
    p.add_argument("--prepare-only", action="store_true",
                   help="write (and convert) the checkpoint into --work-dir and stop; a later run with the same "
                        "--work-dir times the starts (so the writing can overlap other work)")
    args = p.parse_args()

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"safetensors", "converted", "dummy"}
    if unknown:
        p.error(f"unknown --from format(s): {', '.join(sorted(unknown))}")
    work = args.work_dir or tempfile.mkdtemp(prefix="jaxllm-startup-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    log = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        log = open(os.path.join(args.out, "startup.jsonl"), "a")  # noqa: SIM115 (closed in finally)

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if log is not None:
            log.write(line + "\n")
            log.flush()

    shape = args.model or args.config
    folders = {}
    try:
        if args.config:
            hf = os.path.join(work, "hf")
            if not os.path.isfile(os.path.join(hf, "model.safetensors.index.json")):
                seconds = write_checkpoint(_shape_config(args.config), hf, int(args.shard_gb * 1e9))
                size = sum(os.path.getsize(os.path.join(hf, f)) for f in os.listdir(hf))
                emit({"shape": shape, "step": "write safetensors", "seconds": round(seconds, 2), "bytes": size})
        else:
            hf = os.path.abspath(args.model)
        folders = {"safetensors": hf, "dummy": hf}
        if "converted" in formats:
            converted = os.path.join(work, "converted")
            if not os.path.isfile(os.path.join(converted, "jaxllm_checkpoint.json")):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "jaxllm.entrypoints.cli", "convert", hf, converted, "--overwrite"],
                               check=True, env=env)
                emit({"shape": shape, "step": "jaxllm convert", "seconds": round(time.perf_counter() - t, 2)})
            folders["converted"] = converted
        if args.prepare_only:
            return
        for fmt in formats:
            for mode in [m.strip() for m in args.precompile.split(",") if m.strip()]:
                cache = tempfile.mkdtemp(prefix="xla-cache-", dir=work)
                spec = dict(model=folders[fmt], load_format="dummy" if fmt == "dummy" else "auto", cache=cache,
                            precompile=None if mode == "auto" else mode, max_model_len=args.max_model_len,
                            max_num_seqs=args.max_num_seqs)
                for start in ("cold", "warm"):
                    res = run_start(spec, env, args.drop_page_cache)
                    emit({"shape": shape, "from": fmt, "precompile": mode, "start": start, **res})
                    print_timeline(f"{start} start from {fmt}, precompile {mode}: first token at "
                                   f"{res['process_start_to_first_token_s']:.2f} s", res["timeline"], 0.0)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if log is not None:
            log.close()
        if not args.keep and not args.work_dir and not args.prepare_only:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
