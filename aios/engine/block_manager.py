"""The paged KV cache's allocator: fixed-size blocks, handed out to sequences and taken back.

Like virtual memory: a sequence sees a contiguous run of token positions, its
block table maps each run of ``block_size`` positions to a physical block
anywhere in the cache. No sequence reserves memory it does not use yet.
"""

from collections import deque

from aios.engine.sequence import Sequence


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation needs more free blocks than there are."""


class Block:
    """One physical cache block: how many sequences use it (and, for prefix caching, what it holds)."""

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash = -1
        self.token_ids: list[int] = []

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
        raise NotImplementedError("Lesson 6: implement BlockManager.may_append in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")


def slot_mapping(block_table: list[int], positions: list[int], block_size: int) -> list[int]:
    """Flat cache slot of each token position: block_table[p // block_size] * block_size + p % block_size."""
    raise NotImplementedError("Lesson 6: implement slot_mapping in aios/engine/block_manager.py — see exercises/lesson06/README.md, 'What to implement'")
