"""The KV cache's free blocks, in the order an engine with prefix caching reuses them (vLLM's
``vllm/v1/core/block_pool.py``: a free-block queue, allocation from its head, freed blocks appended at its tail).

Without prefix caching a preempted request loses its K/V (recompute preemption starts it again from token 0).
With it, a preempted request's full blocks stay in the queue holding their K/V until another allocation reaches
them: vLLM frees a request's blocks in reverse order (``free_blocks(reversed(...))``), so its last blocks are
evicted first and what survives is always a prefix. When the request is admitted again its surviving prefix is a
cache hit: only the tokens after it are computed again (at least one, as vLLM recomputes the last token of a
full hit). Blocks of finished requests hold K/V nobody asks for again (the workloads here share no prefixes), so
they are as good as empty.

The queue is kept as segments ``[owner, blocks]`` (owner -1: blocks whose contents nobody will hit), adjacent
empty segments merged, so its length stays of the order of the waiting preempted requests.
"""

from __future__ import annotations

from collections import deque

EMPTY = -1


class BlockPool:
    def __init__(self, blocks: int, prefix_caching: bool):
        self.free = int(blocks)
        self.prefix_caching = prefix_caching
        self._queue: deque[list[int]] = deque([[EMPTY, self.free]] if self.free else [])
        self.cached: dict[int, int] = {}  # preempted request -> its blocks still in the queue

    def _append(self, owner: int, n: int) -> None:
        if n <= 0:
            return
        if owner == EMPTY and self._queue and self._queue[-1][0] == EMPTY:
            self._queue[-1][1] += n
        else:
            self._queue.append([owner, n])
        self.free += n

    def take(self, n: int, owner: int = EMPTY) -> None:
        """Allocate ``n`` blocks to ``owner``: its own cached blocks first (a prefix-cache hit takes them out of
        the queue), then from the head of the queue, evicting whatever cached blocks are there."""
        if n <= 0:
            return
        if n > self.free:
            raise ValueError(f"{n} blocks asked of {self.free} free")
        had = self.cached.pop(owner, 0)
        own = min(had, n)
        if had:
            left = own
            for seg in self._queue:
                if seg[0] == owner:
                    used = min(seg[1], left)
                    seg[1] -= used
                    left -= used
                    seg[0] = EMPTY if seg[1] else owner  # what it did not use is no longer its cache
            self._queue = deque(s for s in self._queue if s[1] > 0)
        self.free -= n
        rest = n - own
        while rest:
            seg = self._queue[0]
            used = min(seg[1], rest)
            seg[1] -= used
            rest -= used
            if seg[0] != EMPTY:
                self.cached[seg[0]] -= used
                if self.cached[seg[0]] <= 0:
                    del self.cached[seg[0]]
            if seg[1] == 0:
                self._queue.popleft()

    def release(self, n: int) -> None:
        """A finished request's blocks: free, holding nothing anyone will hit."""
        self._append(EMPTY, n)

    def preempt(self, owner: int, n: int, full: int) -> None:
        """A preempted request's ``n`` blocks, ``full`` of them full: its partial last block holds nothing
        reusable; with prefix caching its full blocks stay cached until evicted."""
        self._append(EMPTY, n - full if self.prefix_caching else n)
        if self.prefix_caching and full > 0:
            self._append(owner, full)
            self.cached[owner] = full

    def cached_tokens(self, owner: int, block_tokens: int) -> int:
        """Tokens of ``owner``'s prefix still in the cache."""
        return self.cached.get(owner, 0) * block_tokens
