"""Cross-lowering for CUDA on a machine without a GPU: `jax.export` runs the Pallas Triton lowering,
which is where missing lowering rules and non-power-of-two tiles are refused."""

from __future__ import annotations

import jax


def triton_backend_available() -> bool:
    try:
        from jax._src.pallas.triton import pallas_call_registration  # noqa: F401
    except ImportError:
        return False
    return True


def export_for_cuda(fn, *args):
    """The module `fn(*args)` lowers to for CUDA (args may be ShapeDtypeStructs)."""
    exported = jax.export.export(
        jax.jit(fn),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    return exported.mlir_module()
