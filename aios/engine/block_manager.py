"""The paged KV cache's allocator: fixed-size blocks, handed out to sequences and taken back.

Like virtual memory: a sequence sees a contiguous run of token positions, its
block table maps each run of ``block_size`` positions to a physical block
anywhere in the cache. No sequence reserves memory it does not use yet.

Prefix caching (lesson 13): a full block is named by a hash chain, the hash of
its tokens and of the previous block's hash, so equal names mean equal prefixes.
``hash_to_block_id`` finds a block that already holds a prefix; sequences share
it by reference count, and a freed block keeps its content (and stays findable)
until the free list hands it out for something else.
"""

from array import array
from collections import deque
from itertools import count

import xxhash

from aios.engine.sequence import Sequence

NO_HASH = -1  # Block.hash of a block that is not (or not yet) findable by its content
NO_CONTENT = -1  # content id of "no block": the parent of a sequence's first block


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation needs more free blocks than there are."""


class Block:
    """One physical cache block: how many sequences use it (and, for prefix caching, what it holds)."""

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash = NO_HASH
        self.token_ids: list[int] = []
        # Prefix caching: a number given to this content only, and the one of the block before it.
        self.content_id = NO_CONTENT
        self.parent_content_id = NO_CONTENT

    def __repr__(self) -> str:
        return f"Block({self.block_id}, refs={self.ref_count})"


class BlockManager:
    """Owns ``num_blocks`` blocks of ``block_size`` token slots each."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.used_block_ids: set[int] = set()
        self.hash_to_block_id: dict[int, int] = {}
        self.content_ids = count()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def _take_free_block(self) -> int:
        """Move the oldest free block to the used set with one reference, and return its id."""
        raise NotImplementedError("Lesson 6: implement BlockManager._take_free_block in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def _release_block(self, block_id: int) -> None:
        """Drop one reference; a block nobody references goes back to the free list."""
        raise NotImplementedError("Lesson 6: implement BlockManager._release_block in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether every block ``seq`` needs right now could be handed out."""
        raise NotImplementedError("Lesson 6: implement BlockManager.can_allocate in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` (which holds no blocks) a block table covering all its tokens.

        All or nothing: raises OutOfBlocksError, changing nothing, when blocks run out.
        """
        if self.enable_prefix_caching:
            return self._allocate_with_prefix_cache(seq)
        # Hint: check first, then take blocks: a half-built block table is a leak.
        raise NotImplementedError("Lesson 6: implement BlockManager.allocate in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def deallocate(self, seq: Sequence) -> None:
        """Take back every block of ``seq`` and empty its block table."""
        raise NotImplementedError("Lesson 6: implement BlockManager.deallocate in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def can_append(self, seq: Sequence) -> bool:
        """Whether ``seq`` can grow to cover its newest token (needs one free block if that token starts a block)."""
        raise NotImplementedError("Lesson 6: implement BlockManager.can_append in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def may_append(self, seq: Sequence) -> None:
        """Before a decode step: extend the block table if the newest token starts a new block."""
        if self.enable_prefix_caching:
            return self._append_with_prefix_cache(seq)
        raise NotImplementedError("Lesson 6: implement BlockManager.may_append in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")

    def forget_computed_blocks(self, seq: Sequence) -> None:
        """After a failed step: the blocks ``seq`` computes itself must no longer be found by their content.

        Prefix caching registers a block before the step that writes its K/V (``allocate`` for a
        prefill, ``may_append`` for a decode). If that step raised, maybe before the model ran, the
        block may hold nothing, and a request reusing it would attend to garbage. Blocks ``seq``
        reused (its first ``num_cached_blocks``) were written by an earlier step and stay cached.
        """
        if self.enable_prefix_caching:
            for block_id in seq.block_table[seq.num_cached_blocks :]:
                self._uncache_block(block_id)

    # ------------------------------------------------------------------ prefix caching (lesson 13)

    def _lookup_cached_block(self, block_hash: int, token_ids: list[int], parent_content_id: int) -> int | None:
        """The block that holds ``token_ids`` right after the block with content ``parent_content_id``, or None.

        The hash only finds a candidate: two different prefixes can share a hash, so the
        candidate counts only if its tokens and its parent are exactly the ones asked for.
        """
        raise NotImplementedError("Lesson 13: implement BlockManager._lookup_cached_block in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")

    def _register_block(self, block_id: int, block_hash: int, token_ids: list[int], parent_content_id: int) -> None:
        """Make a full block findable: remember its hash, tokens and parent, give it a new content id, map hash -> block."""
        raise NotImplementedError("Lesson 13: implement BlockManager._register_block in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")

    def _uncache_block(self, block_id: int) -> None:
        """A block was taken from the free list for new content: its old content must no longer be found."""
        # Hint: the map may point elsewhere by now (a newer block with the same hash): remove only your own entry.
        raise NotImplementedError("Lesson 13: implement BlockManager._uncache_block in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")

    def _reuse_cached_block(self, block_id: int) -> None:
        """Add a reference to a cached block; a free one leaves the free list with its content intact."""
        raise NotImplementedError("Lesson 13: implement BlockManager._reuse_cached_block in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")

    def _allocate_with_prefix_cache(self, seq: Sequence) -> None:
        """``allocate`` with prefix caching: reuse the cached blocks of ``seq``'s longest cached prefix.

        Walks the blocks in order, chaining hashes. Until the first miss, a full block already
        cached is shared (``seq.num_cached_tokens`` grows by ``block_size``); from the first miss
        on, blocks are taken from the free list and full ones are registered. The block that
        holds the last token is never a hit: prefill must compute at least that token's logits.
        Raises OutOfBlocksError, changing nothing, when the free blocks might not be enough.
        """
        raise NotImplementedError("Lesson 13: implement BlockManager._allocate_with_prefix_cache in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")

    def _append_with_prefix_cache(self, seq: Sequence) -> None:
        """``may_append`` with prefix caching.

        The step that follows computes the newest token. If it starts a block, take a fresh
        one (its old cached content, if any, is forgotten); if it completes a block, register
        that block now: by the time any other sequence is allocated, its K/V are all computed.
        """
        raise NotImplementedError("Lesson 13: implement BlockManager._append_with_prefix_cache in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")


    # ------------------------------------------------------------------ chunked prefill (lesson 16)

    def allocate_chunked(self, seq: Sequence) -> None:
        """``allocate`` for chunked prefill: the same block table, but only the reused prefix stays findable.

        Prefix caching registers a prompt's full blocks when they are allocated, which is right
        when one step computes the whole prompt. In chunks, most of those blocks are written
        steps later, and if ``seq`` is preempted first they return to the free list findable but
        never written: the next request with that prefix would attend to garbage. So the blocks
        ``seq`` computes itself are hidden again at once, and ``cache_full_blocks`` registers them
        chunk by chunk. Raises OutOfBlocksError, changing nothing, when blocks run short.
        """
        raise NotImplementedError("Lesson 16: implement BlockManager.allocate_chunked in aios/engine/block_manager.py — see exercises/lesson16/README.md, 'What to implement'")

    def cache_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Make the blocks of ``seq`` that are full within its first ``num_tokens`` tokens findable by content.

        Called when a step is scheduled to compute tokens up to ``num_tokens`` (as ``may_append``
        registers a decode's block): by the time another sequence is allocated, their K/V are
        written. A block that is already findable (a reused one, or one an earlier chunk
        registered) is skipped; the walk stops at a block whose parent is not findable, since a
        hash chain never skips a link. Without prefix caching it does nothing.
        """
        if not self.enable_prefix_caching:
            return
        # Hint: block i is full within the first num_tokens tokens when (i + 1) * block_size <= num_tokens.
        raise NotImplementedError("Lesson 16: implement BlockManager.cache_full_blocks in aios/engine/block_manager.py — see exercises/lesson16/README.md, 'What to implement'")


def compute_block_hash(token_ids: list[int], prev_hash: int = NO_HASH) -> int:
    """64-bit xxhash of one full block: the previous block's hash (none for the first block), then the tokens.

    Chaining makes a block's hash name its whole prefix, not just its own tokens.
    """
    raise NotImplementedError("Lesson 13: implement compute_block_hash in aios/engine/block_manager.py — see exercises/lesson13/README.md, 'What to implement'")


def slot_mapping(block_table: list[int], positions: list[int], block_size: int) -> list[int]:
    """Flat cache slot of each token position: block_table[p // block_size] * block_size + p % block_size."""
    raise NotImplementedError("Lesson 6: implement slot_mapping in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")
