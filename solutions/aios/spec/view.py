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


class DecodeRow:
    """One token of ``seq`` at ``position`` as a one-token decode row (``prepare_decode``): it attends over
    positions 0 .. position of ``seq``'s block table. Several rows of one sequence in one decode step
    compute exactly what one varlen pass over those tokens computes (every row's K/V is stored before
    any row attends, and each row reads only up to its own position), so a verification can replay a
    captured decode CUDA graph (lesson 11) instead of running the eager prefill path."""

    def __init__(self, seq, position: int, token: int):
        self.seq = seq
        self.position = position
        self.last_token = token
        self.block_table = seq.block_table

    def __len__(self) -> int:
        return self.position + 1


def decode_rows(views: list) -> list[DecodeRow]:
    """Every new token of every view (tokens [start, len) of each), as decode rows, view by view."""
    return [DecodeRow(view.seq, position, view.token_ids[position])
            for view in views for position in range(view.num_cached_tokens, len(view))]


def fits_decode_graphs(model_runner, num_rows: int) -> bool:
    """Whether ``num_rows`` decode rows replay one of ``model_runner``'s captured CUDA graphs."""
    sizes = getattr(model_runner, "graph_sizes", None)
    return bool(getattr(model_runner, "graphs", None)) and bool(sizes) and num_rows <= max(sizes)
