"""Per-request sampling settings, validated on construction."""

from dataclasses import dataclass


@dataclass
class SamplingParams:
    """How to pick each next token of one request (names follow vLLM's).

    temperature: 0.0 means greedy (argmax); larger values flatten the distribution.
    top_k:       keep only the k most likely tokens; -1 (or 0) keeps all.
    top_p:       keep the smallest set of tokens whose probability mass reaches top_p (1.0 keeps all).
    seed:        per-request random seed: the same seed gives the same tokens, whatever shares the batch.
    max_tokens:  the most tokens to generate.
    ignore_eos:  keep generating past the end-of-sequence token (benchmarks use this).
    """

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 64
    ignore_eos: bool = False

    def __post_init__(self):
        problems = []
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            problems.append(f"top_k must be -1 (no limit) or a positive integer, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if problems:
            raise ValueError("Invalid SamplingParams: " + "; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0
