"""A batch job over a text file of prompts (one per line): write the OpenAI batch file, run it, summarise.

    python scripts/batch_prompts.py prompts.txt --model Qwen/Qwen2.5-0.5B-Instruct --chat --max-tokens 128
    python scripts/batch_prompts.py prompts.txt --model MODEL --output answers.jsonl --resume   # after a kill
    python scripts/batch_prompts.py prompts.txt --model MODEL -- --max-num-seqs 64 --dtype bfloat16

Writes `<prompts>.requests.jsonl` (custom_id `prompt-<line>`), runs `jaxllm run-batch` on it into `--output`
(default: `<prompts>.answers.jsonl`), then prints the number of answers and errors, the token counts, and
the first answers (`--show N`; `--show -1` prints them all, in prompt order). Flags after `--` go to
`jaxllm run-batch` unchanged (engine flags, `--served-model-name`, `--max-concurrency`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def write_requests(prompts: list[tuple[int, str]], path: str, args: argparse.Namespace) -> None:
    """The OpenAI batch file: one POST per prompt, to /v1/chat/completions or /v1/completions."""
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    if args.seed is not None:
        sampling["seed"] = args.seed
    with open(path, "w", encoding="utf-8") as f:
        for lineno, prompt in prompts:
            if args.chat:
                url, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], **sampling}
            else:
                url, body = "/v1/completions", {"prompt": prompt, **sampling}
            line = {"custom_id": f"prompt-{lineno}", "method": "POST", "url": url, "body": body}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def answer_text(record: dict) -> str:
    choice = record["response"]["body"]["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def summarise(prompts: list[tuple[int, str]], output: str, elapsed: float, show: int) -> None:
    with open(output, encoding="utf-8") as f:
        records = {r["custom_id"]: r for r in map(json.loads, filter(str.strip, f))}
    ok = {cid: r for cid, r in records.items() if r.get("error") is None}
    prompt_tokens = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in ok.values())
    completion_tokens = sum(r["response"]["body"]["usage"]["completion_tokens"] or 0 for r in ok.values())
    print(f"\n{len(prompts)} prompts: {len(ok)} answered, {len(records) - len(ok)} errors, "
          f"{len(prompts) - len(records)} missing")
    print(f"tokens: {prompt_tokens} prompt, {completion_tokens} generated; wall time {elapsed:.1f} s "
          f"({completion_tokens / max(elapsed, 1e-9):.1f} generated tok/s including model load)")
    shown = 0
    for lineno, prompt in prompts:
        if 0 <= show <= shown:
            break
        record = records.get(f"prompt-{lineno}")
        if record is None:
            continue
        shown += 1
        answer = answer_text(record) if record.get("error") is None else f"[error] {record['error']}"
        print(f"--- line {lineno}: {prompt!r}\n{answer}")
    for cid, r in records.items():
        if r.get("error") is not None:
            print(f"error for {cid}: {r['error']}", file=sys.stderr)


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts_file", help="a text file, one prompt per line (blank lines are skipped)")
    p.add_argument("--model", default=None, help="local folder or hub id (default: the embedded model)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user message to the chat endpoint")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--output", default=None, help="the answers file (default: <prompts_file>.answers.jsonl)")
    p.add_argument("--resume", action="store_true", help="keep the answers already in --output")
    p.add_argument("--show", type=int, default=5, help="answers to print (-1: all)")
    args = p.parse_args(argv)

    with open(args.prompts_file, encoding="utf-8") as f:
        prompts = [(i, line.rstrip("\n")) for i, line in enumerate(f, start=1) if line.strip()]
    if not prompts:
        print(f"error: no prompts in {args.prompts_file}", file=sys.stderr)
        return 2
    base = os.path.splitext(args.prompts_file)[0]
    output = args.output or base + ".answers.jsonl"
    requests = base + ".requests.jsonl"
    write_requests(prompts, requests, args)
    print(f"wrote {len(prompts)} requests to {requests}", file=sys.stderr)

    from jaxllm.entrypoints.openai.run_batch import main as run_batch

    command = ["-i", requests, "-o", output, *(["--model", args.model] if args.model else [])]
    command += ["--resume"] if args.resume else []
    start = time.monotonic()
    code = run_batch(command + extra)
    if code == 0 or os.path.exists(output):
        summarise(prompts, output, time.monotonic() - start, args.show)
    return code


if __name__ == "__main__":
    sys.exit(main())
