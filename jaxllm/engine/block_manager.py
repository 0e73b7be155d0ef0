"""The host-side owner of the KV pool's pages.

    pool page ids:  0 | 1 2 3 ... P-1
                    ^null page: padding tokens write here, nothing reads it
    request.block_ids = [7, 2, 9]  -> tokens 0..S-1 in page 7, S..2S-1 in page 2, ...

Reference counts let several sequences share a page later (prefix caching, beam search); a page is
free exactly when its count is zero.
"""

from __future__ import annotations

from collections import deque

from jaxllm.engine.request import Request

NULL_BLOCK = 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise ValueError(f"The KV pool needs at least 2 blocks (one is the null block), got {num_blocks}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.ref_counts[NULL_BLOCK] = 1  # never handed out
        self.free_blocks: deque[int] = deque(range(1, num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / max(1, self.num_blocks - 1)

    def blocks_needed(self, request: Request, num_tokens: int) -> int:
        """Extra pages `request` needs to hold `num_tokens` tokens in total."""
        return max(0, cdiv(num_tokens, self.block_size) - len(request.block_ids))

    def can_allocate(self, request: Request, num_tokens: int) -> bool:
        return self.blocks_needed(request, num_tokens) <= self.num_free_blocks

    def allocate(self, request: Request, num_tokens: int) -> None:
        """Grow `request.block_ids` to cover `num_tokens` tokens."""
        need = self.blocks_needed(request, num_tokens)
        if need > self.num_free_blocks:
            raise RuntimeError(f"KV pool exhausted: need {need} blocks, {self.num_free_blocks} free.")
        for _ in range(need):
            block = self.free_blocks.popleft()
            assert self.ref_counts[block] == 0, f"block {block} handed out twice"
            self.ref_counts[block] = 1
            request.block_ids.append(block)

    def free(self, request: Request) -> None:
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                self.free_blocks.append(block)
        request.block_ids = []
        request.num_computed_tokens = 0

    def fork(self, parent: Request, child: Request) -> None:
        """`child` shares all of `parent`'s pages (copy-on-write)."""
        child.block_ids = list(parent.block_ids)
        for block in child.block_ids:
            self.ref_counts[block] += 1

    def is_shared(self, request: Request, position: int) -> bool:
        index = position // self.block_size
        return index < len(request.block_ids) and self.ref_counts[request.block_ids[index]] > 1

    def make_writable(self, request: Request, position: int) -> tuple[int, int] | None:
        """Give `request` a private copy of the page holding `position` if it shares it.

        Returns (source page, new page) for the device to copy, or None when nothing had to move.
        """
        if not self.is_shared(request, position):
            return None
        if not self.free_blocks:
            raise RuntimeError("KV pool exhausted while copying a shared page.")
        index = position // self.block_size
        src = request.block_ids[index]
        dst = self.free_blocks.popleft()
        self.ref_counts[dst] = 1
        self.ref_counts[src] -= 1
        request.block_ids[index] = dst
        return src, dst

    def slot(self, request: Request, position: int) -> int:
        """Flat pool slot (page_id * S + offset) of token `position` of `request`."""
        return request.block_ids[position // self.block_size] * self.block_size + position % self.block_size
