"""The n-gram proposer (prompt lookup): guess the next tokens by finding the text's own ending earlier in it.

    tokens   ... the cat sat on the mat . the cat sat on the
    ending (n = 3)                                   the cat sat  ... no: "on the" ...
    the longest ending that occurred before, most recent occurrence:
                 [on the] mat .                 ...  [on the]
    proposal:  the tokens that followed it: "mat ." (k of them; an occurrence close to the end is
               continued as an overlapping copy: after "a b a b", the match of "a b" at 0 proposes
               "a b a b ..." for as many tokens as k asks)

No model runs: a proposal costs a scan of the token list. It pays off on text that
repeats itself (code edits, retrieval answers quoting their sources, summaries); on
other text it proposes nothing, or tokens the target rejects. The proposal is
deterministic: to the rejection sampler its "draft distribution" is one-hot.
"""

from __future__ import annotations


def propose_ngram(token_ids: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of the text's ending.

    Tries n = max_n, max_n - 1, ..., min_n: the ending is ``token_ids[-n:]``; an occurrence
    starts at i < len(token_ids) - n (strictly before the ending itself, with at least one token after
    it). The longest n with an occurrence wins; among its occurrences the latest (largest i).
    Returns the k tokens from ``i + n`` on, copied like an overlapping copy (LZ77): a position past
    the end of the text takes the proposal's own earlier token, so a loop of period p goes on for
    k tokens; or [] when no n in the range occurs earlier (or the text is too short for any n).
    """
    # BEGIN SOLUTION lesson19
    # Hint: walk n from long to short, and for each n walk the start i from the end backwards.
    length = len(token_ids)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        ending = token_ids[length - n :]
        first = ending[0]
        for i in range(length - n - 1, -1, -1):
            if token_ids[i] == first and token_ids[i : i + n] == ending:
                # Hint: past the end, copy from the proposal itself: position p >= length is proposal[p - length].
                proposal = []
                for position in range(i + n, i + n + k):
                    proposal.append(token_ids[position] if position < length else proposal[position - length])
                return proposal
    return []
    # END SOLUTION


class NgramProposer:
    """Proposes with ``propose_ngram`` over each sequence's whole token list (prompt and completion)."""

    method = "ngram"

    def __init__(self, k: int, min_n: int, max_n: int):
        self.k, self.min_n, self.max_n = k, min_n, max_n

    def propose(self, seqs, budgets: list[int]) -> tuple[list[list[int]], None]:
        """One proposal per sequence, each at most its budget long; no draft distribution (one-hot)."""
        proposals = [propose_ngram(seq.token_ids, budget, self.min_n, self.max_n) if budget > 0 else []
                     for seq, budget in zip(seqs, budgets)]
        return proposals, None

    def observe(self, views) -> None:
        """Nothing to keep in step with: the n-gram proposer has no KV cache."""

    def num_valid_tokens(self, seq, num_final_tokens: int) -> int:
        """After verification: the proposer keeps no K/V, so every final token is as good as computed."""
        return num_final_tokens

    def forget(self, live_seq_ids) -> None:
        """No per-sequence state to drop."""
