"""Lesson 16, hidden: chunked prefill under other limits, against transformers, with prefix caching, preemption and two ranks."""

import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from aios import SamplingParams
from aios.engine.block_manager import BlockManager
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Sequence, SequenceStatus


def machine_for(num_blocks, block_size, max_num_seqs, budget, prefix_caching):
    """A state machine of schedule_chunked for one set of limits; prompts share prefixes when prefix caching is on."""
    max_len = 40

    class Machine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            limits = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=max_len)
            self.scheduler = Scheduler(limits, BlockManager(num_blocks, block_size, prefix_caching), {0})
            self.added = []

        @rule(prompt_len=st.integers(1, 30), max_tokens=st.integers(1, 6), family=st.integers(1, 3))
        def arrive(self, prompt_len, max_tokens, family):
            if -(-(min(prompt_len + max_tokens, max_len) - 1) // block_size) > num_blocks:
                return  # LLM.generate refuses requests that can never fit
            tokens = [family * 100 + i for i in range(prompt_len)]
            seq = Sequence(tokens, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), block_size)
            self.scheduler.add(seq)
            self.added.append(seq)

        @rule()
        def step(self):
            self.run_step()

        def run_step(self) -> bool:
            decoding = [s for s in self.scheduler.running if len(s) - s.num_computed_tokens == 1]
            chunks = self.scheduler.schedule_chunked()
            if not chunks:
                assert self.scheduler.is_finished()
                return False
            assert sum(c.num_tokens for c in chunks) <= budget, "the token budget was exceeded"
            assert len(chunks) <= max_num_seqs
            ids = {c.seq.seq_id for c in chunks}
            assert all(s.seq_id in ids or s.status is SequenceStatus.WAITING for s in decoding), "a decode was skipped"
            for c in chunks:
                assert c.start == c.seq.num_computed_tokens >= c.seq.num_cached_tokens and c.end <= len(c.seq)
                assert len(c.seq.block_table) * block_size >= c.end
            self.scheduler.postprocess_chunks(chunks, [3] * len(chunks))
            return True

        @invariant()
        def consistent(self):
            waiting, running = list(self.scheduler.waiting), list(self.scheduler.running)
            assert not set(map(id, waiting)) & set(map(id, running))
            assert all(s.status is SequenceStatus.WAITING and not s.block_table for s in waiting)
            assert all(s.num_computed_tokens < len(s) for s in running)

        def teardown(self):
            for _ in range(4000):
                if not self.run_step():
                    break
            assert all(s.is_finished for s in self.added), "requests never finished"
            manager = self.scheduler.block_manager
            assert manager.num_free_blocks == num_blocks

    return Machine


@pytest.mark.hint(2)
@pytest.mark.parametrize("num_blocks,block_size,max_num_seqs,budget,prefix_caching",
                         [(10, 1, 1, 1, False), (8, 4, 2, 4, True), (16, 2, 4, 5, True)])
def test_chunked_scheduler_under_other_limits(num_blocks, block_size, max_num_seqs, budget, prefix_caching):
    """The budget holds, decodes are never skipped and every request finishes, down to one-token blocks and budgets."""
    machine = machine_for(num_blocks, block_size, max_num_seqs, budget, prefix_caching)
    run_state_machine_as_test(machine, settings=settings(max_examples=15, stateful_step_count=20, deadline=None))


@pytest.mark.hint(5)
def test_outputs_match_transformers_with_a_budget_of_one_block(tiny_model_dir, make_llm, greedy, random_prompt,
                                                               served):
    """With a budget of one block (8 tokens), each generated token is transformers' argmax after the prompt and the tokens before it."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    llm = make_llm(max_num_batched_tokens=8, max_num_seqs=4)
    prompts = [random_prompt(n, seed=60 + n) for n in (5, 23, 40)]
    outputs = served(llm, prompts, greedy(8))
    with torch.inference_mode():
        for prompt, tokens in zip(prompts, outputs):
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


@pytest.mark.hint(1)
def test_a_one_token_chunk_in_the_middle_of_a_prompt_is_not_a_decode(make_llm, unchunked, greedy, random_prompt, idle,
                                                                     finished):
    """Budget 4 with three running decodes leaves one token per step to a long prompt: those chunks are prefills, not decodes."""
    prompts = [random_prompt(3, seed=i) for i in range(3)]
    llm = make_llm(max_num_batched_tokens=4, max_num_seqs=4)
    seqs = [llm.add_request(p, greedy(30)) for p in prompts]
    llm.step()
    long_prompt = random_prompt(12, seed=9)
    long = llm.add_request(long_prompt, greedy(4))
    tokens = []
    for _ in range(11):
        _, num_tokens = llm.step()
        tokens.append(num_tokens)
    assert tokens == [4] * 11 and long.num_completion_tokens == 0
    finished(llm)
    expected = unchunked(prompts + [long_prompt], [greedy(30)] * 3 + [greedy(4)])
    assert [s.completion_token_ids for s in seqs + [long]] == expected
    idle(llm)


@pytest.mark.hint(6)
def test_blocks_become_findable_only_once_a_chunk_computes_them(random_prompt):
    """With prefix caching, a prompt's blocks are registered chunk by chunk, not all when it is admitted."""
    limits = SimpleNamespace(max_num_seqs=2, max_num_batched_tokens=6, max_model_len=64)
    manager = BlockManager(16, 4, enable_prefix_caching=True)
    scheduler = Scheduler(limits, manager, {0})
    seq = Sequence(random_prompt(30, seed=3), SamplingParams(temperature=0.0, max_tokens=2), 4)
    scheduler.add(seq)
    findable = []
    for _ in range(5):
        chunks = scheduler.schedule_chunked()
        findable.append(len(manager.hash_to_block_id))
        scheduler.postprocess_chunks(chunks, [5] * len(chunks))
    assert findable == [1, 3, 4, 6, 7], "after chunks ending at 6, 12, 18, 24, 30: the full blocks of 4 up to there"


@pytest.mark.hint(6)
def test_a_same_prompt_arriving_during_the_prefill_gets_the_right_tokens(make_llm, unchunked, greedy, random_prompt,
                                                                        idle, finished):
    """An identical prompt queued while the first is prefilled gets the same tokens; chunked prompts feed the cache."""
    prompt = random_prompt(61, seed=21)
    llm = make_llm(max_num_batched_tokens=10, max_num_seqs=2, enable_prefix_caching=True)
    first = llm.add_request(prompt, greedy(5))
    llm.step()
    llm.step()
    second = llm.add_request(prompt, greedy(5))
    finished(llm)
    expected = unchunked([prompt], [greedy(5)])[0]
    assert first.completion_token_ids == expected and second.completion_token_ids == expected
    third = llm.add_request(prompt, greedy(5))
    llm.step()
    assert third.num_cached_tokens == 56, "a prompt computed in chunks feeds the prefix cache like any other"
    finished(llm)
    assert third.completion_token_ids == expected
    idle(llm)


@pytest.mark.hint(3)
def test_heavy_preemption_with_prefix_caching_and_small_chunks(make_llm, unchunked, random_prompt, idle, served):
    """Tight KV cache, budget 5 (not a multiple of the block), shared prefixes: every request gets its unchunked tokens."""
    rng = random.Random(8)
    shared = random_prompt(20, seed=8)
    prompts = [shared[: rng.randint(0, 20)] + random_prompt(rng.randint(1, 30), seed=i) for i in range(16)]
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 10), ignore_eos=True) for _ in prompts]
    llm = make_llm(max_num_batched_tokens=5, max_num_seqs=5, num_kvcache_blocks=16, kvcache_block_size=4,
                   enable_prefix_caching=True)
    outputs = served(llm, prompts, params)
    assert llm.scheduler.num_preemptions > 0
    assert outputs == unchunked(prompts, params)
    idle(llm)


@pytest.mark.hint(5)
def test_two_tensor_parallel_ranks_run_the_same_chunks(tiny_model_dir, unchunked, random_prompt):
    """With tensor_parallel_size=2 (gloo on the CPU) every rank gets each chunk: the tokens match the one-rank engine."""
    from aios import LLM
    from aios.config import features_up_to

    prompts = [random_prompt(n, seed=n) for n in (33, 4, 18)]
    params = [SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)] * 3
    llm = LLM(str(tiny_model_dir), device="cpu", tensor_parallel_size=2,
              **{**features_up_to(16), "attention_backend": "torch", "kvcache_block_size": 8, "max_model_len": 128,
                 "max_num_batched_tokens": 8, "max_num_seqs": 4})
    try:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        llm.shutdown()
    assert [o["token_ids"] for o in outputs] == unchunked(prompts, params)
