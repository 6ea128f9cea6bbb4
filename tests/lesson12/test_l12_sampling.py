"""Lesson 12: the Sampler — temperature, top-k, top-p and reproducible per-request seeds.

Sampling is random, so most checks are statistical. Each one draws many tokens with
a fixed torch seed (so a run is repeatable) and compares the counts with the
distribution they should follow using Pearson's chi-square test. A correct sampler
fails a test with probability ALPHA = 1e-4 over random seeds (the false-alarm rate);
a wrong one (temperature ignored, a truncation off by one, noise shared between rows)
is rejected with a p-value many orders of magnitude smaller.
"""

import pytest
import torch

from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.layers.sampler import Sampler, apply_top_k, apply_top_p, sampling_tensors, seeded_uniform

ALPHA = 1e-4
# The lesson's mechanisms up to 12; attention stays on the PyTorch path (lesson 7), which is
# fast on the CPU and is not what this lesson is about.
ENGINE_OPTIONS = {**features_up_to(12), "attention_backend": "torch"}

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5])


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P-value of Pearson's chi-square test of ``counts`` against ``probs`` (zero-probability cells must be empty)."""
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0, "a token with probability 0 was drawn"
    stat = ((counts[support] - expected[support]) ** 2 / expected[support]).sum()
    dof = torch.tensor(float(support.sum() - 1), dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, stat / 2).item()


def draw_counts(logits: torch.Tensor, num_draws: int, **per_row) -> torch.Tensor:
    """Sample ``num_draws`` rows of the same logits in one call; returns counts per token."""
    rows = logits.expand(num_draws, -1).clone()
    tensors = {name: torch.full((num_draws,), value) for name, value in per_row.items()}
    tokens = Sampler()(rows, **tensors)
    return torch.bincount(tokens, minlength=logits.numel())


@pytest.mark.hint(1)
def test_greedy_rows_in_a_mixed_batch_take_the_argmax():
    """Rows with temperature 0 return the argmax even when other rows of the same call are sampled."""
    torch.manual_seed(0)
    logits = torch.randn(64, 100)
    temperatures = torch.tensor([0.0, 1.0, 0.0, 0.7] * 16)
    for _ in range(5):
        tokens = Sampler()(logits, temperatures)
        assert tokens.shape == (64,) and tokens.dtype == torch.int64
        greedy = temperatures == 0
        assert torch.equal(tokens[greedy], logits[greedy].argmax(dim=-1))
    # The sampled rows really are sampled: at temperature 1 over 100 tokens they leave the argmax.
    assert not torch.equal(tokens[~greedy], logits[~greedy].argmax(dim=-1))


@pytest.mark.hint(1)
def test_samples_follow_softmax_of_logits_over_temperature():
    """Per-row temperatures in one call: each row's draws follow softmax(logits / its temperature)."""
    torch.manual_seed(1)
    temperatures = torch.tensor([0.5, 1.0, 2.0]).repeat(20_000)
    tokens = Sampler()(LOGITS.expand(len(temperatures), -1).clone(), temperatures).view(-1, 3)
    for column, temperature in enumerate([0.5, 1.0, 2.0]):
        counts = torch.bincount(tokens[:, column], minlength=8)
        expected = torch.softmax(LOGITS / temperature, dim=-1)
        assert chi_square_p_value(counts, expected) > ALPHA, f"temperature {temperature}: {counts.tolist()}"
        # The test has teeth: the same counts are far from the untempered softmax.
        if temperature != 1.0:
            assert chi_square_p_value(counts, torch.softmax(LOGITS, dim=-1)) < 1e-12


@pytest.mark.hint(2)
@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_top_k_never_emits_a_token_outside_the_k_largest(top_k):
    """With top_k = k only the k largest logits are ever drawn, and each of them is (temperature 2)."""
    torch.manual_seed(2)
    logits = torch.randn(50)
    counts = draw_counts(logits, 5000, temperatures=2.0, top_ks=top_k)
    allowed = set(logits.topk(top_k).indices.tolist())
    drawn = set(counts.nonzero().flatten().tolist())
    assert drawn == allowed


@pytest.mark.hint(3)
@pytest.mark.parametrize("top_p,nucleus_size", [(0.3, 1), (0.5, 2), (0.7, 3), (0.9, 5)])
def test_top_p_never_emits_a_token_outside_the_nucleus(top_p, nucleus_size):
    """With top_p = p only the smallest most-likely set with mass >= p is drawn (probabilities 0.4, 0.2, 0.15, ...)."""
    torch.manual_seed(3)
    probs = torch.tensor([0.4, 0.2, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01])  # cumulative: .4 .6 .75 .85 .93 .97 .99 1
    order = torch.randperm(8)  # the most likely tokens need not come first
    logits = torch.empty(8)
    logits[order] = probs.log()
    counts = draw_counts(logits, 4000, temperatures=1.0, top_ps=top_p)
    drawn = set(counts.nonzero().flatten().tolist())
    assert drawn == set(order[:nucleus_size].tolist())


@pytest.mark.hint(2)
def test_apply_top_k_keeps_exactly_the_k_largest_logits():
    """apply_top_k keeps each row's k largest logits unchanged and sets the rest to -inf; -1 and 0 keep all."""
    torch.manual_seed(4)
    logits = torch.randn(5, 30)
    top_ks = torch.tensor([1, 4, -1, 0, 30])
    out = apply_top_k(logits, top_ks)
    assert out.shape == logits.shape
    for row, k in enumerate([1, 4, 30, 30, 30]):
        kept = torch.isfinite(out[row]).nonzero().flatten()
        assert set(kept.tolist()) == set(logits[row].topk(k).indices.tolist())
        assert torch.equal(out[row, kept], logits[row, kept])


@pytest.mark.hint(3)
def test_apply_top_p_keeps_the_smallest_set_reaching_p():
    """apply_top_p keeps the most likely tokens until their mass first reaches p, per row; p = 1 keeps all."""
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.35], [0.25, 0.25, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]])
    out = apply_top_p(probs.log(), torch.tensor([0.8, 0.5, 1.0]))
    kept = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in out]
    assert kept[0] == {1, 3}  # 0.5 < 0.8 <= 0.85
    assert 2 in kept[1] and len(kept[1]) == 2 and kept[1] <= {0, 1, 2}  # 0.3, then one of the two 0.25s
    assert kept[2] == {0, 1, 2, 3}
    assert torch.equal(out[0, [1, 3]], probs[0, [1, 3]].log())


@pytest.mark.hint(3)
@pytest.mark.parametrize("top_p,kept", [(0.5, {2}), (0.75, {2, 0}), (0.875, {2, 0, 1})])
def test_apply_top_p_stops_as_soon_as_the_mass_reaches_p_exactly(top_p, kept):
    """A set whose mass equals p exactly already reaches p: the next token is dropped (mass before it is not < p).

    Probabilities that are powers of two make the sums exact in float32.
    """
    probs = torch.tensor([[0.25, 0.125, 0.5, 0.0625, 0.0625]])
    out = apply_top_p(probs.log(), torch.tensor([top_p]))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == kept


@pytest.mark.hint(4)
def test_seeded_uniform_is_a_function_of_seed_step_and_token():
    """seeded_uniform gives values in (0, 1) that depend only on (seed, step, token): not on the other rows."""
    batch = seeded_uniform([7, 123, 7, 2**40 + 7], [0, 5, 1, 0], 1000)
    assert batch.shape == (4, 1000) and batch.dtype == torch.float32
    assert 0 < batch.min() and batch.max() < 1
    alone = seeded_uniform([123], [5], 1000)
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(seeded_uniform([7], [0], 1000)[0], batch[0])
    # Another step, or a seed that differs only in its high bits, is other noise.
    assert not torch.equal(batch[0], batch[2]) and not torch.equal(batch[0], batch[3])
    assert 0.45 < batch.mean() < 0.55


@pytest.mark.hint(5)
def test_a_seeded_row_draws_the_same_token_whatever_shares_its_batch():
    """A seeded row's token depends on (logits, seed, step) only: not on its row index or its neighbours."""
    torch.manual_seed(5)
    logits = torch.randn(6, 200)
    target = logits[3].clone()
    for step in range(20):
        alone = Sampler()(target[None], torch.tensor([1.0]), seeds=[42], steps=[step])
        seeds = [None, 42 + step, 7, 42, None, 42]
        steps = [0, step, 3, step, 9, step + 1]
        batch = Sampler()(logits, torch.ones(6), seeds=seeds, steps=steps)
        assert batch[3] == alone[0]


@pytest.mark.hint(6)
def test_a_seeded_top_k_row_draws_the_same_token_whether_the_batch_narrows_the_vocabulary_or_not():
    """With top-k (and top-p) a seeded row draws the same token in a batch where every row has a top-k
    (the sampler may work on K candidates) as in one with an unlimited row (the whole vocabulary)."""
    torch.manual_seed(6)
    logits = torch.randn(4, 300) * 3
    for step in range(20):
        seeds, steps = [11, 12, 13, 14], [step] * 4
        top_ps = torch.tensor([1.0, 0.9, 0.8, 0.95])
        narrowed = Sampler()(logits, torch.ones(4), top_ks=torch.tensor([5, 40, 3, 17]), top_ps=top_ps,
                             seeds=seeds, steps=steps)
        whole = Sampler()(logits, torch.ones(4), top_ks=torch.tensor([5, 40, 3, -1]), top_ps=top_ps,
                          seeds=seeds, steps=steps)
        assert narrowed[:3].tolist() == whole[:3].tolist()
        assert logits[2].topk(3).indices.tolist().count(narrowed[2].item()) == 1


#: Batches of settings for the host-settings test: (vocabulary size, one SamplingParams keyword dict per row).
HOST_SETTINGS_BATCHES = {
    "every-sampled-row-has-top-k": (300, [dict(temperature=0.0, top_k=3), dict(temperature=0.8, top_k=20, seed=0),
                                          dict(temperature=1.0, top_k=5, top_p=0.9),
                                          dict(temperature=0.7, top_k=50, top_p=0.95, seed=7)]),
    "an-unlimited-sampled-row": (300, [dict(temperature=0.8, top_k=20, seed=1), dict(temperature=1.0, top_p=0.9),
                                       dict(temperature=0.0), dict(temperature=1.3, top_k=4, seed=2)]),
    "temperature-only": (300, [dict(temperature=1.0), dict(temperature=0.5, seed=3), dict(temperature=0.0)]),
    "limits-that-limit-nothing": (200, [dict(temperature=1.0, top_k=200), dict(temperature=0.9, top_k=10**6, seed=4),
                                        dict(temperature=1.0, top_p=1 - 1e-9)]),  # top_p is 1.0 in float32
    "greedy-rows-with-top-k": (300, [dict(temperature=0.0, top_k=5), dict(temperature=1.0, seed=5)]),
}


@pytest.mark.hint(6)
@pytest.mark.parametrize("batch", list(HOST_SETTINGS_BATCHES))
def test_host_settings_and_device_tensors_give_the_same_tokens(batch):
    """sampling_tensors passes the settings' host copies (``host``) so the sampler decides without reading the
    device; with them and without them (the sampler then reads its tensors), the same torch seed gives the same
    tokens, seeded or not, on top-k candidates or the whole vocabulary."""
    vocab_size, rows = HOST_SETTINGS_BATCHES[batch]
    params = [SamplingParams(**row) for row in rows] * 16  # many draws per call: a wrong decision shows
    torch.manual_seed(12)
    for step in range(6):
        logits = torch.randn(len(params), vocab_size) * 3
        tensors = sampling_tensors(params, [step + row for row in range(len(params))], "cpu")
        assert "host" in tensors, "sampling_tensors should pass the host copies of the settings as `host`"
        fallback = {name: value.clone() if isinstance(value, torch.Tensor) else value
                    for name, value in tensors.items() if name != "host"}
        torch.manual_seed(100 + step)
        with_host = Sampler()(logits, **tensors)
        torch.manual_seed(100 + step)
        without_host = Sampler()(logits, **fallback)
        assert with_host.tolist() == without_host.tolist(), f"step {step}"


@pytest.mark.hint(5)
def test_seed_zero_is_a_seed():
    """seed=0 is a seed like any other (only None means unseeded): the same tokens whatever torch's generator did."""
    logits = torch.linspace(-2, 2, 16 * 200).view(16, 200)
    draws = []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)
        draws.append(Sampler()(logits, torch.ones(16), seeds=[0] * 16, steps=list(range(16))).tolist())
    assert draws[0] == draws[1]


@pytest.mark.hint(1)
def test_a_small_temperature_still_samples():
    """Only temperature 0 is greedy: at 0.05, two tokens whose logits differ by 0.02 are both drawn (p = 0.6 / 0.4)."""
    torch.manual_seed(7)
    counts = draw_counts(torch.tensor([1.0, 0.98, -5.0]), 2000, temperatures=0.05)
    assert chi_square_p_value(counts, torch.softmax(torch.tensor([1.0, 0.98, -5.0]) / 0.05, dim=-1)) > ALPHA, (
        counts.tolist())


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, **ENGINE_OPTIONS)


@pytest.mark.hint(5)
def test_engine_same_seed_same_tokens_alone_and_in_a_batch(llm):
    """LLM.generate: a seeded request gives the same tokens alone and in the middle of a mixed batch."""
    prompt = [5, 17, 230, 41, 99, 8, 77]
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate([prompt], seeded, use_tqdm=False)[0]["token_ids"]
    again = llm.generate([prompt], seeded, use_tqdm=False)[0]["token_ids"]
    assert alone == again and len(alone) == 12
    others = [
        SamplingParams(temperature=0.8, max_tokens=5, ignore_eos=True),
        seeded,
        SamplingParams(temperature=1.3, top_k=20, top_p=0.9, seed=5, max_tokens=15, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True),
    ]
    prompts = [[300, 2, 3], prompt, [9] * 20, [44, 45, 46, 47]]
    batch = llm.generate(prompts, others, use_tqdm=False)
    assert batch[1]["token_ids"] == alone
    other_seed = SamplingParams(temperature=1.0, seed=4321, max_tokens=12, ignore_eos=True)
    assert llm.generate([prompt], other_seed, use_tqdm=False)[0]["token_ids"] != alone
