"""Lesson 19: verification: greedy (exact) and rejection sampling (keeps the target's distribution)."""

import math

import pytest
import torch

from aios.spec.rejection import greedy_verify, rejection_sample

P0 = [0.30, 0.25, 0.20, 0.10, 0.10, 0.05]  # the target at the first position
P1 = [0.05, 0.05, 0.40, 0.30, 0.10, 0.10]  # ... at the second
P2 = [1 / 6] * 6  # ... at the bonus position
Q0 = [0.05, 0.10, 0.40, 0.20, 0.05, 0.20]  # the draft at the first position
Q1 = [0.30, 0.30, 0.10, 0.10, 0.10, 0.10]  # ... at the second
ROWS = 30000


def chi_square_p_value(observed: torch.Tensor, expected_probs: list[float]) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test (scipy's when installed, else Wilson-Hilferty)."""
    counts = [float(c) for c in observed]
    total = sum(counts)
    mass = sum(expected_probs)
    expected = [p / mass * total for p in expected_probs]
    try:
        from scipy.stats import chisquare
    except ImportError:
        statistic = sum((o - e) ** 2 / e for o, e in zip(counts, expected))
        dof = len(counts) - 1
        z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        return 0.5 * math.erfc(z / math.sqrt(2))
    return float(chisquare(counts, expected).pvalue)


def two_position_batch(draft_is_deterministic: bool = False, seed: int = 0):
    """ROWS identical rows: target P0, P1 (+ bonus P2); proposals sampled from Q0, Q1 (or fixed tokens 2, 3)."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.tensor([P0, P1, P2]).expand(ROWS, 3, 6).contiguous()
    q = torch.tensor([Q0, Q1]).expand(ROWS, 2, 6).contiguous()
    if draft_is_deterministic:
        tokens, q = torch.tensor([2, 3]).expand(ROWS, 2).contiguous(), None
    else:
        tokens = torch.stack([torch.multinomial(q[:, j], 1, generator=gen).squeeze(1) for j in range(2)], dim=1)
    num_draft = torch.full((ROWS,), 2, dtype=torch.int64)
    uniforms = torch.rand(ROWS, 2, generator=gen)
    noise = torch.empty(ROWS, 3, 6).exponential_(generator=gen)
    return target, tokens, q, num_draft, uniforms, noise


def emitted_distributions_match(tokens: torch.Tensor, num_accepted: torch.Tensor) -> tuple[float, float]:
    """p-values: the first emitted token against P0; the second (rows that kept the first proposal) against P1."""
    first = torch.bincount(tokens[:, 0], minlength=6)
    second = torch.bincount(tokens[num_accepted >= 1, 1], minlength=6)
    return chi_square_p_value(first, P0), chi_square_p_value(second, P1)


@pytest.mark.hint(2)
def test_greedy_keeps_the_matching_run_then_adds_the_targets_token():
    """Proposals are kept while they equal the target's argmax; the first mismatch becomes the target's token."""
    target = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])
    draft = torch.tensor([[5, 6, 7], [5, 9, 7], [9, 6, 7], [1, 2, 0]])
    num_draft = torch.tensor([3, 3, 3, 2])
    tokens, accepted = greedy_verify(target, draft, num_draft)
    assert accepted.tolist() == [3, 1, 0, 2]
    assert tokens.tolist() == [[5, 6, 7, 8], [5, 6, -1, -1], [5, -1, -1, -1], [1, 2, 3, -1]], (
        "all kept: the bonus token follows; a mismatch is replaced by the target's token; the rest is -1; a row "
        "with fewer proposals ends at its own bonus position")


@pytest.mark.hint(2)
def test_greedy_with_nothing_proposed_is_a_plain_decode_step():
    """A row with no proposals gets the target's first argmax, as a decode step would."""
    tokens, accepted = greedy_verify(torch.tensor([[4, 1, 1]]), torch.tensor([[4, 1]]), torch.tensor([0]))
    assert accepted.tolist() == [0] and tokens.tolist() == [[4, -1, -1]], "padding after num_draft is never kept"


@pytest.mark.hint(3)
def test_rejection_sampling_emits_the_targets_distribution():
    """Chi-square: with a draft distribution q != p, the first emitted token follows p and so does the second."""
    target, tokens, q, num_draft, uniforms, noise = two_position_batch()
    out, accepted = rejection_sample(target, tokens, q, num_draft, uniforms, noise)
    first, second = emitted_distributions_match(out, accepted)
    assert first > 1e-4, f"the first emitted token does not follow the target's distribution (p-value {first:.2e})"
    assert second > 1e-4, f"the second emitted token does not follow the target's distribution (p-value {second:.2e})"


@pytest.mark.hint(3)
def test_a_deterministic_proposal_also_keeps_the_distribution():
    """The n-gram proposer's tokens (q one-hot, draft_probs None) are kept with probability p(d); the output still follows p."""
    target, tokens, _, num_draft, uniforms, noise = two_position_batch(draft_is_deterministic=True, seed=1)
    out, accepted = rejection_sample(target, tokens, None, num_draft, uniforms, noise)
    first, second = emitted_distributions_match(out, accepted)
    assert first > 1e-4 and second > 1e-4, f"p-values {first:.2e}, {second:.2e}"
    kept = (accepted >= 1).float().mean().item()
    assert abs(kept - P0[2]) < 0.02, f"token 2 should be kept with probability p(2) = {P0[2]}, was {kept:.3f}"


@pytest.mark.hint(3)
def test_the_chi_square_test_catches_a_wrong_acceptance_rule():
    """The test has teeth: on the same draws, rejection_sample passes it, while resampling from p (not the residual
    max(0, p - q)) after a rejection is detected."""
    target, tokens, q, num_draft, uniforms, noise = two_position_batch(seed=2)
    out, _ = rejection_sample(target, tokens, q, num_draft, uniforms, noise)
    assert chi_square_p_value(torch.bincount(out[:, 0], minlength=6), P0) > 1e-4
    p_first = target[:, 0].gather(1, tokens[:, :1]).squeeze(1)
    q_first = q[:, 0].gather(1, tokens[:, :1]).squeeze(1)
    kept = uniforms[:, 0] * q_first < p_first
    resampled = (target[:, 0].log() - noise[:, 0].log()).argmax(dim=1)  # wrong: from p itself
    wrong_first = torch.where(kept, tokens[:, 0], resampled)
    p_value = chi_square_p_value(torch.bincount(wrong_first, minlength=6), P0)
    assert p_value < 1e-6, "the wrong rule should fail the chi-square test"


@pytest.mark.hint(3)
def test_a_draft_equal_to_the_target_is_always_accepted():
    """q == p: every proposal is kept (u * q < p for every u < 1), and the bonus token is drawn from the last p."""
    target, tokens, _, num_draft, uniforms, noise = two_position_batch(seed=3)
    q = target[:, :2].clone()
    out, accepted = rejection_sample(target, tokens, q, num_draft, uniforms, noise)
    assert accepted.tolist() == [2] * ROWS
    assert torch.equal(out[:, :2], tokens)
    bonus = torch.bincount(out[:, 2], minlength=6)
    assert chi_square_p_value(bonus, P2) > 1e-4


@pytest.mark.hint(3)
def test_one_hot_targets_reproduce_greedy_verification():
    """A greedy request's distributions are one-hot: rejection sampling then gives greedy_verify's tokens."""
    gen = torch.Generator().manual_seed(4)
    targets = torch.randint(0, 6, (50, 4), generator=gen)
    draft = torch.where(torch.rand(50, 3, generator=gen) < 0.7, targets[:, :3], torch.randint(0, 6, (50, 3), generator=gen))
    num_draft = torch.randint(0, 4, (50,), generator=gen)
    one_hot = torch.nn.functional.one_hot(targets, 6).float()
    out, accepted = rejection_sample(one_hot, draft, None, num_draft, torch.rand(50, 3, generator=gen),
                                     torch.empty(50, 4, 6).exponential_(generator=gen))
    expected, expected_accepted = greedy_verify(targets, draft, num_draft)
    assert torch.equal(accepted, expected_accepted) and torch.equal(out, expected)
