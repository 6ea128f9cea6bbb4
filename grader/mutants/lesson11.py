"""Lesson 11 mutants: the CUDA-graph batch-size ladder, padding into static buffers, replay and fallback.

Only what the CPU can check: the capture loop itself needs a GPU, so its bugs are not catalogued here.
"""

from grader.mutants import Mutant

RUNNER = "aios/engine/model_runner.py"

MUTANTS = [
    Mutant(11, "bucket-picks-smaller", RUNNER,
           find="    return next((size for size in sizes if size >= num_seqs), None)\n",
           replace="    return next((size for size in reversed(sizes) if size <= num_seqs), None)\n",
           bug="graph_batch_size_for picks the largest captured size that is <= the batch (a graph too small "
               "for it) instead of the smallest that holds it"),
    Mutant(11, "bucket-strictly-larger", RUNNER,
           find="    return next((size for size in sizes if size >= num_seqs), None)\n",
           replace="    return next((size for size in sizes if size > num_seqs), None)\n",
           bug="graph_batch_size_for wants a size strictly larger than the batch: a batch of exactly a captured "
               "size pads to the next one, and a batch of max_num_seqs falls back to eager"),
    Mutant(11, "ladder-forgets-max-num-seqs", RUNNER,
           find="    sizes.update(range(16, max_num_seqs, 16))\n    sizes.add(max_num_seqs)\n",
           replace="    sizes.update(range(16, max_num_seqs + 1, 16))\n",
           bug="the ladder stops at the last multiple of 16: max_num_seqs itself is captured only when it is a "
               "multiple of 16 (or 1, 2, 4, 8), so the largest batches run eagerly"),
    Mutant(11, "ladder-small-sizes-unfiltered", RUNNER,
           find="    sizes = {size for size in (1, 2, 4, 8) if size < max_num_seqs}\n",
           replace="    sizes = {1, 2, 4, 8}\n",
           bug="1, 2, 4 and 8 are always captured, even above max_num_seqs (graphs larger than any batch, "
               "buffers sized past the scheduler's limit)"),
    Mutant(11, "ladder-starts-at-zero", RUNNER,
           find="    sizes.update(range(16, max_num_seqs, 16))\n",
           replace="    sizes.update(range(0, max_num_seqs, 16))\n",
           bug="the multiples of 16 start at 0: a graph of batch size 0 is captured"),
    Mutant(11, "ladder-powers-of-two", RUNNER,
           find="    sizes.update(range(16, max_num_seqs, 16))\n",
           replace="    sizes.update(1 << p for p in range(4, max_num_seqs.bit_length()))\n",
           bug="the ladder keeps doubling past 8 (16, 32, 64, 128 ...): a batch of 129 pads to 256, wasting "
               "up to half the graph"),
    Mutant(11, "padding-slot-zero", RUNNER,
           find="    inputs.slot_mapping[num_seqs:batch_size].fill_(-1)\n",
           replace="    inputs.slot_mapping[num_seqs:batch_size].zero_()\n",
           bug="padding rows get slot 0 instead of -1: every replay writes garbage K/V into slot 0 of block 0, "
               "which belongs to a real sequence"),
    Mutant(11, "padding-context-lens-kept", RUNNER,
           find="    inputs.context_lens[num_seqs:batch_size].zero_()\n",
           replace="",
           bug="padding rows keep the context length of the sequence that sat there last step, so attention "
               "reads stale blocks for them"),
    Mutant(11, "padding-only-on-first-fill", RUNNER,
           find="    inputs.input_ids[num_seqs:batch_size].zero_()\n"
                "    inputs.positions[num_seqs:batch_size].zero_()\n"
                "    inputs.slot_mapping[num_seqs:batch_size].fill_(-1)\n"
                "    inputs.context_lens[num_seqs:batch_size].zero_()\n",
           replace="",
           bug="the padding rows are never reset, trusting the buffers' initial -1/0 fill: after a larger batch "
               "they still hold that batch's sequences"),
    Mutant(11, "fill-positions-from-context-lens", RUNNER,
           find="    inputs.positions[:num_seqs].copy_(positions)\n",
           replace="    inputs.positions[:num_seqs].copy_(context.context_lens)\n",
           bug="the positions are copied from the context lengths (one past the newest token's position)"),
    Mutant(11, "replay-without-fill", RUNNER,
           find="        fill_graph_inputs(self.graph_inputs, input_ids, positions, context, size)\n"
                "        self.graphs[size].replay()\n",
           replace="        self.graphs[size].replay()\n",
           bug="run_decode_graph replays without copying the step's inputs into the static buffers: the graph "
               "recomputes whatever the buffers held"),
    Mutant(11, "replay-returns-padding-rows", RUNNER,
           find="        return self.graph_inputs.hidden_states[:num_seqs]\n",
           replace="        return self.graph_inputs.hidden_states[:size]\n",
           bug="run_decode_graph returns the graph's whole output, padding rows included, so the step samples "
               "more tokens than it has sequences"),
    Mutant(11, "fallback-below-largest-graph", RUNNER,
           find="        if size is None:\n            return None\n",
           replace="        if size is None or num_seqs >= self.graph_sizes[-1]:\n            return None\n",
           bug="the eager fallback starts one batch size too early: a batch that exactly fills the largest "
               "graph runs eagerly, so that graph is never replayed"),
]
