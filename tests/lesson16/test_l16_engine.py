"""Lesson 16: the engine with chunked prefill: the same tokens as without, in budget-sized steps."""

import math
import random

import pytest
import torch

from aios import SamplingParams


def mixed_requests(count: int, seed: int = 0, longest: int = 70):
    """``count`` prompts of 1-``longest`` tokens, each with its own max_tokens in 1-12 (greedy, no early EOS)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(1, longest))] for _ in range(count)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 12), ignore_eos=True) for _ in prompts]
    return prompts, params


@pytest.mark.hint(5)
def test_a_long_prompt_is_prefilled_in_ceil_len_over_budget_steps(make_llm, greedy, random_prompt, idle,
                                                                  finished):
    """A 50-token prompt with a budget of 16 is prefilled in 4 steps of 16, 16, 16 and 2 tokens; then it decodes."""
    llm = make_llm(max_num_batched_tokens=16, max_num_seqs=4)
    seq = llm.add_request(random_prompt(50, seed=1), greedy(3))
    steps = [llm.step()[1] for _ in range(math.ceil(50 / 16))]
    assert steps == [16, 16, 16, 2], "each step computes at most the budget, the last chunk the rest"
    assert seq.num_completion_tokens == 1, "the first token comes with the last chunk, not before"
    assert llm.step()[1] == -1, "a step of decodes only counts as a decode step"
    finished(llm)
    idle(llm)


@pytest.mark.hint(5)
@pytest.mark.parametrize("budget", [8, 13, 32])
def test_same_tokens_as_the_unchunked_engine(make_llm, unchunked, budget, idle, served):
    """24 mixed requests give, request by request, the greedy tokens of lesson 8's prefill-first engine (several budgets)."""
    prompts, params = mixed_requests(24, seed=budget)
    llm = make_llm(max_num_batched_tokens=budget, max_num_seqs=4, enable_prefix_caching=False)
    assert served(llm, prompts, params) == unchunked(prompts, params)
    idle(llm)


@pytest.mark.hint(2)
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_same_tokens_under_preemption(make_llm, unchunked, idle, served, prefix_caching):
    """With a KV cache too small for all requests (preemption mid-prefill and mid-decode) the tokens do not change,
    with prefix caching off and on (a prompt preempted mid-prefill must leave no findable block it never wrote)."""
    prompts, params = mixed_requests(20, seed=5)
    prompts += [prompts[0][:40] + [7] * 20, prompts[0]]  # prefixes of an earlier prompt, for the prefix cache
    params += params[:2]
    llm = make_llm(max_num_batched_tokens=8, max_num_seqs=8, num_kvcache_blocks=14,
                   enable_prefix_caching=prefix_caching)
    outputs = served(llm, prompts, params)
    assert llm.scheduler.num_preemptions > 0, "the small cache should have forced preemptions"
    assert outputs == unchunked(prompts, params)
    idle(llm)


@pytest.mark.hint(6)
def test_same_tokens_with_prefix_caching(make_llm, unchunked, random_prompt, idle, served):
    """Requests sharing long prefixes, some arriving while others still prefill, give the unchunked tokens."""
    shared = random_prompt(37, seed=9)
    prompts = [shared + random_prompt(n, seed=n) for n in (3, 11, 1, 20)] + [shared[:30], shared]
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)] * len(prompts)
    expected = unchunked(prompts, params)
    llm = make_llm(max_num_batched_tokens=12, max_num_seqs=4, enable_prefix_caching=True)
    assert served(llm, prompts, params) == expected
    assert served(llm, prompts, params) == expected, "the second time, with every prefix in the cache"
    idle(llm)


@pytest.mark.hint(2)
def test_running_requests_decode_in_every_step_while_a_long_prompt_prefills(make_llm, greedy, random_prompt, idle,
                                                                            finished):
    """Two short requests keep getting one token per step while a 100-token prompt is prefilled beside them."""
    llm = make_llm(max_num_batched_tokens=10, max_num_seqs=4)
    a = llm.add_request(random_prompt(4, seed=1), greedy(20))
    b = llm.add_request(random_prompt(5, seed=2), greedy(20))
    llm.step()
    long = llm.add_request(random_prompt(100, seed=3), greedy(2))
    for i in range(13):
        before = (a.num_completion_tokens, b.num_completion_tokens)
        llm.step()
        assert (a.num_completion_tokens, b.num_completion_tokens) == (before[0] + 1, before[1] + 1), (
            f"step {i}: a running request did not decode while the long prompt prefilled")
    assert long.num_completion_tokens == 1, "8 tokens per step after the two decodes: 100 tokens take 13 steps"
    finished(llm)
    idle(llm)


@pytest.mark.hint(4)
def test_seeded_sampling_is_unchanged_by_chunking(make_llm, random_prompt, served):
    """Seeded sampling (lesson 12) draws the same tokens with and without chunks: a prompt samples only once it is complete."""
    prompts = [random_prompt(n, seed=n) for n in (45, 7, 30)]
    params = [SamplingParams(temperature=0.9, top_k=50, top_p=0.9, seed=100 + i, max_tokens=8, ignore_eos=True)
              for i in range(3)]
    plain = make_llm(enable_chunked_prefill=False, enable_prefix_caching=False, num_kvcache_blocks=256)
    chunked = make_llm(max_num_batched_tokens=9, max_num_seqs=3)
    expected = [o["token_ids"] for o in plain.generate(prompts, params, use_tqdm=False)]
    assert served(chunked, prompts, params) == expected


@pytest.mark.hint(5)
def test_triton_attention_runs_mixed_steps(make_llm, unchunked, idle, served):
    """With lesson 9's Triton kernels (interpreted on the CPU, compiled on a GPU) mixed steps give the same tokens."""
    prompts, params = mixed_requests(4, seed=11, longest=30)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled Triton kernels need GPU tensors
    llm = make_llm(attention_backend="triton", max_num_batched_tokens=8, max_num_seqs=4, max_model_len=64,
                   device=device)
    assert served(llm, prompts, params) == unchunked(prompts, params, device=device)
    idle(llm)
