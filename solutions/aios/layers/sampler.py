"""Turning logits into next tokens: greedy (lesson 8) and sampling (lesson 12).

Sampling with the exponential race (the Gumbel-max trick in disguise): draw
E_i ~ Exponential(1) for every token i and take argmax_i p_i / E_i. Token i wins
with probability exactly p_i, and in log space the rule is
argmax_i (logits_i / T - log E_i): no softmax, no cumulative sum, one batched
argmax for every row of the batch, each row with its own temperature.

Reproducible seeds: a seeded request's noise is a pure function of
(seed, step, token id) — a counter-based hash, not a random generator with
state. Nothing about a row's noise depends on which row it sits in, on how many
other rows there are, or on what they drew, so the same seed gives the same
tokens alone, in any batch, after a preemption, and on any device.

No waiting for the GPU (lesson 17): the host knows every row's settings, so the
sampler takes its decisions (is there a top-k or top-p to apply, how many top-k
candidates, which rows are seeded) from host memory, and the per-row values reach
the device through pinned memory with non-blocking copies. ``torch.tensor(values,
device="cuda")`` or ``bool(device_tensor)`` would instead wait until the GPU has
run everything queued before them, the model's forward included.
"""

from dataclasses import dataclass

import torch

MASK32 = 0xFFFF_FFFF
GOLDEN32 = 0x9E37_79B9  # 2**32 / golden ratio: breaks the symmetry of small inputs such as 0.
UNIFORM_BITS = 24  # float32 holds 24-bit integers exactly


def greedy_sample(logits: torch.Tensor) -> torch.Tensor:
    """logits: [num_seqs, vocab] -> [num_seqs] token ids of the largest logit."""
    return logits.argmax(dim=-1)


def host_tensor(values: list, dtype: torch.dtype, device) -> torch.Tensor:
    """``values`` as a CPU tensor, in pinned (page-locked) memory when ``device`` is a GPU."""
    return torch.tensor(values, dtype=dtype, pin_memory=torch.device(device).type == "cuda")


def to_device(values: list, dtype: torch.dtype, device) -> torch.Tensor:
    """A host list as a tensor on ``device``, without waiting for the GPU.

    On a GPU the values go through pinned memory with a non-blocking copy, queued behind the
    work already launched; ``torch.tensor(values, device="cuda")`` copies from pageable memory
    instead, which makes the host wait until the GPU has finished everything queued before it.
    """
    return host_tensor(values, dtype, device).to(device, non_blocking=True)


@dataclass(frozen=True)
class HostSettings:
    """A batch's per-row sampling settings in host memory: the source of the device copies that
    ``sampling_tensors`` makes. Decisions taken from these (``limits_top_k``, ``limits_top_p``,
    ``top_k_candidates``) need no read of the device, which would wait for the GPU.

    temperatures: [rows] float32 (0: greedy); top_ks: [rows] int64; top_ps: [rows] float32 (CPU tensors).
    """

    temperatures: torch.Tensor
    top_ks: torch.Tensor
    top_ps: torch.Tensor


def limits_top_k(top_ks: torch.Tensor | None, width: int, host: HostSettings | None = None) -> bool:
    """Whether some row keeps fewer than ``width`` tokens with top-k (0 < k < width): apply_top_k has work to do.

    top_ks: [rows] or None (no row limits). With ``host`` the answer comes from host memory; without it,
    from ``top_ks`` itself (on a GPU, ``bool()`` of a device tensor waits for the GPU).
    """
    if top_ks is None:
        return False
    ks = top_ks if host is None else host.top_ks
    return bool(((ks > 0) & (ks < width)).any())


def limits_top_p(top_ps: torch.Tensor | None, host: HostSettings | None = None) -> bool:
    """Whether some row has a top-p below 1: apply_top_p has work to do. top_ps: [rows] or None; host: as above."""
    if top_ps is None:
        return False
    ps = top_ps if host is None else host.top_ps
    return bool((ps < 1).any())


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash: a bijection on [0, 2**32) whose output bits all depend on every input bit.

    x: int64 tensor of values in [0, 2**32). Products stay below 2**63, so nothing overflows.
    """
    x = ((x >> 16) ^ x) * 0x045D_9F3B & MASK32
    x = ((x >> 16) ^ x) * 0x045D_9F3B & MASK32
    return (x >> 16) ^ x


def hash_combine(key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Hash of the pair (key, value); both int64 tensors in [0, 2**32) (broadcast together)."""
    return mix32(key ^ mix32((value + GOLDEN32) & MASK32))


def seeded_uniform(seeds: list[int], steps: list[int], vocab_size: int, device="cpu") -> torch.Tensor:
    """Counter-based uniform noise: one value in (0, 1) per (request, token id), a pure function of (seed, step, token id).

    seeds: [rows] integers in [0, 2**64); steps: [rows] how many tokens each request has generated.
    Returns [rows, vocab_size] float32.
    """
    # BEGIN SOLUTION lesson12
    # Hint: fold the seed's low and high 32 bits and the step into one 32-bit key per row with hash_combine.
    # (to_device copies without waiting for the GPU; torch.tensor(..., device=device) gives the same values.)
    seed_low, seed_high, step = to_device(
        [[seed & MASK32 for seed in seeds], [(seed >> 32) & MASK32 for seed in seeds], list(steps)], torch.int64, device)
    row_key = hash_combine(hash_combine(mix32(seed_high), seed_low), step)
    # Hint: then hash each token id with its row's key, keep the top 24 bits and centre them in (0, 1).
    token_ids = torch.arange(vocab_size, dtype=torch.int64, device=device)
    bits = hash_combine(row_key.unsqueeze(1), token_ids) >> (32 - UNIFORM_BITS)
    return (bits.float() + 0.5) / 2**UNIFORM_BITS
    # END SOLUTION


def exponential_noise(
    num_rows: int, vocab_size: int, seeds: list[int | None] | None = None, steps: list[int] | None = None, device="cpu"
) -> torch.Tensor:
    """Exponential(1) noise [num_rows, vocab_size] float32.

    Rows whose seed is None draw from torch's global generator; a seeded row is
    -log of ``seeded_uniform`` for its (seed, step), whatever the other rows are.
    """
    # BEGIN SOLUTION lesson12
    # Hint: draw every row with Tensor.exponential_(), then overwrite the seeded rows with -log(seeded_uniform(...)).
    noise = torch.empty(num_rows, vocab_size, dtype=torch.float32, device=device).exponential_()
    # A draw of exactly 0 would turn into log(0) = -inf and could lift a filtered-out token.
    noise.clamp_(min=torch.finfo(torch.float32).tiny)
    seeded_rows = [row for row, seed in enumerate(seeds or []) if seed is not None]
    if seeded_rows:
        uniform = seeded_uniform([seeds[row] for row in seeded_rows], [steps[row] for row in seeded_rows],
                                 vocab_size, device)
        noise.index_copy_(0, to_device(seeded_rows, torch.int64, device), -torch.log(uniform))
    return noise
    # END SOLUTION


def apply_top_k(logits: torch.Tensor, top_ks: torch.Tensor) -> torch.Tensor:
    """Keep each row's ``top_k`` largest logits and set the rest to -inf.

    logits: [rows, vocab] float; top_ks: [rows] int, where -1 or 0 (or >= vocab) means no limit.
    Exactly k tokens survive per limited row (ties are broken by sort order). Returns a new tensor.
    """
    # BEGIN SOLUTION lesson12
    # Hint: rank the tokens of every row by sorting once, decide keep/drop per rank, then scatter back to token order.
    vocab_size = logits.shape[-1]
    k = torch.where(top_ks > 0, top_ks, vocab_size).clamp(max=vocab_size)
    order = logits.argsort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab_size, device=logits.device)
    keep_sorted = rank.unsqueeze(0) < k.unsqueeze(1)
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))
    # END SOLUTION


def apply_top_p(logits: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the smallest set of most likely tokens whose probability mass reaches ``top_p``; the rest -> -inf.

    logits: [rows, vocab] float (already divided by the temperature, maybe already top-k filtered);
    top_ps: [rows] float in (0, 1], 1 keeping everything. The most likely token always survives.
    """
    # BEGIN SOLUTION lesson12
    # Hint: sort the probabilities in descending order; a token is in the nucleus if the mass *before* it is < p.
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < top_ps.unsqueeze(1)
    keep_sorted[:, 0] = True
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))
    # END SOLUTION


def top_k_candidates(
    scaled: torch.Tensor, top_ks: torch.Tensor, sampled_rows: torch.Tensor, host: HostSettings | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Narrow the vocabulary to each row's K best tokens when no sampled row can draw beyond them.

    scaled: [rows, vocab]; top_ks: [rows] (<= 0: no limit); sampled_rows: [rows] bool.
    Returns (values [rows, K] in descending order, their token ids [rows, K]) with K the
    largest top-k of the sampled rows, or None when some sampled row has no top-k limit.
    Top-k and top-p then work on K columns instead of sorting the whole vocabulary.
    With ``host`` the decision and K come from host memory (top-k, and temperature > 0 for
    the sampled rows), without waiting for the GPU.
    """
    vocab_size = scaled.shape[-1]
    if host is not None:
        top_ks, sampled_rows = host.top_ks, host.temperatures > 0
    limited = (top_ks > 0) & (top_ks < vocab_size)
    if not bool((limited | ~sampled_rows).all()):
        return None
    k_max = int(torch.where(sampled_rows, top_ks, torch.ones_like(top_ks)).max())
    return scaled.topk(k_max, dim=-1)


class Sampler:
    """Samples one token per row from softmax(logits / temperature), truncated by top-k then top-p.

    Every request brings its own settings, and one call serves the whole batch:
    temperatures [rows] float (0: greedy argmax), top_ks [rows] int (-1: no limit),
    top_ps [rows] float (1.0: no limit), seeds [rows] int or None (None: torch's
    global generator), steps [rows] int (tokens each request has generated so far;
    with the seed it names the noise), host: the same settings in host memory
    (``sampling_tensors`` passes them) or None. Returns [rows] int64 token ids.
    """

    def __call__(
        self,
        logits: torch.Tensor,
        temperatures: torch.Tensor,
        top_ks: torch.Tensor | None = None,
        top_ps: torch.Tensor | None = None,
        seeds: list[int | None] | None = None,
        steps: list[int] | None = None,
        host: HostSettings | None = None,
    ) -> torch.Tensor:
        # BEGIN SOLUTION lesson12
        # Hint: order matters: divide by the temperature, then top-k, then top-p (on the renormalised rest).
        logits = logits.float()
        greedy = logits.argmax(dim=-1)
        sampled_rows = temperatures > 0
        safe_temperatures = torch.where(sampled_rows, temperatures, torch.ones_like(temperatures))
        scaled = logits / safe_temperatures.float().unsqueeze(1)
        num_rows, vocab_size = scaled.shape
        # Hint: when every sampled row has a top-k, top_k_candidates narrows the rows to K columns first.
        # Hint: pass `host` on to the helpers: their decisions then need no wait for the GPU.
        candidates = top_k_candidates(scaled, top_ks, sampled_rows, host) if top_ks is not None else None
        token_ids = None
        if candidates is not None:
            scaled, token_ids = candidates
        if limits_top_k(top_ks, scaled.shape[-1], host):
            scaled = apply_top_k(scaled, top_ks)
        if limits_top_p(top_ps, host):
            scaled = apply_top_p(scaled, top_ps)
        # Hint: the exponential race in log space: argmax(scaled - log(E)) with E ~ Exponential(1).
        noise = exponential_noise(num_rows, vocab_size, seeds, steps, scaled.device)
        if token_ids is not None:
            noise = noise.gather(1, token_ids)  # each candidate keeps its own token's noise
        sampled = (scaled - torch.log(noise)).argmax(dim=-1)
        if token_ids is not None:
            sampled = token_ids.gather(1, sampled.unsqueeze(1)).squeeze(1)
        return torch.where(sampled_rows, sampled, greedy)
        # END SOLUTION


def sampling_tensors(params: list, steps: list[int], device) -> dict:
    """The keyword arguments of ``Sampler.__call__`` for a batch of SamplingParams (one per row).

    A greedy request's temperature is sent as 0 (``SamplingParams.is_greedy`` also counts temperatures
    too small to divide by). The per-row tensors are built in host memory (pinned for a GPU) and copied
    without waiting; the host copies go along as ``host`` (a HostSettings) for the sampler's decisions.
    """
    host = HostSettings(
        temperatures=host_tensor([0.0 if p.is_greedy else p.temperature for p in params], torch.float32, device),
        top_ks=host_tensor([p.top_k for p in params], torch.int64, device),
        top_ps=host_tensor([p.top_p for p in params], torch.float32, device),
    )
    return {
        "temperatures": host.temperatures.to(device, non_blocking=True),
        "top_ks": host.top_ks.to(device, non_blocking=True),
        "top_ps": host.top_ps.to(device, non_blocking=True),
        "seeds": [p.seed for p in params],
        "steps": list(steps),
        "host": host,
    }
