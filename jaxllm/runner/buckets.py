"""Fixed shape buckets: every step is padded up to one of these, so each is compiled once."""

from __future__ import annotations


def ladder(max_value: int, start: int = 1) -> list[int]:
    """Powers of two from `start` below `max_value`, then `max_value` itself: 1, 2, 4, ..., max."""
    sizes, size = [], max(1, start)
    while size < max_value:
        sizes.append(size)
        size *= 2
    sizes.append(max_value)
    return sizes


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest bucket that holds `n`."""
    for size in sizes:
        if size >= n:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}.")
