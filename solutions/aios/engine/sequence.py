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
