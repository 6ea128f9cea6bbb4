"""Lesson 12, hidden: the Sampler's distributions after truncation, seeded noise quality, edge cases, engine runs.

Statistical checks use Pearson's chi-square with a fixed torch seed; a correct sampler
fails one with probability ALPHA = 1e-4 over random seeds.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.layers.sampler import Sampler, apply_top_k, apply_top_p, exponential_noise, seeded_uniform

ALPHA = 1e-4
ENGINE_OPTIONS = {**features_up_to(12), "attention_backend": "torch"}
LOGITS = torch.tensor([1.2, 2.0, -0.3, 0.4, 1.0, -1.0, 0.1, -2.0, 0.7, -0.6])


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P-value of Pearson's chi-square test of ``counts`` against ``probs`` (zero-probability cells must be empty)."""
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0, "a token with probability 0 was drawn"
    stat = ((counts[support] - expected[support]) ** 2 / expected[support]).sum()
    dof = torch.tensor(float(support.sum() - 1), dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, stat / 2).item()


def truncated(probs: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """``probs`` restricted to ``keep`` and renormalised."""
    out = torch.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


def sample_counts(num_draws: int, seeds=None, steps=None, **per_row) -> torch.Tensor:
    rows = LOGITS.expand(num_draws, -1).clone()
    tensors = {name: torch.full((num_draws,), value) for name, value in per_row.items()}
    tokens = Sampler()(rows, seeds=seeds, steps=steps, **tensors)
    return torch.bincount(tokens, minlength=LOGITS.numel())


def ranked(probs: torch.Tensor) -> list[int]:
    return probs.argsort(descending=True).tolist()


@pytest.mark.hint(2)
def test_top_k_draws_follow_the_renormalised_top_k_distribution():
    """Top-k sampling: draws follow softmax(logits / T) restricted to the k largest and renormalised."""
    torch.manual_seed(10)
    counts = sample_counts(20_000, temperatures=0.8, top_ks=4)
    probs = torch.softmax(LOGITS / 0.8, dim=-1)
    expected = truncated(probs, ranked(probs)[:4])
    assert chi_square_p_value(counts, expected) > ALPHA, counts.tolist()


@pytest.mark.hint(3)
def test_top_p_draws_follow_the_renormalised_nucleus():
    """Top-p sampling: draws follow the nucleus of softmax(logits / T), renormalised (temperature applied first)."""
    torch.manual_seed(11)
    temperature, top_p = 1.5, 0.8
    probs = torch.softmax(LOGITS / temperature, dim=-1)
    order = ranked(probs)
    size = int((probs[order].cumsum(0) < top_p).sum()) + 1
    counts = sample_counts(20_000, temperatures=temperature, top_ps=top_p)
    assert chi_square_p_value(counts, truncated(probs, order[:size])) > ALPHA, counts.tolist()


@pytest.mark.hint(3)
@pytest.mark.parametrize("unlimited_row", [False, True])
def test_top_p_is_applied_after_top_k_on_the_renormalised_rest(unlimited_row):
    """top_k then top_p: the nucleus is measured on the top-k distribution renormalised, not on the full one
    (also when another row of the batch has no top-k, so the sampler works on the whole vocabulary)."""
    torch.manual_seed(12)
    # Full softmax: top-3 mass is ~0.63, so top_p = 0.6 on the full distribution keeps 3 tokens;
    # on the renormalised top-3 it keeps 2 (0.6 reached after the second token).
    probs = torch.softmax(LOGITS, dim=-1)
    order = ranked(probs)
    top3 = truncated(probs, order[:3])
    assert top3[order[0]] < 0.6 <= top3[order[:2]].sum()
    if unlimited_row:
        rows = LOGITS.expand(10_001, -1)
        top_ks = torch.tensor([3] * 10_000 + [-1])
        tokens = Sampler()(rows, torch.ones(10_001), top_ks=top_ks, top_ps=torch.full((10_001,), 0.6))[:-1]
        counts = torch.bincount(tokens, minlength=LOGITS.numel())
    else:
        counts = sample_counts(10_000, temperatures=1.0, top_ks=3, top_ps=0.6)
    assert set(counts.nonzero().flatten().tolist()) == set(order[:2])
    assert chi_square_p_value(counts, truncated(probs, order[:2])) > ALPHA


@pytest.mark.hint(4)
def test_seeded_draws_over_many_seeds_follow_softmax():
    """Seeded rows are still correct samples: one draw per seed, over 20000 seeds, follows softmax(logits / T)."""
    num_draws = 20_000
    counts = sample_counts(num_draws, seeds=list(range(num_draws)), steps=[3] * num_draws, temperatures=0.7)
    assert chi_square_p_value(counts, torch.softmax(LOGITS / 0.7, dim=-1)) > ALPHA, counts.tolist()


@pytest.mark.hint(4)
def test_seeded_draws_over_many_steps_follow_softmax():
    """One seed, many steps: the draws of steps 0..19999 follow softmax(logits) (the step changes the noise)."""
    num_draws = 20_000
    counts = sample_counts(num_draws, seeds=[2**63 + 11] * num_draws, steps=list(range(num_draws)), temperatures=1.0)
    assert chi_square_p_value(counts, torch.softmax(LOGITS, dim=-1)) > ALPHA, counts.tolist()


@pytest.mark.hint(4)
def test_seeded_uniform_is_uniform_and_not_a_shifted_copy():
    """seeded_uniform fills 16 equal bins evenly, and rows of neighbouring seeds or steps are uncorrelated."""
    values = seeded_uniform(list(range(64)), [0] * 64, 4096)
    counts = torch.bincount((values.flatten() * 16).long(), minlength=16)
    assert chi_square_p_value(counts, torch.full((16,), 1 / 16)) > ALPHA, counts.tolist()
    rows = torch.cat([values[:8], seeded_uniform([0] * 8, list(range(1, 9)), 4096)])
    correlation = torch.corrcoef(rows)
    off_diagonal = correlation[~torch.eye(16, dtype=torch.bool)]
    # Independent rows of 4096 values: |r| above 0.08 has probability ~1e-7 per pair.
    assert off_diagonal.abs().max() < 0.08


@pytest.mark.hint(5)
def test_exponential_noise_is_exponential_and_uses_the_seed_for_seeded_rows():
    """exponential_noise has mean 1 and P(E > 1) = 1/e; a seeded row is exactly -log(seeded_uniform)."""
    torch.manual_seed(13)
    noise = exponential_noise(50, 2000, seeds=[None] * 49 + [99], steps=[0] * 49 + [4])
    assert noise.shape == (50, 2000) and noise.dtype == torch.float32 and bool((noise > 0).all())
    assert abs(noise[:49].mean().item() - 1) < 0.02
    assert abs((noise[:49] > 1).float().mean().item() - math.exp(-1)) < 0.01
    torch.testing.assert_close(noise[49], -torch.log(seeded_uniform([99], [4], 2000)[0]))
    assert abs(noise[49].mean().item() - 1) < 0.1


@pytest.mark.hint(2)
@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=40, unique=True),
    k=st.integers(-1, 45),
)
def test_apply_top_k_property(logits, k):
    """apply_top_k keeps min(k, vocab) tokens (all when k <= 0), never a smaller logit than one it drops."""
    row = torch.tensor(logits, dtype=torch.float32)[None]
    out = apply_top_k(row, torch.tensor([k]))[0]
    kept = torch.isfinite(out)
    expected_count = len(logits) if k <= 0 else min(k, len(logits))
    assert int(kept.sum()) == expected_count
    assert torch.equal(out[kept], row[0][kept])
    if not kept.all():
        assert row[0][kept].min() >= row[0][~kept].max()


@pytest.mark.hint(3)
@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=40, unique=True),
    top_p=st.floats(0.01, 1.0),
)
def test_apply_top_p_property(logits, top_p):
    """apply_top_p keeps a most-likely set whose mass reaches p, and dropping its least likely token falls below p."""
    row = torch.tensor(logits, dtype=torch.float32)[None]
    out = apply_top_p(row, torch.tensor([top_p]))[0]
    kept = torch.isfinite(out)
    probs = torch.softmax(row[0].double(), dim=-1)
    assert kept[probs.argmax()], "the most likely token always survives"
    if not kept.all():
        assert probs[kept].min() >= probs[~kept].max() - 1e-7
    mass = probs[kept].sum().item()
    assert mass >= top_p - 1e-5
    assert mass - probs[kept].min().item() < top_p + 1e-5


@pytest.mark.hint(2)
def test_apply_top_k_keeps_exactly_k_when_logits_tie():
    """apply_top_k keeps exactly k tokens even when several logits tie at the boundary (decide by rank, not by value)."""
    logits = torch.tensor([[1.0, 3.0, 1.0, 1.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    out = apply_top_k(logits, torch.tensor([3, 2]))
    kept = torch.isfinite(out)
    assert kept.sum(dim=-1).tolist() == [3, 2]
    assert kept[0, 1] and kept[0, 5] and kept[0, [0, 2, 3]].sum() == 1


@pytest.mark.hint(2)
def test_top_k_of_one_is_greedy_at_any_temperature():
    """top_k = 1 always returns the argmax, whatever the temperature or seed."""
    torch.manual_seed(14)
    logits = torch.randn(32, 300)
    tokens = Sampler()(logits, torch.full((32,), 5.0), top_ks=torch.ones(32, dtype=torch.long),
                       seeds=list(range(32)), steps=[0] * 32)
    assert torch.equal(tokens, logits.argmax(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.hint(1)
def test_sampler_accepts_half_precision_logits(dtype):
    """Sampler takes float16/bfloat16 logits and returns int64 token ids of shape [rows]."""
    torch.manual_seed(15)
    logits = torch.randn(6, 50).to(dtype)
    tokens = Sampler()(logits, torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 1.0]), top_ks=torch.full((6,), 10),
                       top_ps=torch.full((6,), 0.9))
    assert tokens.shape == (6,) and tokens.dtype == torch.int64
    assert tokens[0] == logits[0].float().argmax() and tokens[3] == logits[3].float().argmax()


def test_no_limit_settings_change_nothing():
    """top_k -1 and top_p 1.0 are no limits: with the same seed the tokens equal those of plain sampling."""
    torch.manual_seed(16)
    logits = torch.randn(8, 64)
    seeds, steps = list(range(100, 108)), [2] * 8
    plain = Sampler()(logits, torch.ones(8), seeds=seeds, steps=steps)
    limited = Sampler()(logits, torch.ones(8), top_ks=torch.full((8,), -1), top_ps=torch.ones(8), seeds=seeds,
                        steps=steps)
    assert torch.equal(plain, limited)


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, **ENGINE_OPTIONS)


@pytest.mark.hint(1)
def test_engine_greedy_requests_unchanged_by_sampled_neighbours(llm):
    """LLM.generate: greedy requests batched with sampled ones give the same tokens as an all-greedy run."""
    prompts = [[3, 4, 5, 6], [100, 200, 300], [7] * 12, [42, 43]]
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    alone = llm.generate([prompts[0], prompts[2]], greedy, use_tqdm=False)
    mixed_params = [greedy, SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True), greedy,
                    SamplingParams(temperature=0.9, top_p=0.8, max_tokens=10, ignore_eos=True)]
    mixed = llm.generate(prompts, mixed_params, use_tqdm=False)
    assert mixed[0]["token_ids"] == alone[0]["token_ids"]
    assert mixed[2]["token_ids"] == alone[1]["token_ids"]


@pytest.mark.hint(5)
def test_engine_seeded_request_survives_preemption(tiny_model_dir):
    """A seeded request gives the same tokens when the scheduler preempts and recomputes it."""
    prompt = [11, 22, 33, 44, 55, 66]
    params = SamplingParams(temperature=1.0, seed=777, max_tokens=40, ignore_eos=True)
    roomy = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, kvcache_block_size=4, **ENGINE_OPTIONS)
    expected = roomy.generate([prompt], params, use_tqdm=False)[0]["token_ids"]
    tight = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=14, kvcache_block_size=4, **ENGINE_OPTIONS)
    others = [SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True)] * 2
    outputs = tight.generate([prompt, [1, 2, 3], [9, 8, 7, 6, 5]], [params, *others], use_tqdm=False)
    assert tight.scheduler.num_preemptions > 0, "the test needs a preemption"
    assert outputs[0]["token_ids"] == expected


@pytest.mark.hint(4)
def test_engine_different_seeds_give_different_completions(llm):
    """LLM.generate: two seeds give different completions, and each seed is repeatable."""
    prompt = [60, 61, 62, 63, 64]
    runs = {seed: llm.generate([prompt] * 2, SamplingParams(temperature=1.0, seed=seed, max_tokens=16), use_tqdm=False)
            for seed in (1, 2)}
    for outputs in runs.values():
        assert outputs[0]["token_ids"] == outputs[1]["token_ids"]
    assert runs[1][0]["token_ids"] != runs[2][0]["token_ids"]


@pytest.mark.gpu
@pytest.mark.hint(4)
def test_seeded_noise_is_the_same_on_cpu_and_gpu():
    """seeded_uniform gives bit-identical noise on the CPU and on a CUDA device (counter-based, no device RNG)."""
    seeds, steps = [0, 5, 2**64 - 1, 123456789], [0, 3, 7, 100]
    cpu = seeded_uniform(seeds, steps, 4096, "cpu")
    gpu = seeded_uniform(seeds, steps, 4096, "cuda")
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.gpu
def test_engine_seed_reproducible_with_every_lesson_12_feature(tiny_model_dir):
    """On a GPU with Triton attention and CUDA graphs, a seeded request gives the same tokens alone and in a batch."""
    llm = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, max_num_seqs=8, **features_up_to(12))
    prompt = [5, 17, 230, 41, 99, 8, 77]
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=2024, max_tokens=24, ignore_eos=True)
    alone = llm.generate([prompt], seeded, use_tqdm=False)[0]["token_ids"]
    others = SamplingParams(temperature=0.7, max_tokens=30, ignore_eos=True)
    batch = llm.generate([[1, 2, 3], prompt, [8] * 17, [400, 401]], [others, seeded, others, others], use_tqdm=False)
    assert batch[1]["token_ids"] == alone
