"""Lesson 19: the engine with speculative decoding: the same greedy tokens, fewer target steps."""

import random

import pytest
import torch

from aios import SamplingParams


@pytest.mark.hint(2)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_ngram_greedy_tokens_equal_the_plain_engine(make_llm, plain, requests, ngram_config, served, idle, k):
    """16 requests that repeat phrases: n-gram speculation with k = 1, 3, 5 gives the plain engine's tokens, and
    some proposals are accepted."""
    prompts, params = requests(16, seed=k)
    llm = make_llm(speculative_config=ngram_config(k), enable_prefix_caching=False)
    before = llm.speculative_stats()["num_accepted_tokens"]
    assert served(llm, prompts, params) == plain(prompts, params)
    assert llm.speculative_stats()["num_accepted_tokens"] > before, "repeated phrases should get some tokens accepted"
    idle(llm)


@pytest.mark.hint(6)
@pytest.mark.parametrize("k", [2, 4])
def test_draft_model_greedy_tokens_equal_the_plain_engine(make_llm, plain, requests, draft_dir, served, idle, k):
    """A different one-layer draft proposes (mostly wrong) tokens: the outputs are still exactly the target's."""
    prompts, params = requests(12, seed=10 + k)
    llm = make_llm(speculative_config={"model": str(draft_dir), "num_speculative_tokens": k})
    assert served(llm, prompts, params) == plain(prompts, params)
    idle(llm)


@pytest.mark.hint(6)
def test_a_draft_identical_to_the_target_accepts_everything(make_llm, plain, requests, tiny_model_dir, served, idle):
    """The target as its own draft: every proposal is accepted, and a request needs about max_tokens / (k + 1) steps."""
    prompts, params = requests(6, seed=3)
    params = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)] * len(prompts)
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 3})
    assert served(llm, prompts, params) == plain(prompts, params)
    stats = llm.speculative_stats()
    assert stats["num_draft_tokens"] > 0 and stats["acceptance_rate"] == 1.0, stats
    assert stats["num_steps"] <= 5, "15 tokens after the prefill, 4 per step: 4 steps (the batch decodes together)"
    idle(llm)


@pytest.mark.hint(4)
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_same_tokens_under_preemption(make_llm, plain, requests, ngram_config, served, idle, prefix_caching):
    """A KV cache too small for the batch (preemptions, speculation shrinking for lack of blocks), prefix caching
    off and on, repeated prompts: the tokens do not change and every block comes back."""
    prompts, params = requests(14, seed=21)
    prompts += [prompts[0], prompts[1] + prompts[0]]
    params += params[:2]
    llm = make_llm(speculative_config=ngram_config(4), num_kvcache_blocks=20, enable_prefix_caching=prefix_caching)
    outputs = served(llm, prompts, params)
    assert llm.scheduler.num_preemptions > 0, "the small cache should have forced preemptions"
    assert outputs == plain(prompts, params)
    idle(llm)


@pytest.mark.hint(5)
@pytest.mark.parametrize("max_tokens", [2, 3, 5, 6, 11])
def test_max_tokens_is_respected_when_several_tokens_are_accepted(make_llm, tiny_model_dir, plain, requests,
                                                                   served, max_tokens):
    """With every proposal accepted (k = 4), a request still ends with exactly max_tokens tokens, the plain ones."""
    prompts, _ = requests(3, seed=max_tokens)
    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)] * 3
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 4})
    outputs = served(llm, prompts, params)
    assert [len(out) for out in outputs] == [max_tokens] * 3
    assert outputs == plain(prompts, params)


@pytest.mark.hint(5)
def test_no_token_after_a_stop_token_is_delivered(make_llm, tiny_model_dir):
    """Requests whose greedy continuation hits EOS mid-proposal stop right at it (finish_reason "stop"), as without speculation."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(1, 30))] for _ in range(30)]
    prompts = [prompts[i] for i in (5, 15, 27)]  # these reach EOS within 40 tokens
    params = SamplingParams(temperature=0.0, max_tokens=40)
    expected = make_llm(num_kvcache_blocks=512).generate(prompts, params, use_tqdm=False)
    assert all(out["finish_reason"] == "stop" for out in expected)
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 4})
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for out, ref in zip(outputs, expected):
        assert out["token_ids"] == ref["token_ids"], "tokens after the stop token were delivered (or lost)"
        assert out["finish_reason"] == "stop"


@pytest.mark.hint(3)
def test_seeded_sampling_is_reproducible(make_llm, requests, draft_dir, served):
    """Temperature > 0 with seeds: the same tokens whatever the batch's order, with a draft and with n-gram lookup."""
    prompts, _ = requests(6, seed=4)
    params = [SamplingParams(temperature=0.8, top_k=40, seed=50 + i, max_tokens=10, ignore_eos=True)
              for i in range(6)]
    for spec in ({"model": str(draft_dir), "num_speculative_tokens": 3},
                 {"method": "ngram", "num_speculative_tokens": 3}):
        llm = make_llm(speculative_config=spec)
        forward = served(llm, prompts, params)
        backward = served(llm, prompts[::-1], params[::-1])[::-1]
        assert forward == backward


@pytest.mark.hint(5)
def test_works_with_chunked_prefill(make_llm, plain, requests, ngram_config, draft_dir, served, idle):
    """With lesson 16's token budget, mixed steps run as before and decode-only steps speculate: same tokens."""
    prompts, params = requests(10, seed=8, longest=60)
    for spec in (ngram_config(3), {"model": str(draft_dir), "num_speculative_tokens": 3}):
        llm = make_llm(speculative_config=spec, enable_chunked_prefill=True, max_num_batched_tokens=16)
        assert served(llm, prompts, params) == plain(prompts, params)
        idle(llm)


@pytest.mark.hint(6)
def test_generate_reports_acceptance(make_llm, tiny_model_dir, requests):
    """Each output carries its request's acceptance counts; the engine's totals add them up."""
    prompts, params = requests(4, seed=2)
    llm = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 2},
                   num_kvcache_blocks=300)
    before = llm.speculative_stats()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    after = llm.speculative_stats()
    proposed = sum(out["spec_decode"]["num_draft_tokens"] for out in outputs)
    accepted = sum(out["spec_decode"]["num_accepted_tokens"] for out in outputs)
    assert proposed == after["num_draft_tokens"] - before["num_draft_tokens"]
    assert accepted == after["num_accepted_tokens"] - before["num_accepted_tokens"] == proposed
    assert after["acceptance_rate"] == 1.0 and after["mean_accepted_length"] > 1.0


@pytest.mark.hint(5)
def test_statistics_only_with_speculation(make_llm, tiny_model_dir):
    """No speculative_config: no statistics and no spec_decode entry; with one, both (max_tokens 1: nothing proposed)."""
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    llm = make_llm()
    assert llm.speculative_stats() is None
    assert "spec_decode" not in llm.generate([[5, 6, 7]], params, use_tqdm=False)[0]
    spec = make_llm(speculative_config={"model": str(tiny_model_dir), "num_speculative_tokens": 2},
                    num_kvcache_blocks=64)
    one = spec.generate([[5, 6, 5, 6]], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)[0]
    assert one["spec_decode"]["num_draft_tokens"] == 0, "a request of one token never decodes"
    out = spec.generate([[5, 6, 5, 6, 5]], params, use_tqdm=False)[0]
    assert out["spec_decode"]["num_draft_tokens"] > 0


@pytest.mark.hint(2)
def test_outputs_match_transformers(tiny_model_dir, make_llm, requests, ngram_config, served):
    """Each generated token is transformers' argmax after the prompt and the tokens before it (k = 4, n-gram)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts, _ = requests(3, seed=31)
    llm = make_llm(speculative_config=ngram_config(4))
    outputs = served(llm, prompts, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    with torch.inference_mode():
        for prompt, tokens in zip(prompts, outputs):
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens
