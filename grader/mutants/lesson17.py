"""Lesson 17 mutants: overlap scheduling (placeholders, the length rule, the packed step, the fix-ups, the step's
order, resolving one step late)."""

from grader.mutants import Mutant

AL = "aios/engine/async_loop.py"

MUTANTS = [
    Mutant(17, "placeholder-for-aborted-sequence", AL,
           find="        if seq.is_finished:\n            continue\n        seq.append_token(PLACEHOLDER)\n",
           replace="        seq.append_token(PLACEHOLDER)\n",
           bug="every sequence of the step in flight gets a placeholder, also one aborted meanwhile: a finished "
               "sequence's tokens change after it finished"),
    Mutant(17, "length-rule-strict", AL,
           find="    return seq.num_completion_tokens >= seq.sampling_params.max_tokens or len(seq) >= max_model_len\n",
           replace="    return seq.num_completion_tokens > seq.sampling_params.max_tokens or len(seq) >= max_model_len\n",
           bug="off by one: a sequence finishes by max_tokens one token late (and does not sit out the step "
               "its last token is computed in)"),
    Mutant(17, "length-rule-forgets-max-model-len", AL,
           find="    return seq.num_completion_tokens >= seq.sampling_params.max_tokens or len(seq) >= max_model_len\n",
           replace="    return seq.num_completion_tokens >= seq.sampling_params.max_tokens\n",
           bug="the length rule checks max_tokens only: a sequence runs past max_model_len"),
    Mutant(17, "decode-row-starts-at-cached-prefix", AL,
           find="        start = item.num_cached_tokens if is_prefill else end - 1\n",
           replace="        start = item.num_cached_tokens\n",
           bug="a decode row is packed like a prefill from num_cached_tokens: it recomputes every token "
               "instead of its newest one"),
    Mutant(17, "fix-up-without-row-offset", AL,
           find="            fields[\"fix_dst\"].append(offset + waiting.index - start)\n",
           replace="            fields[\"fix_dst\"].append(waiting.index - start)\n",
           bug="the fix-up's flat index forgets the row's offset in the batch: step t's token lands in the "
               "first rows' input ids, the placeholder stays"),
    Mutant(17, "fix-up-from-wrong-row", AL,
           find="            fields[\"fix_src\"].append(waiting.row)\n",
           replace="            fields[\"fix_src\"].append(len(fields[\"fix_src\"]))\n",
           bug="the fix-up reads step t's tokens in this step's row order, not from the row that sampled the "
               "sequence's token"),
    Mutant(17, "context-length-without-newest-token", AL,
           find="        fields[\"context_lens\"].append(end)\n",
           replace="        fields[\"context_lens\"].append(end - 1)\n",
           bug="off by one: the context length leaves out the token being computed, so attention never sees "
               "the newest key"),
    Mutant(17, "resolve-before-launch", AL,
           find="        num_tokens = self.launch_next(previous)\n        finished = self.resolve(previous)\n",
           replace="        finished = self.resolve(previous)\n        num_tokens = self.launch_next(previous)\n",
           bug="the step waits for step t's tokens before it launches step t+1: the same tokens, and no overlap "
               "at all"),
    Mutant(17, "no-sit-out", AL,
           find="        self.sit_out_length_finishers()\n",
           replace="",
           bug="sequences whose token in flight ends them by length are scheduled once more: a wasted decode row "
               "(and KV slot) per request"),
    Mutant(17, "eos-despite-ignore-eos", AL,
           find="        if not seq.sampling_params.ignore_eos and token_id in scheduler.eos_token_ids:\n",
           replace="        if token_id in scheduler.eos_token_ids:\n",
           bug="resolve stops at EOS even for requests with ignore_eos"),
    Mutant(17, "finished-left-in-waiting", AL,
           find="        for queue in (scheduler.running, scheduler.waiting):\n",
           replace="        for queue in (scheduler.running,):\n",
           bug="a sequence that finishes while preempted (its token was in flight) stays in the waiting queue and "
               "is admitted again"),
    Mutant(17, "placeholder-index-after-append", AL,
           find="        pending[seq.seq_id] = Pending(seq, len(seq) - 1, row)\n",
           replace="        pending[seq.seq_id] = Pending(seq, len(seq), row)\n",
           bug="off by one: the placeholder's recorded index is one past it"),
]
