"""Lesson 8 mutants: the continuous-batching scheduler (admission, preemption, finishing) and the engine loop."""

from grader.mutants import Mutant

SC = "aios/engine/scheduler.py"
EN = "aios/engine/llm_engine.py"

MUTANTS = [
    Mutant(8, "max-num-seqs-off-by-one", SC,
           find="        while self.waiting and len(self.running) < self.max_num_seqs:",
           replace="        while self.waiting and len(self.running) <= self.max_num_seqs:",
           bug="admission allows max_num_seqs + 1 running sequences (<= instead of <)"),
    Mutant(8, "seq-limit-counts-this-batch-only", SC,
           find="        while self.waiting and len(self.running) < self.max_num_seqs:",
           replace="        while self.waiting and len(scheduled) < self.max_num_seqs:",
           bug="admission counts the sequences admitted in this step, not those already running, against max_num_seqs"),
    Mutant(8, "token-budget-needs-spare-room", SC,
           find="            if num_tokens + len(seq) > self.max_num_batched_tokens or not self.block_manager.can_allocate(seq):",
           replace="            if num_tokens + len(seq) >= self.max_num_batched_tokens or not self.block_manager.can_allocate(seq):",
           bug="a prefill that exactly fills max_num_batched_tokens is refused (>= instead of >): a request as long "
               "as the budget never runs"),
    Mutant(8, "admission-overtakes", SC,
           find="            if num_tokens + len(seq) > self.max_num_batched_tokens or not self.block_manager.can_allocate(seq):\n"
                "                break\n"
                "            self.block_manager.allocate(seq)\n"
                "            num_tokens += len(seq) - seq.num_cached_tokens\n"
                "            seq.status = SequenceStatus.RUNNING\n"
                "            self.running.append(self.waiting.popleft())\n"
                "            scheduled.append(seq)",
           replace="            fits = [s for s in self.waiting if num_tokens + len(s) <= self.max_num_batched_tokens\n"
                   "                    and self.block_manager.can_allocate(s)]\n"
                   "            if not fits:\n"
                   "                break\n"
                   "            seq = fits[0]\n"
                   "            self.block_manager.allocate(seq)\n"
                   "            num_tokens += len(seq) - seq.num_cached_tokens\n"
                   "            seq.status = SequenceStatus.RUNNING\n"
                   "            self.waiting.remove(seq)\n"
                   "            self.running.append(seq)\n"
                   "            scheduled.append(seq)",
           bug="admission skips a request that does not fit and admits later, smaller ones: the big one can starve"),
    Mutant(8, "preempt-current-instead-of-newest", SC,
           find="            while not self.block_manager.can_append(seq):\n                if self.running:\n"
                "                    self.preempt(self.running.pop())\n                else:\n"
                "                    self.preempt(seq)\n                    break\n            else:\n"
                "                self.block_manager.may_append(seq)\n                scheduled.append(seq)",
           replace="            if self.block_manager.can_append(seq):\n                self.block_manager.may_append(seq)\n"
                   "                scheduled.append(seq)\n            else:\n                self.preempt(seq)",
           bug="out of blocks at decode time, the sequence being scheduled is preempted instead of the newest one "
               "(old requests are thrown out while newer ones keep their blocks)"),
    Mutant(8, "preempt-next-in-line", SC,
           find="                    self.preempt(self.running.pop())",
           replace="                    self.preempt(self.running.popleft())",
           bug="decode preempts the next sequence in line (the front of running) instead of the newest one (its back)"),
    Mutant(8, "preempt-keeps-blocks", SC,
           find="        seq.status = SequenceStatus.WAITING\n        self.block_manager.deallocate(seq)\n",
           replace="        seq.status = SequenceStatus.WAITING\n",
           bug="preempt puts the sequence back in the queue without freeing its KV blocks"),
    Mutant(8, "preempt-keeps-running-status", SC,
           find="        seq.status = SequenceStatus.WAITING\n        self.block_manager.deallocate(seq)\n",
           replace="        self.block_manager.deallocate(seq)\n",
           bug="preempt frees the blocks but leaves the sequence's status RUNNING while it waits"),
    Mutant(8, "preempt-to-the-back-of-the-queue", SC,
           find="        self.waiting.appendleft(seq)\n        self.num_preemptions += 1",
           replace="        self.waiting.append(seq)\n        self.num_preemptions += 1",
           bug="a preempted sequence goes to the back of the waiting queue, behind requests that arrived after it"),
    Mutant(8, "eos-ignores-ignore-eos", SC,
           find="            if not params.ignore_eos and token_id in self.eos_token_ids:",
           replace="            if token_id in self.eos_token_ids:",
           bug="postprocess stops on EOS even when the request asked for ignore_eos"),
    Mutant(8, "max-tokens-off-by-one", SC,
           find="            elif seq.num_completion_tokens >= params.max_tokens or len(seq) >= self.max_model_len:",
           replace="            elif seq.num_completion_tokens > params.max_tokens or len(seq) >= self.max_model_len:",
           bug="a request finishes one token after max_tokens (> instead of >=)"),
    Mutant(8, "max-model-len-ignored", SC,
           find="            elif seq.num_completion_tokens >= params.max_tokens or len(seq) >= self.max_model_len:",
           replace="            elif seq.num_completion_tokens >= params.max_tokens:",
           bug="postprocess never checks max_model_len: a sequence can outgrow the model's context"),
    Mutant(8, "finished-keeps-its-place", SC,
           find="            self.block_manager.deallocate(seq)\n            self.running.remove(seq)\n            finished.append(seq)",
           replace="            self.block_manager.deallocate(seq)\n            finished.append(seq)",
           bug="a finished sequence is deallocated but stays in the running queue"),
    Mutant(8, "finished-keeps-blocks", SC,
           find="            self.block_manager.deallocate(seq)\n            self.running.remove(seq)\n            finished.append(seq)",
           replace="            self.running.remove(seq)\n            finished.append(seq)",
           bug="a finished sequence leaves the running queue without giving its KV blocks back"),
    Mutant(8, "step-counts-decode-as-positive", EN,
           find="        num_tokens = sum(len(seq) - seq.num_cached_tokens for seq in seqs) if is_prefill else -len(seqs)",
           replace="        num_tokens = sum(len(seq) - seq.num_cached_tokens for seq in seqs) if is_prefill else len(seqs)",
           bug="step reports decode tokens as a positive count, so callers cannot tell prefill from decode"),
    Mutant(8, "generate-results-in-finish-order", EN,
           find="        return [results[seq_id] for seq_id in order]",
           replace="        return list(results.values())",
           bug="generate returns the results in the order the requests finished, not in prompt order"),
]
