"""Reading checkpoint tensors at the disk's speed: groups of tensors (a decoder layer, or one large tensor)
read into one host buffer each, by a pool of threads whose `preadv` calls release the GIL.

    slices:  name -> TensorSlice(file, offset, nbytes, dtype, shape)   (safetensors headers, or a converted index)
    groups:  [[layer 0's tensors], [layer 1's], ..., [embed], [lm_head]]
    reader:  HostGroup(buffer, offsets) for each group, in order, a few groups ahead of the consumer

              file bytes ──preadv (thread k)──> one uint8 buffer per group ──> views / one device transfer

Groups arrive in the order given while later ones are still being read, and at most `window` groups are
held at once, so host memory stays bounded (a few layers) whatever the model's size.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

ALIGN = 64  # each tensor's start in a group buffer: aligned views, for NumPy and the transfer
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


@dataclass(frozen=True)
class TensorSlice:
    """Where one tensor's bytes are: `nbytes` at `offset` of `file`, row-major `shape` of `dtype`."""

    name: str
    file: str
    offset: int
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


def numpy_dtype(name: str) -> np.dtype | None:
    """A safetensors dtype name (F32, BF16, ...) or a NumPy/ml_dtypes name (bfloat16, ...) as a NumPy dtype."""
    if name in _ST_DTYPES:
        return np.dtype(_ST_DTYPES[name])
    import ml_dtypes

    table = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
             "bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
             "float8_e5m2": ml_dtypes.float8_e5m2}
    if name in table:
        return np.dtype(table[name])
    try:
        return np.dtype(name)
    except TypeError:
        return None


def read_safetensors_header(file: str) -> tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def safetensors_slices(files: list[str]) -> dict[str, TensorSlice]:
    """Every tensor of the weight files, in file and offset order (the order the disk holds them)."""
    out = {}
    for file in files:
        header, start = read_safetensors_header(file)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            dtype = numpy_dtype(info["dtype"])
            if dtype is None:
                raise ValueError(f"{file}: tensor {name} has dtype {info['dtype']}, which jaxllm does not read.")
            begin, end = info["data_offsets"]
            out[name] = TensorSlice(name, file, start + begin, end - begin, dtype, tuple(info["shape"]))
    return out


def iter_tensors(files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of the weight files, in stored order, the next ones read meanwhile."""
    slices = list(safetensors_slices(files).values())
    for host in CheckpointReader().groups([[s] for s in slices]):
        yield host.slices[0].name, host.array(host.slices[0].name)


@dataclass
class HostGroup:
    """One group's tensors in one host buffer; `array(name)` is a view (no copy)."""

    slices: list[TensorSlice]
    buffer: np.ndarray  # uint8
    offsets: dict[str, int]  # name -> start in buffer

    def array(self, name: str) -> np.ndarray:
        s = next(t for t in self.slices if t.name == name)
        start = self.offsets[name]
        return self.buffer[start : start + s.nbytes].view(s.dtype).reshape(s.shape)


def group_layout(slices: list[TensorSlice]) -> tuple[dict[str, int], int]:
    """Each tensor's start in its group's buffer (aligned) and the buffer's size."""
    offsets, size = {}, 0
    for s in slices:
        size = -(-size // ALIGN) * ALIGN
        offsets[s.name] = size
        size += s.nbytes
    return offsets, size


def default_workers() -> int:
    """Read threads: $JAXLLM_LOAD_THREADS, else one per core up to 8 (page-cache copies saturate memory
    bandwidth well before that many; a disk needs a few reads in flight)."""
    return max(1, int(os.environ.get("JAXLLM_LOAD_THREADS") or 0) or min(8, os.cpu_count() or 1))


class CheckpointReader:
    """Reads groups of tensor slices on a thread pool; iterate `groups(...)` to receive them in order."""

    def __init__(self, workers: int | None = None, window: int | None = None):
        self.workers = workers or default_workers()
        self.window = window or self.workers + 2  # groups held at once: one per reader, two waiting
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, file: str) -> int:
        with self._lock:
            if file not in self._fds:
                self._fds[file] = os.open(file, os.O_RDONLY)
            return self._fds[file]

    def read(self, slices: list[TensorSlice]) -> HostGroup:
        """One group into a new buffer (preadv: the bytes go straight from the page cache into it)."""
        offsets, size = group_layout(slices)
        buffer = np.empty(size, np.uint8)
        view = memoryview(buffer)
        for s in slices:
            fd, start, done = self._fd(s.file), offsets[s.name], 0
            while done < s.nbytes:
                n = os.preadv(fd, [view[start + done : start + s.nbytes]], s.offset + done)
                if n <= 0:
                    raise ValueError(f"{s.file} ends before the {s.nbytes} bytes of tensor {s.name}.")
                done += n
        return HostGroup(slices, buffer, offsets)

    def groups(self, groups: list[list[TensorSlice]]) -> Iterator[HostGroup]:
        """Each group read, in the given order, while up to `window` groups are read ahead."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jaxllm-read")
        pending: deque = deque()
        todo = iter(groups)
        try:
            for group in todo:
                pending.append(pool.submit(self.read, group))
                if len(pending) >= self.window:
                    break
            while pending:
                host = pending.popleft().result()
                for group in todo:
                    pending.append(pool.submit(self.read, group))
                    break
                yield host
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            self.close()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
