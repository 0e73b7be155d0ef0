#!/usr/bin/env python
"""Train the small default model that jaxllm ships in ``jaxllm/default_model/``.

The model is a Llama-architecture causal LM of a few million parameters, trained
from scratch with JAX + optax on the source code and docstrings of the CPython
standard library found in this machine's Python installation (PSF License).
Everything is deterministic given ``--seed``: the file list is sorted, the
held-out split is every ``--heldout-every``-th file, the parameter init and the
batch order come from the seed.

The output folder is a regular Hugging Face checkpoint (``config.json``,
``model.safetensors``, tokenizer files, ``generation_config.json``) plus a model
card ``README.md``. At the end the script checks that
``transformers.AutoModelForCausalLM`` (PyTorch) loads the folder and gives the
same next-token logits as the JAX forward pass in this file.

The defaults are the settings of the shipped model (its README.md has the
exact command, the measured wall time and the results)::

    nice -n 10 python scripts/train_tiny_model.py --seed 0 --steps 600 --lr 2e-3 \
        --warmup-steps 30 --eval-every 200 --out jaxllm/default_model
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import sys
import sysconfig
import time
from functools import partial
from pathlib import Path

import numpy as np
from tiny_model.chat_format import SPECIAL_TOKENS, chat_text
from tiny_model.corpus import build_corpus
from tiny_model.export import save_checkpoint, verify_against_transformers
from tiny_model.model import forward, init_params, token_nll
from tiny_model.model_card import write_model_card
from tiny_model.samples import greedy_samples
from tiny_model.tokenizer import encode_stream, split_space_prefixed, train_tokenizer, wrap_tokenizer
from tiny_model.training import evaluate, heldout_windows, round_to_bf16, train, unigram_loss

# ----------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "jaxllm" / "default_model"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--heldout-every", type=int, default=50)
    ap.add_argument(
        "--chat-max-lines",
        type=int,
        default=12,
        help="chat examples use functions of at most this many lines (0: no chat examples)",
    )
    ap.add_argument(
        "--space-split-prob",
        type=float,
        default=0.05,
        help="probability of writing a training token ' word' as the two tokens ' ' + 'word'",
    )
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate-size", type=int, default=768)
    ap.add_argument("--max-position-embeddings", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--final-lr-fraction", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--storage-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--sample-tokens", type=int, default=64)
    ap.add_argument("--skip-verify", action="store_true", help="skip the transformers comparison")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()

    import jax
    import optax  # noqa: F401  (used by tiny_model.training: fail before the corpus is read)
    import transformers

    out_dir: Path = args.out
    cfg = {
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden_size // args.heads,
        "max_position_embeddings": args.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
    }
    assert args.heads % args.kv_heads == 0 and args.hidden_size % args.heads == 0

    # --- data and tokenizer
    corpus = build_corpus(args.stdlib, args.heldout_every, args.chat_max_lines)
    print(
        f"corpus: {len(corpus['train_files'])} train files, {len(corpus['heldout_files'])} held-out files, "
        f"{len(corpus['skipped'])} skipped, {len(corpus['train_chat'])} chat examples",
        flush=True,
    )
    tok = train_tokenizer(corpus["train_docs"], args.vocab_size)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.get_vocab_size() == args.vocab_size, tok.get_vocab_size()
    hf_tok = wrap_tokenizer(tok, args.max_position_embeddings)
    bos_id, eos_id = hf_tok.bos_token_id, hf_tok.eos_token_id

    probe = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert hf_tok.apply_chat_template(probe, tokenize=False) == chat_text(probe)
    assert hf_tok.apply_chat_template(probe[:2], tokenize=False, add_generation_prompt=True) == chat_text(
        probe[:2], add_generation_prompt=True
    )

    train_stream = encode_stream(tok, corpus["train_docs"] + corpus["train_chat"], bos_id, eos_id)
    unigram_counts_stream = train_stream
    train_stream = split_space_prefixed(train_stream, tok, args.space_split_prob, args.seed)
    heldout_stream = encode_stream(tok, corpus["heldout_docs"], bos_id, eos_id)
    windows = heldout_windows(heldout_stream, args.seq_len)
    train_bytes = sum(len(d.encode()) for d in corpus["train_docs"])
    heldout_bytes = sum(len(d.encode()) for d in corpus["heldout_docs"])
    print(
        f"tokens: train {len(train_stream):,} (incl. chat), held-out {len(heldout_stream):,} "
        f"({heldout_bytes / max(1, len(heldout_stream)):.2f} bytes/token) -> {len(windows)} windows",
        flush=True,
    )

    # --- model and training
    params = init_params(cfg, args.seed)
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    n_embed = params["model.embed_tokens.weight"].size + params["lm_head.weight"].size
    print(f"parameters: {n_params:,} ({n_params - n_embed:,} non-embedding)", flush=True)

    nll_fn = jax.jit(partial(token_nll, cfg=cfg))
    fwd = jax.jit(partial(forward, cfg=cfg))

    unigram = unigram_loss(unigram_counts_stream, windows, args.vocab_size)
    print(f"unigram baseline held-out loss: {unigram:.4f}", flush=True)

    params, run = train(args, cfg, params, train_stream, windows, nll_fn)
    train_wall, train_cpu, loads = run["train_wall"], run["train_cpu"], run["loads"]

    heldout_fp32 = evaluate(nll_fn, params, windows, 32)
    shipped = round_to_bf16(params) if args.storage_dtype == "bfloat16" else params
    heldout = evaluate(nll_fn, shipped, windows, 32)
    print(
        f"held-out loss: {heldout:.4f} ({args.storage_dtype} weights), {heldout_fp32:.4f} (float32), "
        f"unigram {unigram:.4f}",
        flush=True,
    )

    # --- export and checks
    save_checkpoint(out_dir, params, cfg, hf_tok, args.storage_dtype)

    info_verify = {
        "max_abs_diff": float("nan"),
        "argmax_agreement": float("nan"),
        "logit_scale": float("nan"),
    }
    if not args.skip_verify:
        info_verify = verify_against_transformers(out_dir, fwd, windows, 4)
        print(
            f"transformers check: max abs logit diff {info_verify['max_abs_diff']:.3e} "
            f"(|logits| up to {info_verify['logit_scale']:.1f}), argmax agreement {info_verify['argmax_agreement']:.4f}",
            flush=True,
        )
        if not (info_verify["max_abs_diff"] < 1e-3 and info_verify["argmax_agreement"] > 0.999):
            print("ERROR: transformers logits differ from the JAX forward", file=sys.stderr)
            return 1

    samples, chat_user, chat_completion = greedy_samples(out_dir, fwd, bos_id, eos_id, args.sample_tokens)

    n_train_tokens = len(train_stream)
    license_text = (args.stdlib / "LICENSE.txt").read_text(encoding="utf-8")
    years = re.findall(
        r"\b(20\d\d)\b", license_text.split("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2")[-1]
    )
    total_wall = time.time() - t_start
    weights_mb = (out_dir / "model.safetensors").stat().st_size / 1e6
    niceness = os.nice(0)
    command = (
        (f"nice -n {niceness} " if niceness else "")
        + "python "
        + " ".join(
            shlex.quote(a) for a in ["scripts/train_tiny_model.py", *(sys.argv[1:] if argv is None else argv)]
        )
    )
    info = {
        "cfg": cfg,
        "python_version": platform.python_version(),
        "psf_year": max(years) if years else "",
        "n_train_files": len(corpus["train_files"]),
        "n_heldout_files": len(corpus["heldout_files"]),
        "n_train_chat": len(corpus["train_chat"]),
        "train_mb": train_bytes / 1e6,
        "heldout_mb": heldout_bytes / 1e6,
        "heldout_every": args.heldout_every,
        "n_params": n_params,
        "n_params_non_embedding": n_params - n_embed,
        "seq_len": args.seq_len,
        "storage_dtype": args.storage_dtype,
        "weights_mb": weights_mb,
        "command": command,
        "weight_decay": args.weight_decay,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "final_lr_fraction": args.final_lr_fraction,
        "grad_clip": args.grad_clip,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "epochs": args.steps * args.batch_size * args.seq_len / n_train_tokens,
        "train_tokens": n_train_tokens,
        "seed": args.seed,
        "jax_version": jax.__version__,
        "cpu": f"{os.cpu_count()} cores",
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "space_split_prob": args.space_split_prob,
        "mean_load": float(np.mean(loads)) if loads else float("nan"),
        "total_wall_s": total_wall,
        "heldout_tokens": int(windows[:, 1:].size),
        "unigram_loss": unigram,
        "heldout_loss_fp32": heldout_fp32,
        "heldout_loss": heldout,
        "transformers_version": transformers.__version__,
        "verify_max_abs_diff": info_verify["max_abs_diff"],
        "verify_logit_scale": info_verify["logit_scale"],
        "verify_argmax_agreement": info_verify["argmax_agreement"],
        "sample_tokens": args.sample_tokens,
        "samples": samples,
        "chat_sample": {"user": chat_user, "completion": chat_completion},
    }
    write_model_card(out_dir, info)
    shutil.copyfile(args.stdlib / "LICENSE.txt", out_dir / "LICENSE.txt")
    for path in (out_dir / "LICENSE.txt", out_dir / "README.md"):
        path.chmod(0o644)
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    print(f"wrote {out_dir} ({size / 1e6:.2f} MB): {sorted(f.name for f in out_dir.iterdir())}")
    print(f"total wall time {total_wall:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
