"""`WeightLoader`: a checkpoint's tensors onto the mesh, each device receiving its shard.

Dense layers on one device travel as one buffer each and are cut, cast, transposed and fused by one
device call (`layer_assembly.py`); other weights go tensor by tensor, transposed on the device where
they can be, quantized where the quantization config says so, and with kv heads repeated where there
are fewer than devices. `load_format="dummy"` makes random weights of the same tree on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxllm import sharding
from jaxllm.config import ModelConfig
from jaxllm.model_loader import init_dummy_params, load_params
from jaxllm.quantization.placement import dummy_param, put_param
from jaxllm.runner.layer_assembly import assemble_layer


class WeightLoader:
    def __init__(self, model_config: ModelConfig, module, mesh, quant_config, kv_repeats: int, tp: int, fuses: bool):
        """model_config: the per-device (sharded) config; fuses: whether layers come out with q|k|v and
        gate|up fused (see models/fusion.py)."""
        self.model_config, self.module, self.mesh = model_config, module, mesh
        self.quant_config, self.kv_repeats, self.tp, self.fuses = quant_config, kv_repeats, tp, fuses
        self._transposes: dict[tuple, object] = {}

    def load(self, load_format: str) -> dict:
        """The parameter tree on the mesh: from safetensors, a converted checkpoint, or random ("dummy")."""
        cfg = self.model_config
        from jaxllm.converted_checkpoint import converted_slices, is_converted_checkpoint  # `jaxllm convert`

        # One dense layer at a time on one device: one transfer and one device call per layer.
        put_layer = self.put_layer if self.tp == 1 and self.quant_config is None else None
        if load_format != "dummy" and is_converted_checkpoint(cfg.path):
            if self.quant_config is not None:
                raise ValueError(
                    f"{cfg.path} holds unquantized weights converted by jaxllm; quantization is not supported for "
                    "converted checkpoints (load the original model to quantize)."
                )
            slices, table = converted_slices(cfg.path, cfg)
            return load_params(cfg, table, self.put, put_layer=put_layer, slices=slices)
        table = self.module.name_table(cfg)
        if load_format in ("auto", "safetensors"):
            # Dense weights are transposed on the device (quantized and repeated kv heads: on the host).
            on_device = self.put_transposed if self.quant_config is None and self.kv_repeats == 1 else None
            return load_params(cfg, table, self.put, self.quant_config, put_transposed=on_device, put_layer=put_layer)
        if load_format != "dummy":
            raise ValueError(f"Unknown load_format {load_format!r}; choose 'auto', 'safetensors' or 'dummy'.")
        dtype = jnp.dtype(cfg.dtype)

        def random(shape, key):
            return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

        def make(path, shape, seed):
            if seed is not None and self.quant_config is not None:
                quantized = dummy_param(self.mesh, path, shape, seed, dtype, self.quant_config)
                if quantized is not None:
                    return quantized
            out = sharding.param_sharding(self.mesh, path[-1], shape)
            if seed is None:
                return jax.jit(lambda: jnp.ones(shape, dtype), out_shardings=out)()
            return jax.jit(random, static_argnums=(0,), out_shardings=out)(shape, jax.random.PRNGKey(seed))

        return init_dummy_params(cfg, table, self.module.hf_shapes(cfg), make)

    def put(self, path: tuple, host: np.ndarray) -> jax.Array:
        """A checkpoint tensor onto the mesh, each device receiving only its shard."""
        if path[-1] in ("wk", "wv", "bk", "bv") and self.kv_repeats > 1:
            host = sharding.repeat_kv_heads(host, self.kv_repeats, self.model_config.head_dim)
        if self.quant_config is not None:
            return put_param(self.mesh, path, host, self.quant_config)
        return jax.device_put(host, sharding.param_sharding(self.mesh, path[-1], host.shape))

    def put_layer(self, buffer: np.ndarray, layout: tuple) -> dict:
        """A decoder layer from its raw bytes: one transfer, then one device call that cuts, casts,
        transposes and fuses (runner/layer_assembly.py)."""
        raw = jax.device_put(buffer, sharding.replicated(self.mesh))
        return assemble_layer(raw, layout, self.model_config.dtype, self.fuses)

    def put_transposed(self, path: tuple, host: np.ndarray) -> jax.Array:
        """A checkpoint's [out, in] weight onto the mesh as [in, out]: each device receives its shard in the
        checkpoint's layout and transposes it in place of NumPy's slow strided copy on the host."""
        target = sharding.param_sharding(self.mesh, path[-1], host.shape[::-1])
        spec = (*target.spec, *([None] * (host.ndim - len(target.spec))))
        placed = jax.device_put(host, NamedSharding(self.mesh, PartitionSpec(*reversed(spec))))
        key = tuple(target.spec)
        if key not in self._transposes:
            self._transposes[key] = jax.jit(jnp.transpose, out_shardings=target)
        return self._transposes[key](placed)
