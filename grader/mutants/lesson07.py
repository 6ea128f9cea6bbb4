"""Lesson 7 mutants: packing a ragged batch (cu_seqlens, positions, slots) and batched paged attention."""

from grader.mutants import Mutant

MR = "aios/engine/model_runner.py"
PA = "aios/layers/paged_attention.py"

PREFILL_LOOP = """\
        input_ids, positions, slots, cu_seqlens_q, context_lens = [], [], [], [0], []
        for seq in seqs:
            new_positions = list(range(seq.num_cached_tokens, len(seq)))
            input_ids.extend(seq.token_ids[seq.num_cached_tokens :])
            positions.extend(new_positions)
            slots.extend(slot_mapping(seq.block_table, new_positions, self.block_size))
            cu_seqlens_q.append(cu_seqlens_q[-1] + len(new_positions))
"""

MUTANTS = [
    Mutant(7, "cu-seqlens-without-leading-zero", MR,
           find=PREFILL_LOOP,
           replace=PREFILL_LOOP.replace("[], [], [], [0], []", "[], [], [], [], []").replace(
               "cu_seqlens_q.append(cu_seqlens_q[-1] + len(new_positions))", "cu_seqlens_q.append(len(input_ids))"),
           bug="prepare_prefill's cu_seqlens_q lists where each sequence ends, without the leading 0"),
    Mutant(7, "cu-seqlens-counts-whole-sequence", MR,
           find="            cu_seqlens_q.append(cu_seqlens_q[-1] + len(new_positions))",
           replace="            cu_seqlens_q.append(cu_seqlens_q[-1] + len(seq))",
           bug="cu_seqlens_q grows by the sequence's length instead of by the tokens it contributed "
               "(wrong as soon as a prefix is cached)"),
    Mutant(7, "positions-run-on-across-sequences", MR,
           find="            positions.extend(new_positions)",
           replace="            positions.extend(range(len(positions), len(positions) + len(new_positions)))",
           bug="positions count through the flat batch instead of restarting at each sequence's first new token"),
    Mutant(7, "prefill-ignores-cached-prefix", MR,
           find="            new_positions = list(range(seq.num_cached_tokens, len(seq)))\n"
                "            input_ids.extend(seq.token_ids[seq.num_cached_tokens :])",
           replace="            new_positions = list(range(len(seq)))\n            input_ids.extend(seq.token_ids)",
           bug="prepare_prefill feeds every token of a sequence, ignoring num_cached_tokens"),
    Mutant(7, "prefill-context-len-of-new-tokens", MR,
           find="            context_lens.append(len(seq))\n        context = Context(\n"
                "            kv_cache=self.kv_cache,\n            positions=self._tensor(positions),\n"
                "            is_prefill=True,",
           replace="            context_lens.append(len(new_positions))\n        context = Context(\n"
                   "            kv_cache=self.kv_cache,\n            positions=self._tensor(positions),\n"
                   "            is_prefill=True,",
           bug="a prefill's context length is the number of new tokens, not the whole sequence: a cached "
               "prefix is not attended to"),
    Mutant(7, "prefill-max-seqlen-q-of-whole-sequences", MR,
           find="            max_seqlen_q=max(b - a for a, b in zip(cu_seqlens_q, cu_seqlens_q[1:])),",
           replace="            max_seqlen_q=max(len(seq) for seq in seqs),",
           bug="max_seqlen_q is the longest sequence, not the most new tokens a sequence brings"),
    Mutant(7, "decode-position-is-length", MR,
           find="        positions = [len(seq) - 1 for seq in seqs]",
           replace="        positions = [len(seq) for seq in seqs]",
           bug="prepare_decode puts the newest token at position len(seq) instead of len(seq) - 1"),
    Mutant(7, "decode-context-excludes-newest-token", MR,
           find="        context_lens = [len(seq) for seq in seqs]\n        context = Context(\n"
                "            kv_cache=self.kv_cache,\n            positions=self._tensor(positions),\n"
                "            is_prefill=False,",
           replace="        context_lens = [len(seq) - 1 for seq in seqs]\n        context = Context(\n"
                   "            kv_cache=self.kv_cache,\n            positions=self._tensor(positions),\n"
                   "            is_prefill=False,",
           bug="a decode step's context length leaves out the newest token, whose K/V this step stores and must see"),
    Mutant(7, "attention-over-longest-context", PA,
           find="        k, v = gather_kv(k_cache, v_cache, context.block_tables[i], context_len)",
           replace="        k, v = gather_kv(k_cache, v_cache, context.block_tables[i], context.max_seqlen_k)",
           bug="paged_attention gathers max_seqlen_k keys for every sequence: shorter ones attend to padding blocks"),
    Mutant(7, "attention-one-causal-mask-over-the-batch", PA,
           find="    for i, context_len in enumerate(lengths):\n        start, end = starts[i], starts[i + 1]\n"
                "        k, v = gather_kv(k_cache, v_cache, context.block_tables[i], context_len)\n"
                "        out[start:end] = causal_attention(q[start:end], k, v, scale)\n    return out",
           replace="    keys, values = zip(*(gather_kv(k_cache, v_cache, context.block_tables[i], n) for i, n in enumerate(lengths)))\n"
                   "    return causal_attention(q, torch.cat(keys), torch.cat(values), scale)",
           bug="paged_attention runs one causal attention over the whole packed batch: a sequence's queries see the "
               "keys of the sequences packed before it"),
    Mutant(7, "attention-queries-at-the-start", PA,
           find="        out[start:end] = causal_attention(q[start:end], k, v, scale)",
           replace="        out[start:end] = causal_attention(q[start:end], k[: end - start], v[: end - start], scale)",
           bug="paged_attention treats a sequence's queries as its first positions and attends only to that many "
               "keys (right for a fresh prefill, wrong for decode and cached prefixes)"),
]
