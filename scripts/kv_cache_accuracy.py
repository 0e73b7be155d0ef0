"""How much float8 KV pages change a model's next-token distributions, on text it was not trained on.

    PYTHONPATH=. python scripts/kv_cache_accuracy.py          # the embedded model, its held-out files
    PYTHONPATH=. python scripts/kv_cache_accuracy.py --max-windows 8 --json

Each window of held-out text runs as ONE packed chunk through the pool-reading (ragged) attention
path, so every query attends to K/V read back from the pool pages: the path decode and chunked
prefill take. The same windows run with kv_cache_dtype="auto" (the model's dtype) and with each
float8 setting; per token the script reports KL(p_auto || p_fp8) (nats), whether the argmax token
agrees, and the held-out loss. Windows run in order on one pool, so with calculate_kv_scales the
scales are set by the first window, as by a server's first prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import numpy as np

SETTINGS = {  # name -> LLM(...) arguments
    "auto": {"kv_cache_dtype": "auto"},
    "fp8_e4m3": {"kv_cache_dtype": "fp8_e4m3"},
    "fp8_e4m3+calc": {"kv_cache_dtype": "fp8_e4m3", "calculate_kv_scales": True},
    "fp8_e5m2": {"kv_cache_dtype": "fp8_e5m2"},
}


def heldout_windows(tokenizer, window: int, max_windows: int) -> list[list[int]]:
    """Non-overlapping `window`-token pieces of the embedded model's held-out files (every 50th file of
    the standard library's sorted *.py files, as scripts/tiny_model/corpus.py chose them for training)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_model.corpus import build_corpus

    docs = build_corpus(Path(sysconfig.get_paths()["stdlib"]), heldout_every=50, chat_max_lines=0)["heldout_docs"]
    windows = []
    for doc in docs:
        ids = tokenizer(doc).input_ids
        windows += [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)]
    return windows[:max_windows]


class PoolScorer:
    """Logits of one token sequence with every query attending through the pool pages of `llm`."""

    def __init__(self, llm):
        import jax

        from jaxllm.models.layers import AttentionMetadata
        from pallas_kernels.ragged_paged_attention import query_blocks

        self.runner, self.md, self.blocks = llm.runner, AttentionMetadata, query_blocks
        module, cfg = self.runner.module, self.runner.model_config

        def forward(params, kv_caches, tokens, positions, md):
            hidden, kv_caches = module.forward(params, cfg, tokens, positions, kv_caches, md)
            return module.compute_logits(params, cfg, hidden), kv_caches

        self.forward = jax.jit(forward, donate_argnums=(1,))

    def logits(self, ids: list[int], qb: int = 16) -> np.ndarray:
        """float32 `[T, V]`: row t is the distribution of token t + 1. The pool keeps its scales."""
        runner, t = self.runner, len(ids)
        size = runner.cache_config.block_size
        pages = -(-t // size)
        if pages + 1 > runner.cache_config.num_blocks:
            raise ValueError(f"a window of {t} tokens needs {pages + 1} pool pages")
        rows, starts, lens = self.blocks(np.array([0]), np.array([t]), qb, -(-t // qb))
        md = self.md(
            slot_mapping=np.arange(size, size + t, dtype=np.int32),  # pages 1.. in order
            block_tables=np.arange(1, pages + 1, dtype=np.int32)[None],
            q_block_rows=rows, q_block_starts=starts, q_block_lens=lens,
        )
        positions = np.arange(t, dtype=np.int32)
        out, runner.kv_caches = self.forward(runner.params, runner.kv_caches, np.asarray(ids, np.int32), positions, md)
        return np.asarray(out, np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: list[np.ndarray], other: list[np.ndarray], windows: list[list[int]]) -> dict:
    """Per-token KL(reference || other), argmax agreement and both held-out losses, over all windows."""
    kl, agree, loss_ref, loss_other = [], [], [], []
    for r, o, ids in zip(reference, other, windows):
        lr, lo = _log_softmax(r[:-1]), _log_softmax(o[:-1])  # the last row predicts past the window
        kl.append((np.exp(lr) * (lr - lo)).sum(axis=-1))
        agree.append(lr.argmax(-1) == lo.argmax(-1))
        nxt = np.asarray(ids[1:])
        loss_ref.append(-lr[np.arange(len(nxt)), nxt])
        loss_other.append(-lo[np.arange(len(nxt)), nxt])
    kl, agree = np.concatenate(kl), np.concatenate(agree)
    return {
        "tokens": int(kl.size),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "kl_p99": float(np.quantile(kl, 0.99)),
        "argmax_agreement": float(agree.mean()),
        "loss_reference": float(np.concatenate(loss_ref).mean()),
        "loss": float(np.concatenate(loss_other).mean()),
    }


def run(model: str | None, settings: list[str], window: int, max_windows: int) -> dict:
    from jaxllm import LLM

    results, reference, windows = {}, None, None
    for name in ["auto"] + [s for s in settings if s != "auto"]:
        llm = LLM(model, max_model_len=max(window, 16), max_num_seqs=1, **SETTINGS[name])
        if windows is None:
            windows = heldout_windows(llm.get_tokenizer(), window, max_windows)
        scorer = PoolScorer(llm)
        logits = [scorer.logits(ids) for ids in windows]
        if reference is None:
            reference = logits
            continue
        results[name] = compare(reference, logits, windows)
        caches = llm.runner.kv_caches
        results[name]["k_scales"] = [float(c[2]) for c in caches]
        results[name]["v_scales"] = [float(c[3]) for c in caches]
        del llm, scorer
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a Hugging Face folder (default: the embedded model)")
    ap.add_argument("--settings", nargs="+", default=[s for s in SETTINGS if s != "auto"], choices=sorted(SETTINGS))
    ap.add_argument("--window", type=int, default=256, help="tokens per window (the embedded model trained on 256)")
    ap.add_argument("--max-windows", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = run(args.model, args.settings, args.window, args.max_windows)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| setting | tokens | mean KL (nats) | p99 KL | max KL | argmax agreement | loss (auto -> fp8) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['tokens']} | {r['kl_mean']:.2e} | {r['kl_p99']:.2e} | {r['kl_max']:.2e} | "
              f"{100 * r['argmax_agreement']:.2f}% | {r['loss_reference']:.4f} -> {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
