"""FP8 pages of the KV pool: saturating quantization and per-tensor scales.

One scale per layer for K and one for V (float32 scalars)::

    page value  = saturate(x / scale)  in float8 (e4m3fn or e5m2)
    x          ~= float(page value) * scale

The kernels never dequantize a page in memory: they load float8 tiles, widen them to the query's
dtype in registers and fold the scales into the dots (``q . (k8 * k_scale) = (q . k8) * k_scale``;
``p @ (v8 * v_scale) = (p @ v8) * v_scale``).

A stored scale of 0 means "not calibrated yet": the first step that writes K/V sets it from that
step's values (:func:`calibrated_scales`), mapping the largest finite magnitude of K to 200 and of V
to 100, which leaves headroom for later tokens below the e4m3 limit of 448.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FP8_DTYPES = (jnp.float8_e4m3fn, jnp.float8_e5m2)

# Where calibration puts the first step's largest |K| and |V| (in units of the stored float8).
K_CALIBRATION_TARGET = 200.0
V_CALIBRATION_TARGET = 100.0


def is_fp8(dtype) -> bool:
    """Whether pages of this dtype are float8 (and so carry scales)."""
    return jnp.dtype(dtype) in tuple(jnp.dtype(d) for d in FP8_DTYPES)


def quantize(x: jax.Array, scale, dtype) -> jax.Array:
    """``x / scale`` rounded to ``dtype``, values beyond its largest finite one saturated (NaN stays NaN).

    A plain cast would turn every overflow into NaN (e4m3fn has no infinity).
    """
    limit = float(jnp.finfo(dtype).max)
    y = x.astype(jnp.float32) / jnp.asarray(scale, jnp.float32)
    return jnp.clip(y, -limit, limit).astype(dtype)


def dequantize(pages: jax.Array, scale) -> jax.Array:
    """float32 values of float8 ``pages``: ``pages * scale``."""
    return pages.astype(jnp.float32) * jnp.asarray(scale, jnp.float32)


def _finite_absmax(x: jax.Array) -> jax.Array:
    a = jnp.abs(x.astype(jnp.float32))
    return jnp.max(jnp.where(jnp.isfinite(a), a, 0.0))


def calibrated_scales(k: jax.Array, v: jax.Array, k_scale: jax.Array, v_scale: jax.Array):
    """The layer's scales after a step writing ``k``, ``v`` ``[T, K, H]``.

    Scales already set (> 0) are kept; a scale of 0 is set from this step's largest finite magnitude
    (1.0 if every value is 0). Non-finite values are left out, so one bad token cannot make the scale
    NaN for everyone.
    """

    def calibrate(x, scale, target):
        amax = _finite_absmax(x)
        fresh = jnp.where(amax > 0, amax / target, 1.0)
        return jnp.where(scale > 0, scale, fresh).astype(jnp.float32)

    return calibrate(k, k_scale, K_CALIBRATION_TARGET), calibrate(v, v_scale, V_CALIBRATION_TARGET)


def kernel_scales(k_pages: jax.Array, k_scale, v_scale) -> jax.Array | None:
    """The ``[2]`` float32 (k_scale, v_scale) the kernels take with float8 pages; None otherwise."""
    if not is_fp8(k_pages.dtype):
        if k_scale is not None or v_scale is not None:
            raise ValueError(f"k_scale / v_scale apply to float8 pages only, got pages of {k_pages.dtype}")
        return None
    one = jnp.float32(1.0)
    ks = one if k_scale is None else jnp.asarray(k_scale, jnp.float32).reshape(())
    vs = one if v_scale is None else jnp.asarray(v_scale, jnp.float32).reshape(())
    return jnp.stack([ks, vs])
