"""A request as the engine sees it: its tokens, its KV-cache blocks and where it is in its life.

    WAITING --schedule--> RUNNING --eos / max_tokens--> FINISHED
       ^                     |
       +------preempt--------+   (blocks freed; recomputed when re-admitted)
"""

from enum import Enum, auto
from itertools import count

from aios.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """Token ids (prompt then completion), the block table, and bookkeeping counters.

    ``num_cached_tokens`` counts leading tokens whose K/V are already in the cache
    (reused prefix blocks, lesson 13); prefill computes only the rest.
    ``num_computed_tokens`` (chunked prefill, lesson 16) counts leading tokens whose K/V
    are in the cache so far: the cached prefix, then every chunk a step computed.
    """

    _ids = count()

    def __init__(self, token_ids: list[int], sampling_params: SamplingParams | None = None, block_size: int = 16,
                 priority: int = 0):
        self.seq_id = next(Sequence._ids)
        self.priority = priority  # lower is served earlier (the scheduler's waiting queue is ordered by it)
        self.status = SequenceStatus.WAITING
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.block_size = block_size
        self.block_table: list[int] = []
        self.num_cached_tokens = 0
        self.num_computed_tokens = 0
        self.sampling_params = sampling_params or SamplingParams()
        self.finish_reason: str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return f"Sequence(id={self.seq_id}, {self.status.name}, tokens={len(self)}, blocks={self.block_table})"

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_blocks(self) -> int:
        """Blocks needed to hold every token of the sequence."""
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    @property
    def num_cached_blocks(self) -> int:
        return self.num_cached_tokens // self.block_size

    def block(self, i: int) -> list[int]:
        """The token ids stored in the sequence's i-th block (the last one may be partial)."""
        return self.token_ids[i * self.block_size : (i + 1) * self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)


class Chunk:
    """The tokens ``[start, end)`` of one sequence that a chunked-prefill step computes (lesson 16).

    ``start`` is ``seq.num_computed_tokens`` when the chunk is made: every token before it
    already has its K/V in the cache. To the model runner a chunk looks like a sequence
    that ends at ``end`` and whose first ``start`` tokens are cached, which is exactly what
    lesson 7's ``prepare_prefill`` packs (it learned that for prefix caching in lesson 13):

        positions  start .. end - 1        (not 0 .. num_tokens - 1)
        slots      slot_mapping(block_table, those positions)
        attention  over all ``end`` tokens: earlier chunks' K/V are read from the cache

    A decode is the chunk ``[len(seq) - 1, len(seq))``. Only a chunk that reaches the end
    of its sequence (``is_last``) gives a next token; the logits of the others are dropped.
    """

    def __init__(self, seq: Sequence, num_tokens: int):
        """The next ``num_tokens`` tokens of ``seq``: set ``self.seq``, ``self.start`` and ``self.end``."""
        # BEGIN SOLUTION lesson16
        self.seq = seq
        self.start = seq.num_computed_tokens
        self.end = self.start + num_tokens
        # END SOLUTION

    # What the model runner and the sampler read of a sequence, seen through the chunk.

    def __len__(self) -> int:
        return self.end

    def __repr__(self) -> str:
        return f"Chunk(seq={self.seq.seq_id}, tokens [{self.start}, {self.end}) of {len(self.seq)})"

    @property
    def num_tokens(self) -> int:
        """How many tokens this step computes for the sequence (what it costs of the budget)."""
        return self.end - self.start

    @property
    def num_cached_tokens(self) -> int:
        return self.start

    @property
    def token_ids(self) -> list[int]:
        """The first ``end`` token ids (read only). A chunk that ends its sequence returns the sequence's
        own list: no copy, which a mixed step's decodes over long contexts would otherwise pay."""
        return self.seq.token_ids if self.end == len(self.seq) else self.seq.token_ids[: self.end]

    @property
    def last_token(self) -> int:
        return self.seq.token_ids[self.end - 1]

    @property
    def seq_id(self) -> int:
        return self.seq.seq_id

    @property
    def block_table(self) -> list[int]:
        return self.seq.block_table

    @property
    def sampling_params(self) -> SamplingParams:
        return self.seq.sampling_params

    @property
    def num_completion_tokens(self) -> int:
        return self.seq.num_completion_tokens

    @property
    def is_last(self) -> bool:
        """Whether the chunk ends at the sequence's last token: its logits give the next token."""
        # BEGIN SOLUTION lesson16
        return self.end == len(self.seq)
        # END SOLUTION

    @property
    def is_decode(self) -> bool:
        """Whether the chunk is one decode token (the sequence's newest): lesson 7's prepare_decode can run it,
        and a CUDA graph of lesson 11 with it."""
        # BEGIN SOLUTION lesson16
        return self.num_tokens == 1 and self.is_last
        # END SOLUTION
