"""Lesson 19, hidden: other proposals and limits, three positions of rejection sampling, other block sizes,
draft models under preemption and chunks, and transformers' tokens."""

import random

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from aios import SamplingParams
from aios.spec.ngram import propose_ngram
from aios.spec.rejection import greedy_verify, rejection_sample


def p_value(observed, probs):
    from scipy.stats import chisquare

    total, mass = float(sum(observed)), float(sum(probs))
    return float(chisquare([float(o) for o in observed], [p / mass * total for p in probs]).pvalue)


@pytest.mark.hint(1)
@pytest.mark.parametrize("tokens, k, low, high, expected", [
    ([1, 2, 3, 1, 2, 3, 1, 2], 3, 2, 2, [3, 1, 2]),
    ([1, 2, 3, 1, 2, 3, 1, 2], 10, 1, 5, [3, 1, 2, 3, 1, 2, 3, 1, 2, 3]),
    ([6, 6, 6, 6, 6], 2, 1, 4, [6, 6]),
    ([1, 9, 2, 1, 9, 3, 1, 9], 2, 1, 2, [3, 1]),
    ([1, 9, 2, 1, 9, 3, 1, 9], 2, 3, 4, []),
    ([5, 1, 2, 3, 5, 1, 2, 4, 1, 2, 3], 2, 1, 3, [5, 1]),
])
def test_ngram_lookup_other_cases(tokens, k, low, high, expected):
    """n-gram lookup: exact n-gram size, a k beyond the text (an overlapping copy), runs of one token, recency,
    min_n above every match."""
    assert propose_ngram(tokens, k, low, high) == expected


@pytest.mark.hint(2)
def test_greedy_verify_rows_of_every_length():
    """Rows with 0..4 proposals, each accepted up to every possible point, give the expected tokens."""
    target = torch.arange(10, 15).expand(25, 5)
    draft, num_draft, expected_accepted = [], [], []
    for count in range(5):
        for accepted in range(count + 1):
            row = [10 + j if j < accepted else 99 for j in range(4)]
            draft.append(row)
            num_draft.append(count)
            expected_accepted.append(accepted)
    rows = len(draft)
    tokens, accepted = greedy_verify(target[:rows], torch.tensor(draft), torch.tensor(num_draft))
    assert accepted.tolist() == expected_accepted
    for row, n in zip(tokens.tolist(), expected_accepted):
        assert row == list(range(10, 11 + n)) + [-1] * (4 - n)


@pytest.mark.hint(3)
def test_rejection_sampling_keeps_every_positions_distribution():
    """Three proposals from three different draft distributions: each emitted position follows its target
    distribution (chi-square), and the acceptance rate of the first is sum(min(p, q))."""
    gen = torch.Generator().manual_seed(11)
    rows, vocab = 40000, 5
    p = torch.softmax(torch.randn(4, vocab, generator=gen) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(3, vocab, generator=gen) * 1.5, dim=-1)
    target = p.expand(rows, 4, vocab).contiguous()
    draft_probs = q.expand(rows, 3, vocab).contiguous()
    tokens = torch.stack([torch.multinomial(draft_probs[:, j], 1, generator=gen).squeeze(1) for j in range(3)], 1)
    out, accepted = rejection_sample(target, tokens, draft_probs, torch.full((rows,), 3), torch.rand(rows, 3, generator=gen),
                                     torch.empty(rows, 4, vocab).exponential_(generator=gen))
    for j in range(4):
        reached = accepted >= j
        observed = torch.bincount(out[reached, j], minlength=vocab).tolist()
        assert p_value(observed, p[j].tolist()) > 1e-4, f"position {j} does not follow the target's distribution"
    rate = (accepted >= 1).float().mean().item()
    assert abs(rate - torch.minimum(p[0], q[0]).sum().item()) < 0.015


@pytest.mark.hint(3)
def test_rows_with_fewer_proposals_draw_their_bonus_from_their_own_position():
    """A row with one proposal (of K = 3) that keeps it draws the next token from position 1's distribution."""
    rows, vocab = 20000, 4
    gen = torch.Generator().manual_seed(3)
    p = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    target = p.expand(rows, 4, vocab).contiguous()
    tokens = torch.tensor([1, 0, 0]).expand(rows, 3).contiguous()
    out, accepted = rejection_sample(target, tokens, None, torch.ones(rows, dtype=torch.int64),
                                     torch.rand(rows, 3, generator=gen),
                                     torch.empty(rows, 4, vocab).exponential_(generator=gen))
    assert accepted.tolist() == [1] * rows, "p(1) = 1 at position 0: always kept, never more than num_draft"
    assert (out[:, 2:] == -1).all()
    assert p_value(torch.bincount(out[:, 1], minlength=vocab).tolist(), p[1].tolist()) > 1e-4


@pytest.mark.hint(4)
@pytest.mark.parametrize("block_size", [1, 3])
def test_rollback_state_machine_with_other_block_sizes(block_size):
    """The rollback state machine with blocks of 1 and 3 tokens: no lost block, no wrong count, no false prefix."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tests" / "lesson19" / "test_l19_rollback.py"
    spec = importlib.util.spec_from_file_location(f"l19_rollback_{block_size}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.BLOCK = block_size
    run_state_machine_as_test(module.RollbackMachine, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)))


@pytest.mark.hint(6)
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_draft_model_under_preemption(make_llm, plain, requests, draft_dir, served, idle, prefix_caching):
    """A draft model with a KV cache too small for the batch (preemption, recomputation of both caches): same tokens."""
    prompts, params = requests(12, seed=40)
    prompts += [prompts[2], prompts[3] + prompts[2]]
    params += params[2:4]
    llm = make_llm(speculative_config={"model": str(draft_dir), "num_speculative_tokens": 3}, num_kvcache_blocks=20,
                   enable_prefix_caching=prefix_caching)
    assert served(llm, prompts, params) == plain(prompts, params)
    assert llm.scheduler.num_preemptions > 0
    idle(llm)


@pytest.mark.hint(6)
def test_identical_draft_accepts_everything_under_preemption_and_prefix_caching(make_llm, plain, requests,
                                                                                tiny_model_dir, served, idle):
    """The target as draft, with preemptions and prefix-cache hits: the draft's cache stays exact, so every
    proposal is still accepted."""
    prompts, params = requests(10, seed=41)
    prompts += [prompts[0], prompts[0] + prompts[1]]
    params += params[:2]
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 3},
                   num_kvcache_blocks=22, enable_prefix_caching=True)
    assert served(llm, prompts, params) == plain(prompts, params)
    assert served(llm, prompts, params) == plain(prompts, params), "again, with the prefixes cached"
    assert llm.speculative_stats()["acceptance_rate"] == 1.0
    idle(llm)


@pytest.mark.hint(6)
def test_sampled_identical_draft_accepts_everything(make_llm, requests, tiny_model_dir, served):
    """Temperature 0.7, top-p 0.9, the target as draft: q == p at every position, so every proposal is kept."""
    prompts, _ = requests(5, seed=42)
    params = [SamplingParams(temperature=0.7, top_p=0.9, seed=i, max_tokens=9, ignore_eos=True) for i in range(5)]
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 4},
                   num_kvcache_blocks=200)
    outputs = served(llm, prompts, params)
    assert [len(out) for out in outputs] == [9] * 5
    assert llm.speculative_stats()["acceptance_rate"] == 1.0


@pytest.mark.hint(5)
def test_chunked_prefill_with_preemption(make_llm, plain, requests, draft_dir, served, idle):
    """Token budget 8, a small cache, a draft model: prompts in chunks, preemptions, the same tokens."""
    prompts, params = requests(10, seed=43, longest=50)
    llm = make_llm(speculative_config={"model": str(draft_dir), "num_speculative_tokens": 2},
                   enable_chunked_prefill=True, max_num_batched_tokens=8, num_kvcache_blocks=24)
    assert served(llm, prompts, params) == plain(prompts, params)
    idle(llm)


@pytest.mark.hint(2)
@pytest.mark.parametrize("k", [1, 7])
def test_draft_outputs_match_transformers(tiny_model_dir, make_llm, requests, draft_dir, served, k):
    """With a draft model, each generated token is transformers' argmax after the prompt and the tokens before it."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts, _ = requests(3, seed=44 + k)
    llm = make_llm(speculative_config={"model": str(draft_dir), "num_speculative_tokens": k})
    outputs = served(llm, prompts, SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True))
    with torch.inference_mode():
        for prompt, tokens in zip(prompts, outputs):
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


@pytest.mark.hint(5)
def test_max_model_len_is_respected(make_llm, tiny_model_dir, served, idle):
    """Requests that run into max_model_len (40) with every proposal accepted end at exactly 40 tokens."""
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 490) for _ in range(n)] for n in (30, 33, 38)]
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 4}, max_model_len=40)
    outputs = served(llm, prompts, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    assert [len(p) + len(o) for p, o in zip(prompts, outputs)] == [40, 40, 40]
    idle(llm)
