"""Lesson 8: the engine loop and the user API, LLM(...).generate(prompts, params)."""

import random

import pytest

from aios import SamplingParams


def mixed_requests(count: int, seed: int = 0):
    """``count`` prompts of 1-60 tokens, each with its own max_tokens in 1-24 (greedy, no early EOS)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(1, 60))] for _ in range(count)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24), ignore_eos=True) for _ in prompts]
    return prompts, params


@pytest.mark.hint(3)
def test_64_requests_under_preemption_match_each_run_alone(make_llm, alone, idle):
    """64 mixed requests with preemption forced by a small KV cache give each request's greedy tokens run alone."""
    prompts, params = mixed_requests(64)
    llm = make_llm(num_kvcache_blocks=12, kvcache_block_size=8)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.scheduler.num_preemptions > 0, "the small cache should have forced preemptions"
    for i, (prompt, sp, out) in enumerate(zip(prompts, params, outputs)):
        assert out["token_ids"] == alone(llm, prompt, sp.max_tokens), f"request {i} differs from running alone"
    idle(llm)


@pytest.mark.hint(1)
def test_batched_equals_one_at_a_time(make_llm, idle):
    """The same requests give the same tokens with max_num_seqs=1 (one at a time) and with a large batch."""
    prompts, params = mixed_requests(24, seed=1)
    one_at_a_time = make_llm(max_num_seqs=1).generate(prompts, params, use_tqdm=False)
    batched = make_llm(max_num_seqs=64).generate(prompts, params, use_tqdm=False)
    assert [o["token_ids"] for o in batched] == [o["token_ids"] for o in one_at_a_time]
    idle(make_llm(max_num_seqs=64))


@pytest.mark.hint(5)
def test_results_come_back_in_prompt_order_with_text(make_llm, greedy):
    """generate returns one dict per prompt, in prompt order, with "text" decoded from "token_ids"."""
    llm = make_llm()
    prompts = ["The cat", "A much longer prompt about the history of the river and its bridges", "Hi"]
    outputs = llm.generate(prompts, greedy(6), use_tqdm=False)
    assert len(outputs) == 3
    for prompt, out in zip(prompts, outputs):
        assert out == llm.generate([prompt], greedy(6), use_tqdm=False)[0]
        assert len(out["token_ids"]) == 6
        assert out["text"] == llm.tokenizer.decode(out["token_ids"], skip_special_tokens=True)


@pytest.mark.hint(5)
def test_token_id_prompts_and_one_params_per_prompt(make_llm, greedy, random_prompt, alone):
    """Prompts may be token-id lists, and each may have its own SamplingParams (max_tokens honoured per request)."""
    llm = make_llm()
    prompts = [random_prompt(n, seed=n) for n in (4, 9, 2)]
    outputs = llm.generate(prompts, [greedy(3), greedy(7), greedy(1)], use_tqdm=False)
    assert [len(o["token_ids"]) for o in outputs] == [3, 7, 1]
    assert all(o["finish_reason"] == "length" for o in outputs)
    assert outputs[1]["token_ids"] == alone(llm, prompts[1], 7)


@pytest.mark.hint(4)
def test_eos_stops_a_request_unless_ignored(make_llm, greedy, random_prompt, alone, idle):
    """A request stops right after an EOS token (finish_reason "stop"); with ignore_eos it runs to max_tokens."""
    llm = make_llm()
    prompt = random_prompt(12, seed=40)
    free_run = alone(llm, prompt, 10)
    eos = free_run[4]
    saved = set(llm.scheduler.eos_token_ids)
    llm.scheduler.eos_token_ids = saved | {eos}
    try:
        stopped, ignored = llm.generate([prompt, prompt], [greedy(10), greedy(10, ignore_eos=True)], use_tqdm=False)
    finally:
        llm.scheduler.eos_token_ids = saved
    assert stopped["token_ids"] == free_run[: free_run.index(eos) + 1] and stopped["finish_reason"] == "stop"
    assert ignored["token_ids"] == free_run and ignored["finish_reason"] == "length"
    idle(llm)


def test_step_runs_a_prefill_then_decodes(make_llm, greedy, random_prompt):
    """LLMEngine.step: the first step prefills the prompts (positive token count), later steps decode (negative)."""
    llm = make_llm()
    a = llm.add_request(random_prompt(5, seed=1), greedy(3))
    b = llm.add_request(random_prompt(8, seed=2), greedy(3))
    finished, num_tokens = llm.step()
    assert finished == [] and num_tokens == 13
    assert len(a) == 6 and len(b) == 9
    finished, num_tokens = llm.step()
    assert num_tokens == -2
    finished, _ = llm.step()
    assert sorted(s.seq_id for s in finished) == sorted([a.seq_id, b.seq_id]) and llm.is_finished()


@pytest.mark.hint(5)
def test_generate_shows_a_progress_bar(make_llm, greedy, capsys):
    """generate draws a progress bar (on stderr) unless use_tqdm=False."""
    llm = make_llm()
    llm.generate(["Hello there"], greedy(2))
    assert "Generating" in capsys.readouterr().err
    llm.generate(["Hello there"], greedy(2), use_tqdm=False)
    assert "Generating" not in capsys.readouterr().err
