"""The K/V page write of one layer: XLA's scatter vs the Pallas row-copy kernel, on the pool in place.

    python scripts/bench_kv_write.py                      # decode (256 tokens) and prefill shapes
    python scripts/bench_kv_write.py --shapes 2x256,8x256,8x8192 --pool-tokens 1000000

Each shape is KxT (kv heads x new tokens, head size --head-dim). Checks that every variant writes the same
pool as the scatter, then times one jitted loop of --layers writes (pools donated, so each write is in
place), as a model step issues them, and reports the time of one write.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
from bench_common import best_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="2x256,8x256,2x8192,8x8192")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--pool-tokens", type=int, default=1_000_000)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp

    from pallas_kernels.kv_pages import _pallas_write, write_to_kv_pages

    variants = {
        "xla scatter": functools.partial(write_to_kv_pages, impl="xla"),
        **{f"pallas block {b}": functools.partial(_pallas_write, block=b) for b in (8, 16, 64)},
    }
    S, H = args.page_size, args.head_dim
    P = args.pool_tokens // S
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind}; pool {P * S} tokens, head dim {H}, {args.dtype}")
    print("| kv heads | tokens | " + " | ".join(variants) + " |")
    print("| --- | --- |" + " --- |" * len(variants))
    for shape in args.shapes.split(","):
        K, T = (int(x) for x in shape.split("x"))
        dtype = jnp.dtype(args.dtype)
        k = jnp.asarray(rng.standard_normal((T, K, H)), dtype)
        v = jnp.asarray(rng.standard_normal((T, K, H)), dtype)
        slots = jnp.asarray(rng.choice(np.arange(S, P * S), T, replace=False), jnp.int32)
        reference = None
        cells = []
        for name, fn in variants.items():
            f = jax.jit(fn, donate_argnums=(0, 1))

            def layers(kp, vp, k, v, slots, fn=fn):  # each layer's tokens in other slots, as in a real step
                def body(i, pools):
                    return fn(*pools, k, v, (slots - S + i * S) % (P * S - S) + S)
                return jax.lax.fori_loop(0, args.layers, body, (kp, vp))

            loop = jax.jit(layers, donate_argnums=(0, 1))
            state = [jnp.zeros((K, P, S, H), dtype), jnp.zeros((K, P, S, H), dtype)]
            state[:] = f(*state, k, v, slots)
            got = (np.asarray(state[0][:, slots // S, slots % S].astype(jnp.float32)),
                   np.asarray(state[1][:, slots // S, slots % S].astype(jnp.float32)))
            if reference is None:
                reference = got
            same = all(np.array_equal(a, b) for a, b in zip(got, reference))

            def call():
                state[:] = loop(*state, k, v, slots)
                return state[0]

            seconds = best_of(call, repeats=5, calls=10) / args.layers
            cells.append(f"{seconds * 1e6:.1f} us{'' if same else ' (WRONG)'}")
            del state
        print(f"| {K} | {T} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
