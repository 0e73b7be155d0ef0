"""`matmul(x, w)`: `x @ w` for a dense weight, the dequantizing matmul for a `QuantizedWeight`.

Every model calls its linear layers through this one function, so a parameter tree may hold dense
and quantized weights in any mix.

* int8 / fp8 (one scale per output column): `(x @ q.astype(x.dtype)) * s`. The scale commutes with
  the sum over K, so it is applied to the [M, N] output in float32; the exact int8/fp8 -> x.dtype
  conversion is an operand conversion XLA can fuse into the GEMM's read of the weights (the
  benchmark's HLO summary shows what it did).
* AWQ (one scale and zero point per group of G input rows): the scale does not commute with the K
  sum. Three formulations on the repacked layout (`awq_layout.py`): the Pallas matrix-vector kernel
  for up to GEMV_MAX_ROWS rows (`awq_gemv.py`: float32 multiply-adds, no dot), the Pallas tensor-core
  kernel up to DOT_MAX_ROWS rows (`awq_kernel.py`), both unpacking the nibbles in registers, and the
  XLA one above that (`awq.awq_matmul_xla`: dequantize, then one dense GEMM, which is compute-bound
  there). Which one runs is decided per call site at trace time by `awq_impl` from the H200
  measurements in docs/quantization.md; JAXLLM_AWQ_MATMUL=xla|pallas|gemv forces one.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization import awq_gemv, awq_kernel
from jaxllm.quantization.awq import awq_matmul_xla
from jaxllm.quantization.weights import QuantizedWeight, after_input

logger = logging.getLogger(__name__)

# Row thresholds on the GPU, from the H200 layer table in docs/quantization.md (4096 x 28672): the
# matrix-vector kernel up to GEMV_MAX_ROWS rows (44 us at M = 1, growing about 15 us a row; the
# tensor-core kernel 72 us at M = 1-8), the tensor-core kernel up to DOT_MAX_ROWS (107 vs 214 us for
# XLA at M = 32; 397 vs 219 at M = 128), XLA above.
GEMV_MAX_ROWS = int(os.environ.get("JAXLLM_AWQ_GEMV_MAX_ROWS", "2"))
DOT_MAX_ROWS = int(os.environ.get("JAXLLM_AWQ_PALLAS_MAX_ROWS", "32"))

# (K, N, group, dtype, launch config) -> whether the Pallas kernel compiled and matched XLA here.
_PALLAS_CHECKED: dict[tuple, bool] = {}


def _tensor_parallel() -> bool:
    """Whether x and w are whole arrays under a tensor-parallel mesh (inside a per-shard block they are local)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or "tp" not in mesh.axis_names or mesh.shape["tp"] == 1:
        return False
    return "tp" not in mesh.manual_axes


def awq_impl(m: int, w: QuantizedWeight, dtype=jnp.bfloat16) -> str:
    """"gemv", "pallas" or "xla" for an [m, K] @ w product with x in `dtype` (decided at trace time)."""
    forced = os.environ.get("JAXLLM_AWQ_MATMUL", "auto").lower()
    k, n = w.shape
    gemv_fits = awq_gemv.supported(m, k, n, w.group_size) and not _tensor_parallel()
    fits = awq_kernel.supported(m, k, n, w.group_size) and not _tensor_parallel()
    if forced == "gemv" and gemv_fits:
        return "gemv"
    if forced == "pallas" and fits:
        return "pallas"
    if forced in ("xla", "gemv", "pallas") or jax.default_backend() != "gpu":
        return "xla"
    # Under a tensor-parallel mesh the kernels cannot be partitioned by XLA; the XLA formulation can.
    if gemv_fits and m <= GEMV_MAX_ROWS and _pallas_checked("gemv", m, k, n, w.group_size, dtype):
        return "gemv"
    # The tensor-core kernel rounds the weight to x's dtype: a float32 model keeps float32 weights.
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if fits and half and m <= DOT_MAX_ROWS and _pallas_checked("pallas", m, k, n, w.group_size, dtype):
        return "pallas"
    return "xla"


def _kernel(name: str):
    """(function, default_config) of the Pallas kernel `name` ("gemv" or "pallas")."""
    if name == "gemv":
        return awq_gemv.awq_gemv_pallas, awq_gemv.default_config
    return awq_kernel.awq_matmul_pallas, awq_kernel.default_config


def _pallas_checked(name: str, m: int, k: int, n: int, group: int, dtype) -> bool:
    """Compile and run a kernel once per launch configuration, on random data, against XLA.

    A kernel that fails to lower on this jax / GPU, or disagrees with the XLA formulation, is not used
    (a warning says why), so the model still runs, through XLA.
    """
    kernel, default_config = _kernel(name)
    config = default_config(m, k, n, group)
    key = (name, m, k, n, group, jnp.dtype(dtype).name, config)
    if key in _PALLAS_CHECKED:
        return _PALLAS_CHECKED[key]
    ok = False
    try:
        rng = np.random.default_rng(0)
        words = rng.integers(0, 2**32, (k, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
        zeros = rng.integers(0, 2**32, (k // group, n // 8), dtype=np.uint64).astype(np.uint32).view(np.int32)
        scales = (0.001 + 0.01 * rng.random((k // group, 8, n // 8))).astype(np.float16)
        x = rng.standard_normal((m, k)).astype(jnp.dtype(dtype))  # random words: any layout is valid
        w = QuantizedWeight(words, scales, zeros, kind="awq", group_size=group, shape=(k, n))
        # Lowered, compiled and run on concrete host arrays: programs of their own, whatever trace is
        # in progress around this call.
        got = np.asarray(kernel.lower(x, w).compile()(x, w), np.float32)
        x32 = x.astype(np.float32)
        want = np.asarray(jax.jit(awq_matmul_xla).lower(x32, w).compile()(x32, w), np.float32)
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        ok = bool(np.isfinite(err) and err < 2e-2)
        if not ok:
            logger.warning("AWQ %s kernel disagrees with XLA for %dx%d (rel. error %.2e); not used.", name, k, n, err)
    except Exception as e:  # any lowering / compile failure: fall back
        logger.warning("AWQ %s kernel unavailable for %dx%d (%s: %s); not used.", name, k, n, type(e).__name__, e)
    _PALLAS_CHECKED[key] = ok
    return ok


def awq_matmul(x: jax.Array, w: QuantizedWeight, impl: str | None = None) -> jax.Array:
    impl = impl or awq_impl(x.shape[0], w, x.dtype)
    if impl in ("gemv", "pallas"):
        return _kernel(impl)[0](x, w)
    return awq_matmul_xla(x, w)


def channel_matmul(x: jax.Array, w: QuantizedWeight) -> jax.Array:
    """int8 / fp8 weight with per-output-channel scales: (x @ q) * s, accumulated in float32.

    The converted weight waits for x (`after_input`, as in `awq_matmul_xla`)."""
    y = jnp.dot(x, after_input(w.qweight.astype(x.dtype), x), preferred_element_type=jnp.float32)
    return (y * w.scales).astype(x.dtype)


def matmul(x: jax.Array, w) -> jax.Array:
    """x [..., K] @ w [K, N] -> [..., N], for a dense array or a QuantizedWeight."""
    if not isinstance(w, QuantizedWeight):
        return x @ w
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    y = awq_matmul(x2, w) if w.kind == "awq" else channel_matmul(x2, w)
    return y.reshape(*lead, w.shape[1])
