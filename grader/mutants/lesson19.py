"""Lesson 19 mutants: speculative decoding (n-gram lookup, verification, KV reserve/rollback, budget, stops, draft)."""

from grader.mutants import Mutant

NG = "aios/spec/ngram.py"
RJ = "aios/spec/rejection.py"
RB = "aios/spec/rollback.py"
DC = "aios/spec/decoding.py"
DR = "aios/spec/draft.py"

MUTANTS = [
    Mutant(19, "ngram-first-occurrence", NG,
           find="        for i in range(length - n - 1, -1, -1):\n",
           replace="        for i in range(0, length - n):\n",
           bug="the n-gram lookup takes the earliest occurrence of the ending instead of the most recent one"),
    Mutant(19, "ngram-shortest-first", NG,
           find="    for n in range(min(max_n, length - 1), min_n - 1, -1):\n",
           replace="    for n in range(min_n, min(max_n, length - 1) + 1):\n",
           bug="the n-gram lookup tries short endings first, so a 1-gram match hides a longer, better one"),
    Mutant(19, "ngram-matches-itself", NG,
           find="        for i in range(length - n - 1, -1, -1):\n",
           replace="        for i in range(length - n, -1, -1):\n",
           bug="off by one: the ending is found at its own position, so the proposal is empty or wrong"),
    Mutant(19, "greedy-counts-every-match", RJ,
           find="    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)\n    final = target_tokens",
           replace="    num_accepted = matches.long().sum(dim=1)\n    final = target_tokens",
           bug="greedy verification counts every matching proposal, also those after a mismatch"),
    Mutant(19, "accept-ignores-draft-probability", RJ,
           find="    kept = (uniforms * q_proposed < p_proposed) & valid\n",
           replace="    kept = (uniforms < p_proposed) & valid\n",
           bug="a sampled proposal is kept with probability p(d) instead of min(1, p(d) / q(d))"),
    Mutant(19, "resample-from-target-after-rejection", RJ,
           find="        dist = torch.where(rejected, residual, p_here)\n",
           replace="        dist = p_here\n",
           bug="after a rejection the token is drawn from p instead of the residual max(0, p - q)"),
    Mutant(19, "residual-without-clamp", RJ,
           find="        residual = (p_here - q_here).clamp(min=0)\n",
           replace="        residual = (p_here - q_here).abs()\n",
           bug="the residual is |p - q| instead of max(0, p - q): tokens the draft over-proposed come back"),
    Mutant(19, "bonus-from-residual", RJ,
           find="        rejected = (num_accepted < num_draft).unsqueeze(1)\n",
           replace="        rejected = (num_accepted <= num_draft).unsqueeze(1)\n",
           bug="when every proposal was kept, the bonus token is drawn from the residual of the last proposal "
               "instead of from the bonus position's p"),
    Mutant(19, "reserve-one-block-short", RB,
           find="    needed = -(-(len(seq) + num_tokens) // size) - len(seq.block_table)\n",
           replace="    needed = (len(seq) + num_tokens) // size - len(seq.block_table)\n",
           bug="the blocks for the proposals are counted with floor division, one block short at a boundary"),
    Mutant(19, "rollback-keeps-rejected-blocks", RB,
           find="    while len(seq.block_table) > keep:\n",
           replace="    while len(seq.block_table) > keep + 1:\n",
           bug="rollback keeps one block of rejected proposals: the sequence holds a block it does not need"),
    Mutant(19, "rollback-registers-proposals", RB,
           find="    block_manager.cache_full_blocks(seq, num_final_tokens)\n",
           replace="    block_manager.cache_full_blocks(seq, len(seq))\n",
           bug="rollback registers blocks up to len(seq): the newest token's block becomes findable before its "
               "K/V are written"),
    Mutant(19, "rollback-forgets-registration", RB,
           find="    block_manager.cache_full_blocks(seq, num_final_tokens)\n",
           replace="",
           bug="rollback never registers the blocks verification completed, so their prefixes are never reused"),
    Mutant(19, "budget-ignores-the-extra-token", DC,
           find="        return max(0, min(self.k, left - 1))\n",
           replace="        return max(0, min(self.k, left))\n",
           bug="the speculation budget forgets that verification always adds one token of the target's"),
    Mutant(19, "accept-past-stop", DC,
           find="        for token in tokens:\n            if scheduler.postprocess([seq], [token]):\n"
                "                return True\n        return False\n",
           replace="        finished = False\n        for token in tokens:\n            if not finished and "
                   "scheduler.postprocess([seq], [token]):\n                finished = True\n            elif finished:\n"
                   "                seq.append_token(token)\n        return finished\n",
           bug="tokens verified after a stop token are still appended to the finished sequence"),
    Mutant(19, "draft-skips-catch-up", DR,
           find="        views = [SpanView(seq, self._start(seq, len(seq) - 1), seq.token_ids) for seq in seqs]\n",
           replace="        views = [SpanView(seq, len(seq) - 1, seq.token_ids) for seq in seqs]\n",
           bug="the draft's first pass computes only the newest token, never the last proposal it did not feed "
               "back after a fully accepted step: its cache has a hole"),
    Mutant(19, "draft-decode-wrong-position", DR,
           find="            views = [SpanView(seqs[b], len(seqs[b]) + step - 1, seqs[b].token_ids + proposals[b]) for b in rows]\n",
           replace="            views = [SpanView(seqs[b], len(seqs[b]) + step - 1, seqs[b].token_ids + proposals[b][:-1]) for b in rows]\n",
           bug="each draft decode step feeds the proposal before the previous one"),
]
