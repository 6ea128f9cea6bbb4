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
        # BEGIN SOLUTION lesson6
        block_id = self.free_block_ids.popleft()
        block = self.blocks[block_id]
        assert block.ref_count == 0, f"free block {block_id} still has references"
        block.ref_count = 1
        self.used_block_ids.add(block_id)
        return block_id
        # END SOLUTION

    def _release_block(self, block_id: int) -> None:
        """Drop one reference; a block nobody references goes back to the free list."""
        # BEGIN SOLUTION lesson6
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.used_block_ids.remove(block_id)
            self.free_block_ids.append(block_id)
        # END SOLUTION

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether every block ``seq`` needs right now could be handed out."""
        # BEGIN SOLUTION lesson6
        return self.num_free_blocks >= seq.num_blocks
        # END SOLUTION

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` (which holds no blocks) a block table covering all its tokens.

        All or nothing: raises OutOfBlocksError, changing nothing, when blocks run out.
        """
        if self.enable_prefix_caching:
            return self._allocate_with_prefix_cache(seq)
        # BEGIN SOLUTION lesson6
        # Hint: check first, then take blocks: a half-built block table is a leak.
        assert not seq.block_table, f"{seq} already holds blocks"
        if not self.can_allocate(seq):
            raise OutOfBlocksError(f"{seq} needs {seq.num_blocks} blocks, {self.num_free_blocks} are free")
        seq.block_table = [self._take_free_block() for _ in range(seq.num_blocks)]
        # END SOLUTION

    def deallocate(self, seq: Sequence) -> None:
        """Take back every block of ``seq`` and empty its block table."""
        # BEGIN SOLUTION lesson6
        for block_id in reversed(seq.block_table):
            self._release_block(block_id)
        seq.block_table = []
        seq.num_cached_tokens = 0
        # END SOLUTION

    def can_append(self, seq: Sequence) -> bool:
        """Whether ``seq`` can grow to cover its newest token (needs one free block if that token starts a block)."""
        # BEGIN SOLUTION lesson6
        needs_block = len(seq.block_table) < seq.num_blocks
        return self.num_free_blocks >= int(needs_block)
        # END SOLUTION

    def may_append(self, seq: Sequence) -> None:
        """Before a decode step: extend the block table if the newest token starts a new block."""
        if self.enable_prefix_caching:
            return self._append_with_prefix_cache(seq)
        # BEGIN SOLUTION lesson6
        if len(seq.block_table) < seq.num_blocks:
            if not self.free_block_ids:
                raise OutOfBlocksError(f"no free block to extend {seq}")
            seq.block_table.append(self._take_free_block())
        # END SOLUTION

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
        # BEGIN SOLUTION lesson13
        block_id = self.hash_to_block_id.get(block_hash)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        if block.token_ids != token_ids or block.parent_content_id != parent_content_id:
            return None
        return block_id
        # END SOLUTION

    def _register_block(self, block_id: int, block_hash: int, token_ids: list[int], parent_content_id: int) -> None:
        """Make a full block findable: remember its hash, tokens and parent, give it a new content id, map hash -> block."""
        # BEGIN SOLUTION lesson13
        block = self.blocks[block_id]
        block.hash = block_hash
        block.token_ids = list(token_ids)
        block.content_id = next(self.content_ids)
        block.parent_content_id = parent_content_id
        self.hash_to_block_id[block_hash] = block_id
        # END SOLUTION

    def _uncache_block(self, block_id: int) -> None:
        """A block was taken from the free list for new content: its old content must no longer be found."""
        # BEGIN SOLUTION lesson13
        # Hint: the map may point elsewhere by now (a newer block with the same hash): remove only your own entry.
        block = self.blocks[block_id]
        if block.hash != NO_HASH and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]
        block.hash = NO_HASH
        block.token_ids = []
        block.content_id = NO_CONTENT
        block.parent_content_id = NO_CONTENT
        # END SOLUTION

    def _reuse_cached_block(self, block_id: int) -> None:
        """Add a reference to a cached block; a free one leaves the free list with its content intact."""
        # BEGIN SOLUTION lesson13
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free_block_ids.remove(block_id)
            self.used_block_ids.add(block_id)
        block.ref_count += 1
        # END SOLUTION

    def _allocate_with_prefix_cache(self, seq: Sequence) -> None:
        """``allocate`` with prefix caching: reuse the cached blocks of ``seq``'s longest cached prefix.

        Walks the blocks in order, chaining hashes. Until the first miss, a full block already
        cached is shared (``seq.num_cached_tokens`` grows by ``block_size``); from the first miss
        on, blocks are taken from the free list and full ones are registered. The block that
        holds the last token is never a hit: prefill must compute at least that token's logits.
        Raises OutOfBlocksError, changing nothing, when the free blocks might not be enough.
        """
        # BEGIN SOLUTION lesson13
        assert not seq.block_table, f"{seq} already holds blocks"
        if not self.can_allocate(seq):
            raise OutOfBlocksError(f"{seq} needs {seq.num_blocks} blocks, {self.num_free_blocks} are free")
        block_table, num_cached_tokens, cache_miss = [], 0, False
        prev_hash, parent_content_id = NO_HASH, NO_CONTENT
        for i in range(seq.num_blocks):
            token_ids = seq.block(i)
            full = len(token_ids) == self.block_size
            block_hash = compute_block_hash(token_ids, prev_hash) if full else NO_HASH
            leaves_a_token = (i + 1) * self.block_size < len(seq)
            block_id = None
            if full and leaves_a_token and not cache_miss:
                block_id = self._lookup_cached_block(block_hash, token_ids, parent_content_id)
            if block_id is None:
                cache_miss = True
                block_id = self._take_free_block()
                self._uncache_block(block_id)
                if full:
                    self._register_block(block_id, block_hash, token_ids, parent_content_id)
            else:
                self._reuse_cached_block(block_id)
                num_cached_tokens += self.block_size
            block_table.append(block_id)
            prev_hash, parent_content_id = block_hash, self.blocks[block_id].content_id
        seq.block_table = block_table
        seq.num_cached_tokens = num_cached_tokens
        # END SOLUTION

    def _append_with_prefix_cache(self, seq: Sequence) -> None:
        """``may_append`` with prefix caching.

        The step that follows computes the newest token. If it starts a block, take a fresh
        one (its old cached content, if any, is forgotten); if it completes a block, register
        that block now: by the time any other sequence is allocated, its K/V are all computed.
        """
        # BEGIN SOLUTION lesson13
        if len(seq.block_table) < seq.num_blocks:
            if not self.free_block_ids:
                raise OutOfBlocksError(f"no free block to extend {seq}")
            block_id = self._take_free_block()
            self._uncache_block(block_id)
            seq.block_table.append(block_id)
        if len(seq) % self.block_size == 0:
            index = len(seq) // self.block_size - 1
            parent = self.blocks[seq.block_table[index - 1]] if index > 0 else None
            # A chain never skips a link: register only after a registered parent.
            if parent is None or parent.hash != NO_HASH:
                prev_hash = parent.hash if parent else NO_HASH
                parent_content_id = parent.content_id if parent else NO_CONTENT
                block_hash = compute_block_hash(seq.block(index), prev_hash)
                self._register_block(seq.block_table[index], block_hash, seq.block(index), parent_content_id)
        # END SOLUTION


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
        # BEGIN SOLUTION lesson16
        self.allocate(seq)
        self.forget_computed_blocks(seq)
        # END SOLUTION

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
        # BEGIN SOLUTION lesson16
        # Hint: block i is full within the first num_tokens tokens when (i + 1) * block_size <= num_tokens.
        for index in range(num_tokens // self.block_size):
            block = self.blocks[seq.block_table[index]]
            if block.hash != NO_HASH:
                continue
            parent = self.blocks[seq.block_table[index - 1]] if index > 0 else None
            if parent is not None and parent.hash == NO_HASH:
                return
            token_ids = seq.block(index)
            block_hash = compute_block_hash(token_ids, parent.hash if parent else NO_HASH)
            self._register_block(block.block_id, block_hash, token_ids, parent.content_id if parent else NO_CONTENT)
        # END SOLUTION


def compute_block_hash(token_ids: list[int], prev_hash: int = NO_HASH) -> int:
    """64-bit xxhash of one full block: the previous block's hash (none for the first block), then the tokens.

    Chaining makes a block's hash name its whole prefix, not just its own tokens.
    """
    # BEGIN SOLUTION lesson13
    hasher = xxhash.xxh64()
    if prev_hash != NO_HASH:
        hasher.update(prev_hash.to_bytes(8, "little"))
    hasher.update(array("q", token_ids).tobytes())
    return hasher.intdigest()
    # END SOLUTION


def slot_mapping(block_table: list[int], positions: list[int], block_size: int) -> list[int]:
    """Flat cache slot of each token position: block_table[p // block_size] * block_size + p % block_size."""
    # BEGIN SOLUTION lesson6
    return [block_table[p // block_size] * block_size + p % block_size for p in positions]
    # END SOLUTION
