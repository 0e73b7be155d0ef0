"""`jaxllm` command line: `generate` (offline completions), `serve` (OpenAI-compatible server)."""

from __future__ import annotations

import argparse
import json
import sys

from jaxllm.engine.arg_utils import add_engine_arguments, engine_kwargs


def _generate(args: argparse.Namespace) -> int:
    from jaxllm import LLM, SamplingParams

    prompts = list(args.prompts)
    if args.prompts_file:
        with open(args.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        prompts = ['def fibonacci(n):\n    """Return the', "import os\n\n\ndef "]
    try:
        params = SamplingParams(
            n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
            max_tokens=args.max_tokens, seed=args.sampling_seed, stop=args.stop or None,
        )
        llm = LLM(args.model, **engine_kwargs(args))
        outputs = llm.generate(prompts, params, use_tqdm=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for out in outputs:
        if args.json:
            print(json.dumps({"prompt": out.prompt, "outputs": [o.text for o in out.outputs]}))
            continue
        for completion in out.outputs:
            print(f"--- prompt: {out.prompt!r}")
            print(f"{out.prompt}{completion.text}")
            print(f"--- finish_reason={completion.finish_reason} tokens={len(completion.token_ids)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxllm", description="LLM inference and serving in JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate completions for prompts and print them")
    gen.add_argument("prompts", nargs="*", help="prompts (default: two code prompts)")
    gen.add_argument("--prompts-file", default=None, help="a file with one prompt per line")
    add_engine_arguments(gen)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("-n", type=int, default=1)
    gen.add_argument("--stop", action="append", default=[])
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    try:
        from jaxllm.entrypoints.openai.api_server import add_serve_parser
    except ImportError:  # the server's extra (fastapi, uvicorn) is not installed
        add_serve_parser = None
    if add_serve_parser is not None:
        add_serve_parser(sub)
    try:
        from jaxllm.entrypoints.openai.run_batch import add_run_batch_parser
    except ImportError:
        add_run_batch_parser = None
    if add_run_batch_parser is not None:
        add_run_batch_parser(sub)
    try:
        from jaxllm.converted_checkpoint import add_convert_parser
    except ImportError:
        add_convert_parser = None
    if add_convert_parser is not None:
        add_convert_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
