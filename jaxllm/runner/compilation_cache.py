"""JAX's persistent compilation cache, on by default, so a second start of the same model compiles nothing.

    default folder: $JAXLLM_CACHE_DIR, else ~/.cache/jaxllm/xla
    turn off:       LLM(..., compilation_cache_dir="") or JAXLLM_COMPILATION_CACHE=0
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    base = os.environ.get("JAXLLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxllm"
    )
    return os.path.join(base, "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Point JAX's persistent cache at `path` (None: the default folder; "": off). Returns the folder used.

    A cache folder the user already configured through JAX itself is left alone.
    """
    if path == "" or os.environ.get("JAXLLM_COMPILATION_CACHE", "1").lower() in ("0", "false", "off"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        return current
    folder = os.path.expanduser(path or default_cache_dir())
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small step functions too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    logger.info("XLA compilation cache: %s", folder)
    return folder
