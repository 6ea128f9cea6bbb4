"""Lesson 13 mutants: xxhash block-hash chains, shared blocks, reference counts, freed blocks that stay cached."""

from grader.mutants import Mutant

MANAGER = "aios/engine/block_manager.py"

MUTANTS = [
    Mutant(13, "hash-chain-omits-parent", MANAGER,
           find="    if prev_hash != NO_HASH:\n        hasher.update(prev_hash.to_bytes(8, \"little\"))\n",
           replace="",
           bug="compute_block_hash hashes only the block's own tokens: equal blocks after different prefixes "
               "get the same name"),
    Mutant(13, "hash-registers-partial-blocks", MANAGER,
           find="            block_hash = compute_block_hash(token_ids, prev_hash) if full else NO_HASH\n"
                "            leaves_a_token = (i + 1) * self.block_size < len(seq)\n"
                "            block_id = None\n"
                "            if full and leaves_a_token and not cache_miss:\n"
                "                block_id = self._lookup_cached_block(block_hash, token_ids, parent_content_id)\n"
                "            if block_id is None:\n"
                "                cache_miss = True\n"
                "                block_id = self._take_free_block()\n"
                "                self._uncache_block(block_id)\n"
                "                if full:\n"
                "                    self._register_block(block_id, block_hash, token_ids, parent_content_id)\n",
           replace="            block_hash = compute_block_hash(token_ids, prev_hash)\n"
                   "            leaves_a_token = (i + 1) * self.block_size < len(seq)\n"
                   "            block_id = None\n"
                   "            if full and leaves_a_token and not cache_miss:\n"
                   "                block_id = self._lookup_cached_block(block_hash, token_ids, parent_content_id)\n"
                   "            if block_id is None:\n"
                   "                cache_miss = True\n"
                   "                block_id = self._take_free_block()\n"
                   "                self._uncache_block(block_id)\n"
                   "                self._register_block(block_id, block_hash, token_ids, parent_content_id)\n",
           bug="the partial last block is hashed too, and then registered under the hash of the tokens it has "
               "so far, although decode keeps writing into it"),
    Mutant(13, "lookup-trusts-the-hash", MANAGER,
           find="        if block.token_ids != token_ids or block.parent_content_id != parent_content_id:\n"
                "            return None\n",
           replace="",
           bug="a hash hit is used without checking the block's tokens and parent: a collision shares "
               "somebody else's K/V"),
    Mutant(13, "lookup-ignores-parent", MANAGER,
           find="        if block.token_ids != token_ids or block.parent_content_id != parent_content_id:\n",
           replace="        if block.token_ids != token_ids:\n",
           bug="a hash hit is checked against the block's tokens only, not its parent: with a collision, equal "
               "tokens at another position (or after another prefix) are shared"),
    Mutant(13, "content-id-is-block-id", MANAGER,
           find="        block.content_id = next(self.content_ids)\n",
           replace="        block.content_id = block_id\n",
           bug="the block id is used as its content id: a block re-used for other content keeps the same id, "
               "so the parent check accepts a child of its old content"),
    Mutant(13, "hit-does-not-add-a-reference", MANAGER,
           find="            self.used_block_ids.add(block_id)\n        block.ref_count += 1\n",
           replace="            self.used_block_ids.add(block_id)\n        block.ref_count = 1\n",
           bug="a cache hit sets the reference count to 1 instead of adding one: a block shared by two "
               "sequences is freed when the first one finishes"),
    Mutant(13, "hit-leaves-block-on-free-list", MANAGER,
           find="        if block.ref_count == 0:\n            self.free_block_ids.remove(block_id)\n"
                "            self.used_block_ids.add(block_id)\n",
           replace="        if block.ref_count == 0:\n            self.used_block_ids.add(block_id)\n",
           bug="re-using a freed cached block does not take it off the free list: it can be handed out again "
               "for other content while a sequence uses it"),
    Mutant(13, "last-token-served-from-cache", MANAGER,
           find="            leaves_a_token = (i + 1) * self.block_size < len(seq)\n",
           replace="            leaves_a_token = (i + 1) * self.block_size <= len(seq)\n",
           bug="the block holding the last prompt token can be a hit: a fully cached prompt has nothing left "
               "to prefill, so there are no logits for its first output token"),
    Mutant(13, "num-cached-tokens-not-set", MANAGER,
           find="        seq.block_table = block_table\n        seq.num_cached_tokens = num_cached_tokens\n",
           replace="        seq.block_table = block_table\n",
           bug="the cached prefix is shared but seq.num_cached_tokens stays 0, so prefill recomputes (and "
               "rewrites) every shared token"),
    Mutant(13, "miss-keeps-old-hash-entry", MANAGER,
           find="                block_id = self._take_free_block()\n                self._uncache_block(block_id)\n"
                "                if full:\n",
           replace="                block_id = self._take_free_block()\n                if full:\n",
           bug="a block taken from the free list for new content is not uncached: its old prefix stays in the "
               "hash map (and its old content id), although its K/V are being overwritten"),
    Mutant(13, "uncache-removes-newer-copy", MANAGER,
           find="        if block.hash != NO_HASH and self.hash_to_block_id.get(block.hash) == block_id:\n"
                "            del self.hash_to_block_id[block.hash]\n",
           replace="        if block.hash != NO_HASH:\n            self.hash_to_block_id.pop(block.hash, None)\n",
           bug="uncaching a block deletes its hash from the map even when the map points to a newer copy of "
               "that block: the newer copy can no longer be found"),
    Mutant(13, "uncache-keeps-hash-field", MANAGER,
           find="            del self.hash_to_block_id[block.hash]\n        block.hash = NO_HASH\n",
           replace="            del self.hash_to_block_id[block.hash]\n",
           bug="an uncached block keeps its old hash field: a later uncache of it may delete the map entry of "
               "another block registered under that hash since"),
    Mutant(13, "decode-forgets-to-uncache", MANAGER,
           find="            block_id = self._take_free_block()\n            self._uncache_block(block_id)\n"
                "            seq.block_table.append(block_id)\n",
           replace="            block_id = self._take_free_block()\n            seq.block_table.append(block_id)\n",
           bug="may_append takes a fresh block without forgetting its old cached prefix, which decode then "
               "overwrites while the hash map still offers it"),
    Mutant(13, "decode-hash-not-chained", MANAGER,
           find="                prev_hash = parent.hash if parent else NO_HASH\n",
           replace="                prev_hash = NO_HASH\n",
           bug="a block completed by decode is hashed without its parent's hash, so a later request with the "
               "same prefix never finds it"),
    Mutant(13, "decode-registers-a-step-late", MANAGER,
           find="        if len(seq) % self.block_size == 0:\n            index = len(seq) // self.block_size - 1\n",
           replace="        if len(seq) > self.block_size and len(seq) % self.block_size == 1:\n"
                   "            index = len(seq) // self.block_size - 1\n",
           bug="a block completed by decode is registered only when the next token starts a new block, one "
               "step late (and never if the sequence finishes first)"),
]
