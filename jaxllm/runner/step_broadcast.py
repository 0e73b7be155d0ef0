"""One scheduler, several processes: process 0 sends each device call's host inputs, the others follow.

In a multi-host job every process must run the same jitted programs in the same order, each on its own
devices of the global mesh. Only process 0 has an engine (requests, scheduler, tokenizer); before each
step (or pool-page copy) it broadcasts what the call needs, and the other processes replay it:

    process 0:  schedule -> InputBatch -> send(("step", flags, inputs)) -> step(params, pool, inputs)
    process k:                             receive() ──────────────────> step(params, pool, inputs)

A message is pickled and sent in two collectives over every device of the job (`broadcast_one_to_all`):
its length, then its bytes padded to a power of two, so a handful of sizes compile once each.
"""

from __future__ import annotations

import logging
import pickle

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

STEP, LOGITS, SAMPLE, COPY, STOP = "step", "logits", "sample", "copy", "stop"  # message kinds


def is_multi_process() -> bool:
    return jax.process_count() > 1


def is_leader() -> bool:
    return jax.process_index() == 0


def broadcast_int(value: int) -> int:
    """Process 0's `value`, on every process."""
    if not is_multi_process():
        return value
    return int(multihost_utils.broadcast_one_to_all(np.array([value], np.int64))[0])


def send(message: tuple) -> None:
    """Process 0: hand `message` to every other process (a no-op in a single-process job)."""
    if is_multi_process():
        _transfer(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive() -> tuple:
    """Processes other than 0: the next message process 0 sends."""
    return pickle.loads(_transfer(b""))


def _transfer(payload: bytes) -> bytes:
    size = broadcast_int(len(payload))
    padded = np.zeros(1 << max(10, (size - 1).bit_length()), np.uint8)
    padded[: len(payload)] = np.frombuffer(payload, np.uint8)
    return multihost_utils.broadcast_one_to_all(padded)[:size].tobytes()


def to_global(tree, sharding):
    """Host arrays (the same on every process) as arrays replicated over the whole mesh."""

    def put(x):
        if x is None or isinstance(x, jax.Array):
            return x
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def fetch(tree):
    """Replicated device arrays to NumPy, reading this process's own copy (process 0 holds every value)."""

    def get(x):
        if x is None or not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x if not isinstance(x, jax.Array) else np.asarray(x)
        return np.asarray(x.addressable_data(0))

    return jax.tree_util.tree_map(get, tree)
