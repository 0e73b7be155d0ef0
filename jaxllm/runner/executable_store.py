"""Compiled step executables kept on disk and loaded back without tracing, lowering or compiling.

JAX's persistent compilation cache is keyed by the lowered program, so a warm start must still trace and
lower every step (0.3-0.9 s each for an 8B model, mostly GIL-bound Python) before it can ask the cache.
This store is keyed by what determines the program instead, so a warm start goes straight from a key to
a loaded executable:

    key = sha256(jax/jaxlib versions, backend, device kinds and ids, XLA_FLAGS and jaxllm's settings,
                 jaxllm's source code, the model config, the parameter tree with shardings, the KV pool,
                 the step's flags and its per-call input shapes)

    <folder>/<key>.jaxexe = pickle({"format", "key", "executable", "in_tree", "out_tree"})

A file that cannot be read or loaded, or that belongs to another key, is deleted with a warning and the
step is compiled again (through the persistent cache) and stored anew: never an error. Writes go to a
temporary file renamed into place, so a concurrent reader sees a whole file or none.

    folder: <compilation cache folder>/executables   off: JAXLLM_EXECUTABLE_CACHE=0
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pickle
import tempfile
from typing import Any

import jax

logger = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".jaxexe"
# Settings that change which program a step compiles to; the others (cache folders, thread counts) do not.
_NEUTRAL_SETTINGS = ("JAXLLM_CACHE_DIR", "JAXLLM_COMPILATION_CACHE", "JAXLLM_EXECUTABLE_CACHE",
                     "JAXLLM_PRECOMPILE", "JAXLLM_PRECOMPILE_THREADS", "JAXLLM_LOAD_THREADS")


def enabled() -> bool:
    return os.environ.get("JAXLLM_EXECUTABLE_CACHE", "1").lower() not in ("0", "false", "off", "no")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of jaxllm's own source (and its kernels'): an edit to any of it is a new program."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for package in ("jaxllm", "pallas_kernels"):
        top = os.path.join(root, package)
        for folder, dirs, files in sorted(os.walk(top)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, Any]:
    """What the process runs on and with, beyond the step itself."""
    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "backend": jax.default_backend(),
        "platform_version": getattr(devices[0].client, "platform_version", ""),
        "devices": [(d.id, d.device_kind, d.process_index) for d in devices],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "settings": sorted((k, v) for k, v in os.environ.items()
                           if k.startswith("JAXLLM_") and k not in _NEUTRAL_SETTINGS),
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "code": code_version(),
    }


def describe_tree(tree: Any) -> list[str]:
    """Each leaf of an abstract tree as 'path shape dtype sharding', in tree order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sharding = getattr(leaf, "sharding", None)
        spec = getattr(sharding, "spec", sharding)
        mesh = getattr(sharding, "mesh", None)
        where = dict(mesh.shape) if mesh is not None else None
        out.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {leaf.dtype} {spec} {where}")
    return out


def step_context(model_config: Any, module: str, num_top_logprobs: int, fixed: Any) -> dict[str, Any]:
    """What every step of a runner depends on besides its own shape and flags: the model (wherever its
    folder is), the sampler's top-logprobs width and the shared arguments (parameters, KV pool, buffer)."""
    return {"model": repr(dataclasses.replace(model_config, path="")), "hf_config": model_config.hf_config,
            "module": module, "top_logprobs": num_top_logprobs, "fixed": describe_tree(fixed)}


class ExecutableStore:
    """One folder of serialized executables; `load(key)` / `save(key, compiled)`, both never raising."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._environment = environment()

    def key(self, *parts: Any) -> str:
        """The key of a step described by `parts` (JSON-able; anything else by its repr) in this environment."""
        text = json.dumps([self._environment, *parts], sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key + SUFFIX)

    def has(self, key: str) -> bool:
        return os.path.isfile(self.path(key))

    def load(self, key: str, devices: list, name: str = "step"):
        """The stored executable, loaded onto `devices` (those it was compiled for, in the mesh's order);
        None when absent, stale or unreadable."""
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f)
            if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
                raise ValueError("it was stored for another key or format")
            from jax.experimental.serialize_executable import deserialize_and_load

            return deserialize_and_load(entry["executable"], entry["in_tree"], entry["out_tree"],
                                        execution_devices=devices)
        except Exception as err:
            logger.warning("The stored executable of the %s (%s) cannot be used (%s: %s); compiling it again",
                           name, path, type(err).__name__, err)
            self._remove(path)
            return None

    def save(self, key: str, compiled, name: str = "step") -> bool:
        """Store a compiled executable under `key`; False (with a warning) when it cannot be stored."""
        try:
            from jax.experimental.serialize_executable import serialize

            executable, in_tree, out_tree = serialize(compiled)
            entry = {"format": FORMAT, "key": key, "executable": executable, "in_tree": in_tree,
                     "out_tree": out_tree}
            handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=self.folder)
            try:
                with os.fdopen(handle, "wb") as f:
                    pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, self.path(key))
            except BaseException:
                self._remove(tmp)
                raise
            return True
        except Exception as err:
            logger.warning("Could not store the executable of the %s in %s (%s: %s)", name, self.folder,
                           type(err).__name__, err)
            return False

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except OSError:
            pass


def open_store(compilation_cache_dir: str | None) -> ExecutableStore | None:
    """The store beside the persistent compilation cache (None when either is turned off)."""
    if not compilation_cache_dir or not enabled():
        return None
    try:
        return ExecutableStore(os.path.join(compilation_cache_dir, "executables"))
    except OSError as err:
        logger.warning("Executables will not be stored: %s", err)
        return None
