"""Joining a multi-host job: `jax.distributed` from arguments or from JAX's environment variables.

One process per host. Every process must be started with the same model and arguments; process 0
runs the scheduler and the others follow its steps (see `runner/step_broadcast.py`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ENV_ADDRESS, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


@dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator (process 0) listens, how many processes join, and which one this is."""

    coordinator_address: str
    num_processes: int
    process_id: int

    @classmethod
    def resolve(
        cls, coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
    ) -> DistributedConfig | None:
        """From the arguments, each falling back to JAX's variable; None for a single-process job."""
        address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
        count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
        index = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
        if address is None:
            if count not in (None, 1) or index not in (None, 0):
                raise ValueError(
                    "distributed_num_processes / distributed_process_id need a coordinator address "
                    f"(distributed_coordinator_address or ${ENV_ADDRESS})."
                )
            return None
        if ":" not in address:
            raise ValueError(f"The coordinator address must be HOST:PORT, got {address!r}.")
        if count is None or index is None:
            raise ValueError(
                "A coordinator address needs the number of processes and this process's id "
                f"(distributed_num_processes / distributed_process_id, or ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})."
            )
        if count < 1:
            raise ValueError(f"The number of processes must be at least 1, got {count}.")
        if not 0 <= index < count:
            raise ValueError(f"The process id must be in [0, {count}), got {index}.")
        return cls(address, count, index)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}.") from None


def initialize(config: DistributedConfig | None) -> None:
    """Join the job (once per process; later calls with a job already joined do nothing)."""
    import jax

    if config is None or config.num_processes == 1 or jax.distributed.is_initialized():
        return
    try:  # collectives between the CPU devices of several processes (no effect on GPU meshes)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):
        logger.info("This jax has no jax_cpu_collectives_implementation option; keeping its default")
    logger.info("Joining %s as process %d of %d", config.coordinator_address, config.process_id, config.num_processes)
    jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
