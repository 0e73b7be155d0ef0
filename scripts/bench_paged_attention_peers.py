"""The implementations timed by ``bench_paged_attention.py``: ours and its peers, on the same inputs.

Also the shared shape constants (page size, head dim) and the correctness check against the reference.
With float8 pages (``--kv-cache-dtype fp8``) the sets hold the pages quantized with ``FP8_SCALE``; ``ours``
and ``xla`` read them, and ``ours_bf16`` times ours on the bfloat16 pages of the same values.
"""

from __future__ import annotations

import json

PAGE = 16
HEAD_DIM = 128
FP8_SCALE = 1 / 32  # unit-normal values stay far inside e4m3's range (448) after division
IMPLS = ("ours", "ours_bf16", "jax_triton", "cudnn", "xla")
FP8_IMPLS = ("ours", "ours_bf16", "xla")
KV_DTYPES = {"auto": "bfloat16", "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
LABELS = {
    "ours": "ours (Pallas)",
    "ours_bf16": "ours, bf16 pages",
    "jax_triton": "JAX Pallas-Triton paged",
    "cudnn": "cuDNN paged",
    "xla": "XLA gather + dense",
}


def kv_bytes(B, L, K, H=HEAD_DIM, itemsize=2):
    return B * L * K * H * itemsize * 2


# --------------------------------------------------------------------------------------
# Inputs and implementations
# --------------------------------------------------------------------------------------


def make_sets(B, L, N, K, R, seed=0, kv_dtype="bfloat16"):
    """R independent input sets: head-major pool [K, B*W + 1, 16, 128] (page 0 = null page),
    random-permutation block tables, every sequence at full context L. float8 pools hold the same
    values divided by FP8_SCALE."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pallas_kernels.kv_quant import is_fp8, quantize

    W = L // PAGE
    P = B * W + 1
    sets = []
    for r in range(R):
        key = jax.random.key(1000 * seed + r)
        kq, kk, kv = jax.random.split(key, 3)
        q = jax.random.normal(kq, (B, N, HEAD_DIM), jnp.bfloat16)
        kp = jax.random.normal(kk, (K, P, PAGE, HEAD_DIM), jnp.bfloat16)
        vp = jax.random.normal(kv, (K, P, PAGE, HEAD_DIM), jnp.bfloat16)
        perm = np.random.default_rng(r + 17 * seed).permutation(B * W) + 1
        bt = jnp.asarray(perm.reshape(B, W).astype(np.int32))
        lens = jnp.full((B,), L, jnp.int32)
        if is_fp8(kv_dtype):
            kp, vp = quantize(kp, FP8_SCALE, jnp.dtype(kv_dtype)), quantize(vp, FP8_SCALE, jnp.dtype(kv_dtype))
        sets.append((q, kp, vp, bt, lens))
    return sets


def cudnn_layout(s):
    """The same pages in cuDNN's layout: K/V [B*W, 16, K, H], page table [B, 1, W, 1]."""
    q, kp, vp, bt, lens = s
    kc = kp[:, 1:].transpose(1, 2, 0, 3)
    vc = vp[:, 1:].transpose(1, 2, 0, 3)
    table = (bt - 1)[:, None, :, None]
    return q, kc, vc, table, lens


def build_impl(name, B, L, N, K, config=None, fp8=False):
    """Returns (list of (config_label, fn(set) -> [B, N, H])); fn is traced inside a jit.
    fp8: the set's pages are float8 (scale FP8_SCALE); ours_bf16 always gets bfloat16 pages."""
    import jax
    import jax.numpy as jnp

    scale = HEAD_DIM**-0.5
    W = L // PAGE
    page_scales = {"k_scale": FP8_SCALE, "v_scale": FP8_SCALE} if fp8 and name != "ours_bf16" else {}
    if fp8 and name not in FP8_IMPLS:
        raise ValueError(f"{name} reads bfloat16 pages only")
    if name in ("ours", "ours_bf16"):
        from pallas_kernels.paged_attention import default_config, paged_attention

        cfg = dict(config) if config else {}
        label = json.dumps(cfg or {"default": default_config(B, K, W, PAGE)}, sort_keys=True)

        def ours(s):
            q, kp, vp, bt, lens = s
            return paged_attention(q, kp, vp, bt, lens, scale=scale, **page_scales, **cfg)

        return [(label, ours)]
    if name == "jax_triton":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from jax.experimental.pallas.ops.gpu import paged_attention as jpa
        # (k_splits, pages_per_compute_block): its default, and fewer/more splits.
        cands = []
        for ks, ppcb in ((16, 8), (max(1, min(W // 4, pow2_floor(max(1, 512 // (B * K))))), 4)):
            ks = max(1, min(ks, W))
            while W % ks:
                ks //= 2
            ppcb = max(1, min(ppcb, W // ks))
            while (W // ks) % ppcb:
                ppcb //= 2
            if (ks, ppcb) not in [c[0] for c in cands]:
                cands.append(((ks, ppcb), None))
        out = []
        for (ks, ppcb), _ in cands:

            def jt(s, ks=ks, ppcb=ppcb):
                q, kp, vp, bt, lens = s
                return jpa.paged_attention(
                    q * jnp.asarray(scale, q.dtype),
                    kp,
                    vp,
                    bt,
                    lens,
                    k_splits=ks,
                    pages_per_compute_block=ppcb,
                    interpret=jax.default_backend() == "cpu",
                )

            out.append((json.dumps({"k_splits": ks, "pages_per_compute_block": ppcb}), jt))
        return out
    if name == "cudnn":
        from jax._src.cudnn.fused_attention_stablehlo import MaskType
        from jax._src.cudnn.fused_attention_stablehlo import paged_attention as cudnn_paged

        def cud(s):
            q, kc, vc, table, lens = s
            out = cudnn_paged(
                q[:, None],  # [B, 1, N, H]
                kc,
                vc,
                jnp.ones((q.shape[0],), jnp.int32),
                lens,
                table,
                table,
                scale=scale,
                mask_type=MaskType.PADDING,
                qkv_layout="BTNH",
            )
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out[:, 0]

        return [("{}", cud)]
    if name == "xla":

        def xla(s):
            q, kp, vp, bt, lens = s
            Bq, Nq, H = q.shape
            Kq, _, S, _ = kp.shape
            T = bt.shape[1] * S
            k = kp[:, bt].reshape(Kq, Bq, T, H)  # [K, B, T, H]
            v = vp[:, bt].reshape(Kq, Bq, T, H)
            if page_scales:  # dequantized after the gather, fused by XLA
                k = (k.astype(jnp.float32) * FP8_SCALE).astype(q.dtype)
                v = (v.astype(jnp.float32) * FP8_SCALE).astype(q.dtype)
            qg = q.reshape(Bq, Kq, Nq // Kq, H)
            logits = jnp.einsum("bkgh,kbth->bkgt", qg, k, preferred_element_type=jnp.float32) * scale
            valid = jnp.arange(T)[None, :] < lens[:, None]  # [B, T]
            logits = jnp.where(valid[:, None, None, :], logits, -jnp.inf)
            p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            o = jnp.einsum("bkgt,kbth->bkgh", p, v, preferred_element_type=jnp.float32)
            return o.reshape(Bq, Nq, H).astype(q.dtype)

        return [("{}", xla)]
    raise ValueError(name)


def pow2_floor(x):
    return 1 << (int(x).bit_length() - 1)


def check(out_rows, ref_rows):
    import numpy as np

    o = np.asarray(out_rows, np.float32)
    r = np.asarray(ref_rows, np.float32)
    finite = bool(np.isfinite(o).all())
    rel = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30))
    return finite, rel
