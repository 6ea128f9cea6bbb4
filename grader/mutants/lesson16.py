"""Lesson 16 mutants: chunked prefill (the chunk, the token-budget scheduler, progress, sampling, prefix caching, the step)."""

from grader.mutants import Mutant

SQ = "aios/engine/sequence.py"
SC = "aios/engine/scheduler.py"
BM = "aios/engine/block_manager.py"
EN = "aios/engine/llm_engine.py"

DECODE_LOOP = (
    "        for seq in [s for s in self.running if len(s) - s.num_computed_tokens == 1]:\n"
    "            if seq.status is not SequenceStatus.RUNNING:\n"
    "                continue  # preempted below to make room for an older one\n"
    "            while not self.block_manager.can_append(seq):\n"
    "                victim = self.running.pop()\n"
    "                self.preempt(victim)\n"
    "                if victim is seq:\n"
    "                    break\n"
    "            else:\n"
    "                self.block_manager.may_append(seq)\n"
    "                chunks.append(Chunk(seq, 1))\n"
    "                budget -= 1\n"
)
PREFILL_LOOP = (
    "        # Hint: then the prompts already started, then new ones: a prefill chunk takes what the budget has left.\n"
    "        for seq in self.running:\n"
    "            left = len(seq) - seq.num_computed_tokens\n"
    "            if left > 1 and budget > 0:\n"
    "                chunks.append(self._prefill_chunk(seq, min(left, budget)))\n"
    "                budget -= chunks[-1].num_tokens\n"
)

MUTANTS = [
    Mutant(16, "chunk-starts-at-cached-prefix", SQ,
           find="        self.start = seq.num_computed_tokens\n",
           replace="        self.start = seq.num_cached_tokens\n",
           bug="a chunk starts at the prefix-cache hit (num_cached_tokens) instead of the computed tokens: every "
               "chunk recomputes the same tokens and positions"),
    Mutant(16, "one-token-chunk-is-a-decode", SQ,
           find="        return self.num_tokens == 1 and self.is_last\n",
           replace="        return self.num_tokens == 1\n",
           bug="any one-token chunk counts as a decode, also one in the middle of a prompt, which then runs at "
               "the wrong position through prepare_decode"),
    Mutant(16, "chunk-may-exceed-budget-by-one", SC,
           find="                chunks.append(self._prefill_chunk(seq, min(left, budget)))\n",
           replace="                chunks.append(self._prefill_chunk(seq, min(left, budget + 1)))\n",
           bug="off by one: a continuing prompt's chunk may take one token more than the budget has left"),
    Mutant(16, "admission-needs-two-tokens", SC,
           find="        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:\n",
           replace="        while self.waiting and budget > 1 and len(self.running) < self.max_num_seqs:\n",
           bug="off by one: a waiting request is admitted only when at least two tokens of budget are left, so a "
               "budget one token above the decodes never starts a prompt"),
    Mutant(16, "decodes-spend-no-budget", SC,
           find="                chunks.append(Chunk(seq, 1))\n                budget -= 1\n",
           replace="                chunks.append(Chunk(seq, 1))\n",
           bug="decode tokens are not taken from the budget, so decodes plus prefill chunks exceed "
               "max_num_batched_tokens"),
    Mutant(16, "budget-counted-in-sequences", SC,
           find="            chunks.append(self._prefill_chunk(seq, min(len(seq) - seq.num_computed_tokens, budget)))\n"
                "            budget -= chunks[-1].num_tokens\n",
           replace="            chunks.append(self._prefill_chunk(seq, min(len(seq) - seq.num_computed_tokens, budget)))\n"
                   "            budget -= 1\n",
           bug="an admitted request's first chunk costs one unit of budget (a sequence) instead of its tokens"),
    Mutant(16, "prefills-before-decodes", SC,
           find=DECODE_LOOP + PREFILL_LOOP,
           replace=PREFILL_LOOP + DECODE_LOOP,
           bug="prompts being prefilled get their chunks before the running sequences decode: a long prompt takes "
               "the whole budget and the decodes overrun it"),
    Mutant(16, "no-sequence-limit-on-admission", SC,
           find="        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:\n",
           replace="        while self.waiting and budget > 0:\n",
           bug="admission ignores max_num_seqs: with budget left, more sequences run than allowed"),
    Mutant(16, "prefix-hit-recomputed", SC,
           find="            seq.num_computed_tokens = seq.num_cached_tokens\n",
           replace="            seq.num_computed_tokens = 0\n",
           bug="an admitted sequence starts computing at token 0: the prefix-cache hit is not subtracted from "
               "its chunks"),
    Mutant(16, "progress-survives-preemption", SC,
           find="            seq.num_computed_tokens = seq.num_cached_tokens\n",
           replace="            seq.num_computed_tokens = max(seq.num_computed_tokens, seq.num_cached_tokens)\n",
           bug="a preempted sequence keeps its old progress when re-admitted, although its blocks (and their K/V) "
               "were freed"),
    Mutant(16, "decode-without-a-slot", SC,
           find="                self.block_manager.may_append(seq)\n                chunks.append(Chunk(seq, 1))\n",
           replace="                chunks.append(Chunk(seq, 1))\n",
           bug="a decode is scheduled without may_append: a token that starts a new block has no slot"),
    Mutant(16, "progress-not-recorded", SC,
           find="            chunk.seq.num_computed_tokens = chunk.end\n",
           replace="            pass\n",
           bug="postprocess_chunks never advances num_computed_tokens: the same first chunk is computed again and "
               "again"),
    Mutant(16, "intermediate-chunk-samples", SC,
           find="            if chunk.is_last:\n                done.append(chunk.seq)\n                new_tokens.append(token_id)\n",
           replace="            done.append(chunk.seq)\n            new_tokens.append(token_id)\n",
           bug="every chunk appends its sampled token, also a chunk that stopped in the middle of the prompt"),
    Mutant(16, "blocks-findable-before-computed", BM,
           find="        self.allocate(seq)\n        self.forget_computed_blocks(seq)\n",
           replace="        self.allocate(seq)\n",
           bug="allocate_chunked keeps lesson 13's registration: a prompt's blocks are findable before its later "
               "chunks wrote them, and a request with the same prefix attends to garbage"),
    Mutant(16, "partial-block-registered", BM,
           find="        for index in range(num_tokens // self.block_size):\n",
           replace="        for index in range(-(-num_tokens // self.block_size)):\n",
           bug="cache_full_blocks also registers the block the chunk ends in, although its tail is not computed yet"),
    Mutant(16, "chunks-never-cached", BM,
           find="            self._register_block(block.block_id, block_hash, token_ids, parent.content_id if parent else NO_CONTENT)\n",
           replace="            pass\n",
           bug="cache_full_blocks registers nothing: prompts computed in chunks never feed the prefix cache"),
    Mutant(16, "any-decode-runs-as-decode-step", EN,
           find="        if all(chunk.is_decode for chunk in chunks):\n",
           replace="        if any(chunk.is_decode for chunk in chunks):\n",
           bug="a step with at least one decode runs as a decode step, so its prefill chunks go through "
               "prepare_decode (one token each, at the wrong position)"),
]
