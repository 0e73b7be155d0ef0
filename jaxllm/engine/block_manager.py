"""The host-side owner of the KV pool's pages.

    pool page ids:  0 | 1 2 3 ... P-1
                    ^null page: padding tokens write here, nothing reads it
    request.block_ids = [7, 2, 9]  -> tokens 0..S-1 in page 7, S..2S-1 in page 2, ...

Reference counts let several sequences share a page (prefix caching, beam search); a page is free
exactly when its count is zero.

The page lists are mirrored in one NumPy block table (a row per sequence that holds pages, kept in step
with `block_ids` by the methods below), so a step's tables and slot mappings are array gathers.

Prefix caching: a full page is named by hash(parent page's hash, its token ids), so equal prefixes
name equal pages. A new prompt first takes the pages its prefix already has; freed named pages stay
in an LRU, still findable, and are recycled only when no unnamed free page is left.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from jaxllm.engine.request import Request

NULL_BLOCK = 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 2:
            raise ValueError(f"The KV pool needs at least 2 blocks (one is the null block), got {num_blocks}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.ref_counts[NULL_BLOCK] = 1  # never handed out
        self.free_blocks: deque[int] = deque(range(1, num_blocks))
        self.enable_prefix_caching = enable_prefix_caching
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> page
        self.lru: OrderedDict[int, None] = OrderedDict()  # free named pages, oldest first
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # ... of which were found
        self.tables = np.zeros((16, 8), np.int32)  # row request.table_row = request.block_ids, zero-padded
        self._free_rows = list(range(15, -1, -1))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks) + len(self.lru)

    def _take_free_block(self) -> int:
        if self.free_blocks:
            return self.free_blocks.popleft()
        block, _ = self.lru.popitem(last=False)  # evict the least recently used named page
        del self.cached[self.block_hash[block]]
        self.block_hash[block] = None
        return block

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
        if not need:
            return
        start = len(request.block_ids)
        if need == 1 and 0 <= request.table_row and start < self.tables.shape[1]:  # a decode's new page
            block = self._take_free_block()
            assert self.ref_counts[block] == 0, f"block {block} handed out twice"
            self.ref_counts[block] = 1
            request.block_ids.append(block)
            self.tables[request.table_row, start] = block
            return
        for _ in range(need):
            block = self._take_free_block()
            assert self.ref_counts[block] == 0, f"block {block} handed out twice"
            self.ref_counts[block] = 1
            request.block_ids.append(block)
        self._mirror(request, start)

    def free(self, request: Request) -> None:
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is not None:
                    self.lru[block] = None
                else:
                    self.free_blocks.append(block)
        request.block_ids = []
        request.block_hashes = []
        request.num_registered_blocks = 0
        request.num_computed_tokens = 0
        if request.table_row >= 0:
            self.tables[request.table_row] = 0
            self._free_rows.append(request.table_row)
            request.table_row = -1

    # ---- the block table mirror -------------------------------------------------------------------

    def _mirror(self, request: Request, start: int = 0) -> None:
        """Copy `request.block_ids[start:]` into its table row (a row is taken on first use)."""
        n = len(request.block_ids)
        if n > self.tables.shape[1]:
            grown = np.zeros((self.tables.shape[0], max(n, 2 * self.tables.shape[1])), np.int32)
            grown[:, : self.tables.shape[1]] = self.tables
            self.tables = grown
        if request.table_row < 0:
            if not self._free_rows:
                rows = self.tables.shape[0]
                self.tables = np.concatenate([self.tables, np.zeros_like(self.tables)])
                self._free_rows = list(range(2 * rows - 1, rows - 1, -1))
            request.table_row = self._free_rows.pop()
            start = 0
        self.tables[request.table_row, start:n] = request.block_ids[start:]

    def block_table(self, rows: np.ndarray, width: int) -> np.ndarray:
        """[len(rows), width] page ids of those rows, zero-padded."""
        if width > self.tables.shape[1]:
            out = np.zeros((len(rows), width), np.int32)
            out[:, : self.tables.shape[1]] = self.tables[rows]
            return out
        return self.tables[rows, :width]

    def slots(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Flat pool slots of token `positions[i]` of the request in table row `rows[i]`."""
        s = self.block_size
        return (self.tables[rows, positions // s] * s + positions % s).astype(np.int32)

    # ---- prefix caching --------------------------------------------------------------------------

    def _hashes(self, request: Request, num_full: int) -> list[int]:
        """The names of (at least) the first `num_full` full pages, extending `request.block_hashes`."""
        hashes = request.block_hashes
        prompt, outputs, s = request.prompt_token_ids, request.output_token_ids, self.block_size
        n_prompt = len(prompt)
        while len(hashes) < num_full:
            i = len(hashes)
            a, b = i * s, (i + 1) * s
            page = prompt[a:b] if b <= n_prompt else prompt[a:b] + outputs[max(0, a - n_prompt) : b - n_prompt]
            hashes.append(hash((hashes[-1] if hashes else None, tuple(page))))
        return hashes

    def match_prefix(self, request: Request) -> int:
        """Share the cached pages of `request`'s prefix; returns how many tokens they hold.

        The last token is always recomputed (its logits are needed), so a fully cached prompt gives
        back its last page.
        """
        if not self.enable_prefix_caching or request.block_ids:
            return 0
        n = request.num_tokens
        self.prefix_queries += n
        matched = []
        for h in self._hashes(request, (n - 1) // self.block_size)[: (n - 1) // self.block_size]:
            block = self.cached.get(h)
            if block is None:
                break
            matched.append(block)
        for block in matched:
            if self.ref_counts[block] == 0:
                del self.lru[block]
            self.ref_counts[block] += 1
        request.block_ids = matched
        if matched:
            self._mirror(request)
        hit = len(matched) * self.block_size
        self.prefix_hits += hit
        return hit

    def register_computed(self, request: Request, num_computed: int | None = None) -> None:
        """Name the full pages whose tokens are all computed (the first `num_computed` tokens, by
        default all of `request.num_computed_tokens`), so later prompts can share them. Only pages
        not named before are hashed: a decode step names at most one."""
        if not self.enable_prefix_caching:
            return
        computed = request.num_computed_tokens if num_computed is None else num_computed
        num_tokens = request.num_prompt_tokens + len(request.output_token_ids)
        full = min(computed, num_tokens, len(request.block_ids) * self.block_size) // self.block_size
        first = request.num_registered_blocks
        if full <= first:
            return
        hashes = self._hashes(request, full)
        for i in range(first, full):
            block, h = request.block_ids[i], hashes[i]
            if self.block_hash[block] is None and h not in self.cached:
                self.block_hash[block] = h
                self.cached[h] = block
        request.num_registered_blocks = full

    def reset_prefix_cache(self) -> bool:
        """Forget every cached page; refused (False) while any page is in use, as in vLLM."""
        if any(self.ref_counts[1:]):
            return False
        for block in list(self.lru):
            self.free_blocks.append(block)
        self.lru.clear()
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks
        return True

    def fork(self, parent: Request, child: Request) -> None:
        """`child` shares all of `parent`'s pages (copy-on-write)."""
        child.block_ids = list(parent.block_ids)
        for block in child.block_ids:
            self.ref_counts[block] += 1
        self._mirror(child)

    def is_shared(self, request: Request, position: int) -> bool:
        index = position // self.block_size
        return index < len(request.block_ids) and self.ref_counts[request.block_ids[index]] > 1

    def make_writable(self, request: Request, position: int) -> tuple[int, int] | None:
        """Give `request` a private copy of the page holding `position` if it shares it.

        Returns (source page, new page) for the device to copy, or None when nothing had to move.
        """
        if not self.is_shared(request, position):
            return None
        if not self.num_free_blocks:
            raise RuntimeError("KV pool exhausted while copying a shared page.")
        index = position // self.block_size
        src = request.block_ids[index]
        dst = self._take_free_block()
        self.ref_counts[dst] = 1
        self.ref_counts[src] -= 1
        request.block_ids[index] = dst
        self.tables[request.table_row, index] = dst
        return src, dst

    def slot(self, request: Request, position: int) -> int:
        """Flat pool slot (page_id * S + offset) of token `position` of `request`."""
        return request.block_ids[position // self.block_size] * self.block_size + position % self.block_size
