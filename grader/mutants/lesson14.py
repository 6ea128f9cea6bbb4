"""Lesson 14 mutants: weight shards, the row-parallel all-reduce, the vocabulary-parallel embedding and LM head,
the gather to the driver and the driver/worker step protocol."""

from grader.mutants import Mutant

LINEAR = "aios/layers/linear.py"
EMBED_HEAD = "aios/layers/embed_head.py"
DISTRIBUTED = "aios/engine/distributed.py"
TP_RUNNER = "aios/engine/tp_runner.py"

MUTANTS = [
    Mutant(14, "shard-interleaved", LINEAR,
           find="    index[dim] = slice(tp_rank * size, (tp_rank + 1) * size)\n",
           replace="    index[dim] = slice(tp_rank, None, tp_size)\n",
           bug="shard_for_rank deals the rows out like cards (rank r takes r, r + tp, ...) instead of giving each "
               "rank one contiguous block: heads and features are scrambled across ranks"),
    Mutant(14, "shard-reads-everything", LINEAR,
           find="    return loaded[tuple(index)]\n",
           replace="    return read_all(loaded)[tuple(index)]\n",
           bug="shard_for_rank reads the whole tensor from the checkpoint and then slices it: every rank reads "
               "every rank's weights from disk"),
    Mutant(14, "shard-uneven-split-floors", LINEAR,
           find="    size = divide(shape[dim], tp_size)\n",
           replace="    size = shape[dim] // tp_size\n",
           bug="a length that does not divide by tp_size is floored silently: the last rows are dropped instead "
               "of the split being refused"),
    Mutant(14, "row-parallel-bias-on-every-rank", LINEAR,
           find="        partial = F.linear(x, self.weight)\n        total = all_reduce(partial)\n"
                "        return total if self.bias is None else total + self.bias\n",
           replace="        return all_reduce(F.linear(x, self.weight, self.bias))\n",
           bug="the row-parallel bias is added to every rank's partial sum, so the all-reduce counts it tp_size "
               "times"),
    Mutant(14, "row-parallel-all-reduce-twice", LINEAR,
           find="        total = all_reduce(partial)\n",
           replace="        total = all_reduce(all_reduce(partial))\n",
           bug="the partial sums are all-reduced twice: the second sum multiplies the result by tp_size"),
    Mutant(14, "row-parallel-no-all-reduce", LINEAR,
           find="        total = all_reduce(partial)\n",
           replace="        total = partial\n",
           bug="the row-parallel layer returns its partial product without the all-reduce"),
    Mutant(14, "embed-ids-not-shifted", EMBED_HEAD,
           find="    local_ids = input_ids - vocab_start\n",
           replace="    local_ids = input_ids\n",
           bug="the ids are not shifted by vocab_start: rank r > 0 looks up its rows with global ids, so its "
               "tokens get rank 0's rows or none"),
    Mutant(14, "embed-out-of-range-not-zeroed", EMBED_HEAD,
           find="    return rows.masked_fill(outside.unsqueeze(-1), 0)\n",
           replace="    return rows\n",
           bug="ids outside the rank's block are looked up as id 0 but their rows are not zeroed: every other "
               "rank adds its row 0 to those tokens"),
    Mutant(14, "embed-upper-bound-off-by-one", EMBED_HEAD,
           find="    outside = (local_ids < 0) | (local_ids >= weight_shard.shape[0])\n",
           replace="    outside = (local_ids < 0) | (local_ids > weight_shard.shape[0])\n",
           bug="the first id of the next rank's block counts as inside this rank's block (> instead of >=)"),
    Mutant(14, "embed-no-all-reduce", EMBED_HEAD,
           find="        return all_reduce(embed_vocab_shard(input_ids, self.weight, self.vocab_start))\n",
           replace="        return embed_vocab_shard(input_ids, self.weight, self.vocab_start)\n",
           bug="the vocabulary-parallel embedding returns this rank's part without summing the ranks: tokens of "
               "the other ranks' blocks embed to zeros"),
    Mutant(14, "lm-head-all-reduce", EMBED_HEAD,
           find="        return gather_to_driver(logits, dim=-1)\n",
           replace="        return all_reduce(logits)\n",
           bug="the LM head sums the ranks' logits instead of putting their vocabulary blocks side by side"),
    Mutant(14, "gather-reverse-rank-order", DISTRIBUTED,
           find="    dist.gather(tensor, parts, dst=0)\n    return torch.cat(parts, dim=dim)\n",
           replace="    dist.gather(tensor, parts, dst=0)\n    return torch.cat(parts[::-1], dim=dim)\n",
           bug="gather_to_driver concatenates the ranks' tensors last rank first: the vocabulary halves swap"),
    Mutant(14, "gather-along-dim-zero", DISTRIBUTED,
           find="    dist.gather(tensor, parts, dst=0)\n    return torch.cat(parts, dim=dim)\n",
           replace="    dist.gather(tensor, parts, dst=0)\n    return torch.cat(parts)\n",
           bug="gather_to_driver always concatenates along the first dimension, ignoring dim"),
    Mutant(14, "gather-non-driver-returns-its-part", DISTRIBUTED,
           find="        dist.gather(tensor, dst=0)\n        return None\n",
           replace="        dist.gather(tensor, dst=0)\n        return tensor\n",
           bug="a worker's gather_to_driver returns its own part instead of None: its LM head hands out logits "
               "of a slice of the vocabulary as if they were whole"),
    Mutant(14, "worker-serves-one-command", TP_RUNNER,
           find="    while True:\n        command, args = conn.recv()\n        if command == \"exit\":\n            return\n"
                "        commands[command](*args)\n",
           replace="    command, args = conn.recv()\n    if command != \"exit\":\n        commands[command](*args)\n",
           bug="serve_driver runs one command and returns instead of looping until \"exit\": the worker leaves "
               "after the first step"),
]
