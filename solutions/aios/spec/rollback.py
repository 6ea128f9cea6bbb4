"""KV slots for proposed tokens: reserved before verification, given back after it (lesson 19).

A sequence of L tokens (K/V computed for the first L - 1; its newest token is computed by
this step) verifies k proposed tokens at positions L .. L + k - 1, so its block table must
cover L + k tokens during the step. Afterwards only n + 1 tokens were kept (n accepted, one
from the target): the blocks past ``ceil(len(seq) / block_size)`` hold nothing but rejected
K/V and go back to the free list.

    block_size 4, L = 6, k = 5, n = 1:
    before    [a b c d][e f . .]                       L = 6, newest f (slot 5)
    reserve   [a b c d][e f 1 2][3 4 5 .]              slots for the 5 proposals (one fresh block)
    verify    target writes K/V of f 1 2 3 4 5; keeps 1, adds x
    rollback  [a b c d][e f 1 x]                       len 8: 2 blocks; the third is released
              slots 7 (x) is written by the next step; slot 7's old K/V (of proposal 2) is never read

Prefix caching: a block becomes findable by content only when it is full of *final* tokens
whose K/V are computed (``BlockManager.cache_full_blocks``): never one holding proposals.
The reserved blocks are taken fresh (``_take_free_block``) and their old content forgotten
(``_uncache_block``), like any block a decode step starts.
"""

from __future__ import annotations

from aios.engine.block_manager import BlockManager
from aios.engine.sequence import Sequence


def reserve_speculative_slots(block_manager: BlockManager, seq: Sequence, num_tokens: int) -> int:
    """Extend ``seq``'s block table so that ``num_tokens`` more tokens after its ``len(seq)`` fit.

    Precondition: the table covers ``len(seq)`` tokens (the scheduler made room for the newest).
    Takes as many fresh blocks as needed and free, each with its cached content forgotten.
    Returns how many proposed tokens fit now: ``num_tokens``, or fewer when blocks ran short
    (0 .. num_tokens; never an error: speculation just shrinks).
    """
    # BEGIN SOLUTION lesson19
    # Hint: count slots in whole blocks: the table covers len(block_table) * block_size tokens.
    size = block_manager.block_size
    needed = -(-(len(seq) + num_tokens) // size) - len(seq.block_table)
    for _ in range(min(needed, block_manager.num_free_blocks)):
        block_id = block_manager._take_free_block()
        block_manager._uncache_block(block_id)
        seq.block_table.append(block_id)
    return max(0, min(num_tokens, len(seq.block_table) * size - len(seq)))
    # END SOLUTION


def rollback_speculative_slots(block_manager: BlockManager, seq: Sequence, num_final_tokens: int) -> None:
    """After verification, with the kept tokens appended to ``seq``: give back the blocks it no longer needs.

    Keeps ``ceil(len(seq) / block_size)`` blocks (the newest token needs no slot yet, but its block
    stays, as after a decode step), releases the rest newest first, then makes the blocks full
    within the first ``num_final_tokens`` tokens findable by content (``cache_full_blocks``;
    ``num_final_tokens`` counts the leading tokens that are final and whose K/V are written).
    """
    # BEGIN SOLUTION lesson19
    # Hint: release from the end of the table; a released block must not be findable by content.
    keep = -(-len(seq) // block_manager.block_size)
    while len(seq.block_table) > keep:
        block_manager._release_block(seq.block_table.pop())
    # Hint: only tokens the target kept are final: register up to num_final_tokens, never len(seq).
    block_manager.cache_full_blocks(seq, num_final_tokens)
    # END SOLUTION
