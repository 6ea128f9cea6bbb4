"""Verification: which proposed tokens the target keeps, and the one token it adds (lesson 19).

The target scored every proposed position in one forward pass. Row b of a batch holds
``num_draft[b]`` proposed tokens d_0 .. d_{n-1} and the target's distributions
p_0 .. p_n (p_j is the target's next-token distribution *before* d_j; p_n comes after the
last proposal: the "bonus" position).

Greedy (``greedy_verify``): keep d_j while it equals the target's argmax; the first
mismatch is replaced by the argmax; if all match, the argmax of the bonus position is added.
The output is exactly what greedy decoding without speculation gives.

Sampling (``rejection_sample``, Leviathan et al. / Chen et al. 2023): the draft sampled d_j
from q_j. Keep it with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection,
sample instead from the residual normalize(max(0, p_j - q_j)) and stop; if every proposal was
kept, sample the bonus token from p_n. Every emitted token is then distributed exactly as if
the target had sampled it alone. A deterministic proposal (the n-gram proposer) is a draft
whose q_j is one-hot on d_j: keep d_j with probability p_j(d_j), else sample p_j without d_j.

    position     0      1      2      3 (bonus)
    proposal     d_0    d_1    d_2
    test         keep   keep   REJECT
    emitted      d_0    d_1    r ~ normalize(max(0, p_2 - q_2))        (3 tokens; d_2 dropped)
"""

from __future__ import annotations

import torch

from aios.layers.sampler import apply_top_k, apply_top_p, exponential_noise

#: Salts that give each use of a request's seed its own noise (the sampler's own draw takes the seed as it is).
ACCEPT_SALT = 0x5EC0_0000_0000_0001
DRAFT_SALT = 0x5EC0_0000_0000_0002


def greedy_verify(target_tokens: torch.Tensor, draft_tokens: torch.Tensor,
                  num_draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification of a batch of proposals.

    target_tokens: [B, K + 1] int64, the target's argmax at every position (column j: before d_j;
                   column num_draft[b]: the bonus position; columns after it are padding).
    draft_tokens:  [B, K] int64 proposals, padded after num_draft[b] (with anything).
    num_draft:     [B] int64, proposals per row (0 .. K).
    Returns (tokens [B, K + 1] int64: the kept proposals, then the target's token, then -1 padding;
             num_accepted [B] int64: how many proposals were kept, 0 .. num_draft[b]).
    """
    # BEGIN SOLUTION lesson19
    # Hint: a proposal counts only if it matches *and* every proposal before it matched: a cumulative product.
    batch, k = draft_tokens.shape
    columns = torch.arange(k, device=draft_tokens.device)
    matches = (draft_tokens == target_tokens[:, :k]) & (columns < num_draft.unsqueeze(1))
    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)
    final = target_tokens.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
    return _emitted(draft_tokens, num_accepted, final), num_accepted
    # END SOLUTION


def rejection_sample(target_probs: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                     num_draft: torch.Tensor, uniforms: torch.Tensor,
                     noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling: keep each proposal with probability min(1, p/q), then one more token.

    target_probs: [B, K + 1, V] the target's distributions (rows sum to 1; a greedy request's are one-hot).
    draft_tokens: [B, K] int64 proposals, padded after num_draft[b].
    draft_probs:  [B, K, V] the distributions the draft sampled them from, or None for a deterministic
                  proposer (q one-hot on the proposed token).
    num_draft:    [B] int64 proposals per row.
    uniforms:     [B, K] float in (0, 1): the acceptance test of position j keeps d_j when
                  uniforms[b, j] * q_j(d_j) < p_j(d_j).
    noise:        [B, K + 1, V] Exponential(1) noise: the extra token at position j is
                  argmax_v log(dist(v)) - log(noise[b, j, v]) (the exponential race of lesson 12).
    Returns (tokens [B, K + 1] int64: kept proposals, the extra token, then -1; num_accepted [B] int64).
    """
    # BEGIN SOLUTION lesson19
    # Hint: gather p_j(d_j) and q_j(d_j) for every position, test them all at once, then keep the leading run.
    batch, k = draft_tokens.shape
    rows = torch.arange(batch, device=draft_tokens.device)
    p_proposed = target_probs[:, :k].gather(2, draft_tokens.unsqueeze(2)).squeeze(2)
    if draft_probs is None:
        q_proposed = torch.ones_like(p_proposed)
    else:
        q_proposed = draft_probs.gather(2, draft_tokens.unsqueeze(2)).squeeze(2)
    valid = torch.arange(k, device=draft_tokens.device) < num_draft.unsqueeze(1)
    kept = (uniforms * q_proposed < p_proposed) & valid
    num_accepted = kept.long().cumprod(dim=1).sum(dim=1)
    # Hint: a rejected row samples from the residual max(0, p - q) (renormalised); a row that kept everything from p.
    p_here = target_probs[rows, num_accepted]
    dist = p_here
    if k > 0:
        position = num_accepted.clamp(max=k - 1)
        if draft_probs is None:
            q_here = torch.nn.functional.one_hot(draft_tokens[rows, position], p_here.shape[-1]).to(p_here.dtype)
        else:
            q_here = draft_probs[rows, position]
        residual = (p_here - q_here).clamp(min=0)
        mass = residual.sum(dim=-1, keepdim=True)
        residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(mass.dtype).tiny), p_here)
        rejected = (num_accepted < num_draft).unsqueeze(1)
        dist = torch.where(rejected, residual, p_here)
    final = (dist.log() - noise[rows, num_accepted].log()).argmax(dim=-1)
    return _emitted(draft_tokens, num_accepted, final), num_accepted
    # END SOLUTION


def _emitted(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """[B, K + 1]: draft_tokens[b, :n], then final[b] at column n = num_accepted[b], then -1."""
    batch, k = draft_tokens.shape
    columns = torch.arange(k + 1, device=draft_tokens.device).unsqueeze(0)
    padded = torch.cat([draft_tokens, draft_tokens.new_zeros(batch, 1)], dim=1)
    accepted = num_accepted.unsqueeze(1)
    tokens = torch.where(columns < accepted, padded, torch.full_like(padded, -1))
    return torch.where(columns == accepted, final.unsqueeze(1), tokens)


def target_probabilities(logits: torch.Tensor, params: list) -> torch.Tensor:
    """The distribution each row's request samples from: softmax of logits / T, top-k then top-p applied.

    logits: [rows, V]; params: one SamplingParams per row. Greedy rows get the one-hot of their argmax.
    Returns [rows, V] float32.
    """
    logits = logits.float()
    greedy = torch.tensor([p.is_greedy for p in params], device=logits.device)
    temperatures = torch.tensor([1.0 if p.is_greedy else p.temperature for p in params],
                                dtype=torch.float32, device=logits.device)
    scaled = logits / temperatures.unsqueeze(1)
    top_ks = torch.tensor([p.top_k for p in params], dtype=torch.int64, device=logits.device)
    if bool(((top_ks > 0) & (top_ks < scaled.shape[-1])).any()):
        scaled = apply_top_k(scaled, top_ks)
    top_ps = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=logits.device)
    if bool((top_ps < 1).any()):
        scaled = apply_top_p(scaled, top_ps)
    probs = torch.softmax(scaled, dim=-1)
    if bool(greedy.any()):
        one_hot = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
        probs = torch.where(greedy.unsqueeze(1), one_hot, probs)
    return probs


def salted(seed: int | None, salt: int) -> int | None:
    """A request's seed turned into another seed for another use of its randomness (None stays None)."""
    return None if seed is None else (seed ^ salt) % 2**64


def position_noise(params: list, steps: list[int], vocab_size: int, device, salt: int = 0) -> torch.Tensor:
    """Exponential(1) noise [rows, vocab_size], row r keyed by (its request's seed ^ salt, steps[r]).

    With salt 0 a position's noise is the sampler's own (lesson 12) for that completion index.
    """
    seeds = [p.seed if salt == 0 else salted(p.seed, salt) for p in params]
    return exponential_noise(len(params), vocab_size, seeds, steps, device)


def sample_from(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One token per row of probs [rows, V] with the exponential race: argmax log(p) - log(noise)."""
    return (probs.log() - noise.log()).argmax(dim=-1)
