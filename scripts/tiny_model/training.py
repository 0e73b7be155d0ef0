"""Training and evaluation: optimizer, batches, the training loop, held-out loss and baseline."""

from __future__ import annotations

import os
import time
from functools import partial

import numpy as np

from tiny_model.model import token_nll


def make_optimizer(args, total_steps: int):
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=args.lr,
        warmup_steps=args.warmup_steps,
        decay_steps=max(total_steps, args.warmup_steps + 1),
        end_value=args.lr * args.final_lr_fraction,
    )

    def decay_mask(params):  # weight decay on matrices only, not on norm weights
        return jax.tree_util.tree_map(lambda p: p.ndim == 2, params)

    opt = optax.chain(
        optax.clip_by_global_norm(args.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=args.weight_decay, mask=decay_mask),
    )
    return opt, schedule


def sample_batch(rng: np.random.Generator, stream: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return np.stack([stream[s : s + seq_len + 1] for s in starts])


def heldout_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of seq_len + 1 tokens (consecutive windows share one token)."""
    n = (len(stream) - 1) // seq_len
    return np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def evaluate(nll_fn, params, windows: np.ndarray, batch_size: int) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        nll = np.asarray(nll_fn(params, chunk))
        total += float(nll.sum(dtype=np.float64))
        count += nll.size
    return total / count


def unigram_loss(train_stream: np.ndarray, windows: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy of an add-one smoothed unigram model fitted on the training
    tokens, measured on exactly the held-out target tokens the model is scored on."""
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[windows[:, 1:]].mean())


def round_to_bf16(params):
    import jax.numpy as jnp

    return {k: v.astype(jnp.bfloat16).astype(jnp.float32) for k, v in params.items()}


def train(args, cfg: dict, params, train_stream: np.ndarray, windows: np.ndarray, nll_fn):
    """The training loop: ``args.steps`` AdamW steps on random windows of ``train_stream`` (batch
    order from ``args.seed``), logged every ``args.log_every`` steps, with the held-out loss every
    ``args.eval_every`` steps.

    Returns the trained parameters (``params`` is donated) and a dict with ``history`` (the logged
    training losses), ``loads`` (1-minute load averages at the logged steps), ``train_wall`` and
    ``train_cpu`` (seconds).
    """
    import jax
    import jax.numpy as jnp
    import optax

    opt, schedule = make_optimizer(args, args.steps)
    opt_state = opt.init(params)

    def loss_fn(p, batch):
        return token_nll(p, batch, cfg).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(p, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return p, state, loss, optax.global_norm(grads)

    rng = np.random.default_rng(args.seed)
    history = []
    t_train = time.time()
    cpu_train = time.process_time()
    t_log, last_logged = t_train, 0
    loads = []
    for step in range(1, args.steps + 1):
        batch = sample_batch(rng, train_stream, args.batch_size, args.seq_len)
        params, opt_state, loss, gnorm = train_step(params, opt_state, jnp.asarray(batch))
        if step % args.log_every == 0 or step == 1 or step == args.steps:
            loss = float(loss)
            now = time.time()
            rate = (step - last_logged) / max(now - t_log, 1e-9)
            t_log, last_logged = now, step
            loads.append(os.getloadavg()[0])
            print(
                f"step {step:5d}  loss {loss:.4f}  gnorm {float(gnorm):.3f}  lr {float(schedule(step - 1)):.2e}  "
                f"{rate:.2f} steps/s  {rate * args.batch_size * args.seq_len:,.0f} tok/s  "
                f"elapsed {now - t_train:,.0f}s",
                flush=True,
            )
            history.append({"step": step, "train_loss": loss})
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            ev = evaluate(nll_fn, params, windows, 32)
            print(f"step {step:5d}  held-out loss {ev:.4f}", flush=True)
    jax.block_until_ready(params)
    train_wall = time.time() - t_train
    train_cpu = time.process_time() - cpu_train
    print(
        f"training: {args.steps} steps in {train_wall:.1f}s wall ({args.steps / train_wall:.2f} steps/s), "
        f"{train_cpu:.1f}s CPU time",
        flush=True,
    )
    return params, {"history": history, "loads": loads, "train_wall": train_wall, "train_cpu": train_cpu}
