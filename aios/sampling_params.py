"""Per-request sampling settings, validated on construction."""

import math
from dataclasses import dataclass

#: Temperatures below this sample greedily (vLLM's rule too): logits / 1e-39 overflows float32 to
#: +-inf, and an argmax over several +inf is the first of them, not the most likely token.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    """How to pick each next token of one request (names follow vLLM's).

    temperature: 0.0 means greedy (argmax), and so does any value below GREEDY_BELOW_TEMPERATURE;
                 larger values flatten the distribution.
    top_k:       keep only the k most likely tokens; -1 (or 0) keeps all.
    top_p:       keep the smallest set of tokens whose probability mass reaches top_p (1.0 keeps all).
    seed:        per-request random seed in [0, 2**64): the same seed gives the same tokens, whatever
                 shares the batch (the noise is a hash of seed, step and token id; see layers/sampler.py).
                 None draws from torch's global generator.
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
        if not _is_finite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            problems.append(f"top_k must be -1 or 0 (no limit) or a positive integer, got {self.top_k!r}")
        if not _is_finite(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 means no limit), got {self.top_p!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**64):
            problems.append(f"seed must be None or an integer in [0, 2**64), got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            problems.append(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        if problems:
            raise ValueError("Invalid SamplingParams: " + "; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """A number that is a finite float: not NaN or infinity, and not an int too large for a float (10**400)."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False
