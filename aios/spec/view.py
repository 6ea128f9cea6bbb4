"""A sequence as a forward pass of speculative decoding sees it: its tokens plus proposals, from some start."""

from __future__ import annotations


class SpanView:
    """Tokens ``[start, len(token_ids))`` of ``seq`` for one forward pass, ``token_ids`` possibly past the
    sequence's own (its proposals). To lesson 7's ``prepare_prefill`` it looks like a sequence whose first
    ``start`` tokens are cached (as lesson 16's Chunk does); to ``prepare_decode``, one whose newest token is
    ``token_ids[-1]``. It writes K/V into ``seq``'s block table, which must cover ``len(token_ids)`` tokens.
    """

    def __init__(self, seq, start: int, token_ids: list[int]):
        self.seq = seq
        self.num_cached_tokens = start
        self.token_ids = token_ids
        self.block_table = seq.block_table

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return f"SpanView(seq={self.seq.seq_id}, tokens [{self.num_cached_tokens}, {len(self)}))"

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def seq_id(self) -> int:
        return self.seq.seq_id

    @property
    def sampling_params(self):
        return self.seq.sampling_params

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.seq.num_prompt_tokens
