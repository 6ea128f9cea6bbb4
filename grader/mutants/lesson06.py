"""Lesson 6 mutants: the block allocator, the slot mapping, storing and gathering paged K/V."""

from grader.mutants import Mutant

BM = "aios/engine/block_manager.py"
PA = "aios/layers/paged_attention.py"

MUTANTS = [
    Mutant(6, "release-forces-ref-count-zero", BM,
           find="        block.ref_count -= 1\n        if block.ref_count == 0:\n            self.used_block_ids.remove(block_id)",
           replace="        block.ref_count = 0\n        if block.ref_count == 0:\n            self.used_block_ids.remove(block_id)",
           bug="_release_block sets ref_count to 0 instead of dropping one reference: a shared block is freed "
               "while another sequence still uses it"),
    Mutant(6, "release-frees-whatever-the-count", BM,
           find="        block.ref_count -= 1\n        if block.ref_count == 0:\n            self.used_block_ids.remove(block_id)\n"
                "            self.free_block_ids.append(block_id)",
           replace="        block.ref_count -= 1\n        self.used_block_ids.remove(block_id)\n"
                   "        self.free_block_ids.append(block_id)",
           bug="_release_block decrements the count but returns the block to the free list even when references remain"),
    Mutant(6, "deallocate-keeps-num-cached-tokens", BM,
           find="        seq.block_table = []\n        seq.num_cached_tokens = 0\n",
           replace="        seq.block_table = []\n",
           bug="deallocate empties the block table but leaves num_cached_tokens: a re-admitted sequence would skip "
               "tokens whose K/V are gone"),
    Mutant(6, "take-newest-free-block", BM,
           find="        block_id = self.free_block_ids.popleft()",
           replace="        block_id = self.free_block_ids.pop()",
           bug="_take_free_block pops from the right of the deque: the block freed last is handed out first (LIFO, "
               "not the oldest free block)"),
    Mutant(6, "release-to-the-front", BM,
           find="            self.free_block_ids.append(block_id)\n        # END SOLUTION",
           replace="            self.free_block_ids.appendleft(block_id)\n        # END SOLUTION",
           bug="_release_block puts a freed block at the front of the free list, so it is reused before older free blocks"),
    Mutant(6, "can-allocate-needs-a-spare-block", BM,
           find="        return self.num_free_blocks >= seq.num_blocks",
           replace="        return self.num_free_blocks > seq.num_blocks",
           bug="can_allocate uses > instead of >=: a sequence that exactly fits the free blocks is refused"),
    Mutant(6, "allocate-floor-blocks", BM,
           find="        seq.block_table = [self._take_free_block() for _ in range(seq.num_blocks)]",
           replace="        seq.block_table = [self._take_free_block() for _ in range(len(seq) // self.block_size)]",
           bug="allocate counts blocks with floor division: the partial last block is never allocated"),
    Mutant(6, "allocate-takes-before-checking", BM,
           find="        if not self.can_allocate(seq):\n            raise OutOfBlocksError(f\"{seq} needs {seq.num_blocks} blocks, "
                "{self.num_free_blocks} are free\")\n        seq.block_table = [self._take_free_block() for _ in range(seq.num_blocks)]",
           replace="        for _ in range(seq.num_blocks):\n            if not self.free_block_ids:\n"
                   "                raise OutOfBlocksError(f\"{seq} needs {seq.num_blocks} blocks\")\n"
                   "            seq.block_table.append(self._take_free_block())",
           bug="allocate takes blocks one by one and raises when the pool runs dry, leaking the blocks it already took"),
    Mutant(6, "may-append-by-modulo", BM,
           find="        if len(seq.block_table) < seq.num_blocks:\n            if not self.free_block_ids:\n"
                "                raise OutOfBlocksError(f\"no free block to extend {seq}\")\n"
                "            seq.block_table.append(self._take_free_block())\n        # END SOLUTION",
           replace="        if len(seq) % self.block_size == 1:\n            if not self.free_block_ids:\n"
                   "                raise OutOfBlocksError(f\"no free block to extend {seq}\")\n"
                   "            seq.block_table.append(self._take_free_block())\n        # END SOLUTION",
           bug="may_append tests len(seq) % block_size == 1 (the README's picture) instead of comparing the table "
               "with num_blocks: with one-token blocks it never grows the table"),
    Mutant(6, "can-append-always-wants-a-block", BM,
           find="        return self.num_free_blocks >= int(needs_block)",
           replace="        return self.num_free_blocks > 0",
           bug="can_append asks for a free block on every step, even when the newest token fits in the last block"),
    Mutant(6, "slot-forgets-block-size", BM,
           find="    return [block_table[p // block_size] * block_size + p % block_size for p in positions]",
           replace="    return [block_table[p // block_size] + p % block_size for p in positions]",
           bug="slot_mapping adds the offset to the block id without multiplying it by block_size"),
    Mutant(6, "store-writes-padding", PA,
           find="    keep = slot_mapping >= 0\n    slots = slot_mapping[keep]",
           replace="    keep = torch.ones_like(slot_mapping, dtype=torch.bool)\n    slots = slot_mapping[keep]",
           bug="store_kvcache does not skip slot -1: padding tokens overwrite the last slot of the cache"),
    Mutant(6, "gather-floor-blocks", PA,
           find="    num_blocks = (context_len + k_cache.shape[1] - 1) // k_cache.shape[1]",
           replace="    num_blocks = max(1, context_len // k_cache.shape[1])",
           bug="gather_kv counts blocks with floor division: the tokens of a partial last block are not read"),
]
