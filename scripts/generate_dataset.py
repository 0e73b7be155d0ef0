"""Generate completions for a dataset with `LLM.generate`, in chunks, appending results as they finish.

    python scripts/generate_dataset.py data.jsonl out.jsonl --model Qwen/Qwen2.5-0.5B-Instruct --max-tokens 256
    python scripts/generate_dataset.py data.jsonl out.jsonl --model MODEL --chat --n 4 --temperature 0.8

`data.jsonl` has one JSON object per line with a `"prompt"` (a string; with `--chat`, the user message, or
set `--field messages` to a list of chat messages) and any other fields, which are copied to the output.
Each output line is the input object plus `"outputs"` (n texts), `"finish_reasons"`, `"prompt_tokens"` and
`"completion_tokens"`. Rows are processed `--chunk-size` at a time (one `LLM.generate` call each, batched
continuously inside); every finished chunk is appended and flushed, and a rerun skips the rows already in
the output (matched by line number, kept in `"row"`), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def read_rows(path: str) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                rows.append((i, json.loads(line)))
    return rows


def done_rows(path: str) -> set[int]:
    """Row numbers already in the output; a last line cut short by a kill is removed."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "wb") as f:
            f.write(keep)
    return {json.loads(line)["row"] for line in keep.splitlines() if line.strip()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="JSONL input, one object per line")
    p.add_argument("output", help="JSONL output (appended to; rows already there are skipped)")
    p.add_argument("--model", default=None, help="local folder or hub id (default: the embedded model)")
    p.add_argument("--field", default="prompt", help="the field with the prompt (or the chat messages)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template (LLM.chat)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=512, help="rows per LLM.generate call")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()

    rows = read_rows(args.dataset)[: args.limit]
    done = done_rows(args.output)
    todo = [(i, row) for i, row in rows if i not in done]
    print(f"{len(rows)} rows, {len(rows) - len(todo)} already done, {len(todo)} to generate", file=sys.stderr)
    if not todo:
        return 0

    from jaxllm import LLM, SamplingParams

    llm = LLM(args.model, dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs)
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            seed=args.seed)
    start, generated = time.monotonic(), 0
    with open(args.output, "a", encoding="utf-8") as out:
        for at in range(0, len(todo), args.chunk_size):
            chunk = todo[at : at + args.chunk_size]
            inputs = [row[args.field] for _, row in chunk]
            if args.chat:
                conversations = [[{"role": "user", "content": x}] if isinstance(x, str) else x for x in inputs]
                results = llm.chat(conversations, params)
            else:
                results = llm.generate(inputs, params)
            for (i, row), res in zip(chunk, results):
                completions = sorted(res.outputs, key=lambda o: o.index)
                tokens = sum(len(o.token_ids) for o in completions)
                generated += tokens
                record = {**row, "row": i, "outputs": [o.text for o in completions],
                          "finish_reasons": [o.finish_reason for o in completions],
                          "prompt_tokens": len(res.prompt_token_ids or []), "completion_tokens": tokens}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            elapsed = time.monotonic() - start
            print(f"{min(at + args.chunk_size, len(todo))}/{len(todo)} rows, {generated} tokens, "
                  f"{generated / elapsed:.1f} tok/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
