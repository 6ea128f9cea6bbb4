"""Lesson 8, hidden: the scheduler under other limits, and the engine loop in more situations."""

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

EOS = 0


def machine_for(num_blocks, block_size, max_num_seqs, max_len):
    """A scheduler state machine for one set of limits (the token budget equals max_len, as Config allows)."""

    class Machine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            limits = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_len, max_model_len=max_len)
            self.scheduler = Scheduler(limits, BlockManager(num_blocks, block_size), {EOS})
            self.added = []

        @rule(prompt_len=st.integers(1, max_len - 1), max_tokens=st.integers(1, 10))
        def arrive(self, prompt_len, max_tokens):
            if -(-(min(prompt_len + max_tokens, max_len) - 1) // block_size) > num_blocks:
                return  # LLM.generate refuses requests that can never fit
            seq = Sequence([1] * prompt_len, SamplingParams(temperature=0.0, max_tokens=max_tokens), block_size)
            self.scheduler.add(seq)
            self.added.append(seq)

        @rule(eos=st.booleans())
        def step(self, eos):
            self.run_step(EOS if eos else 3)

        def run_step(self, token) -> bool:
            seqs, is_prefill = self.scheduler.schedule()
            if not seqs:
                assert self.scheduler.is_finished()
                return False
            assert len(seqs) <= max_num_seqs
            if is_prefill:
                assert sum(len(s) for s in seqs) <= max_len
            assert all(len(s.block_table) == s.num_blocks for s in seqs)
            self.scheduler.postprocess(seqs, [token] * len(seqs))
            return True

        @invariant()
        def consistent(self):
            waiting, running = list(self.scheduler.waiting), list(self.scheduler.running)
            assert not set(map(id, waiting)) & set(map(id, running))
            assert all(s.status is SequenceStatus.WAITING and not s.block_table for s in waiting)
            owned = [b for s in running for b in s.block_table]
            assert len(owned) == len(set(owned))
            assert len(owned) + self.scheduler.block_manager.num_free_blocks == num_blocks

        def teardown(self):
            for _ in range(3000):
                if not self.run_step(3):
                    break
            assert all(s.is_finished for s in self.added)
            assert self.scheduler.block_manager.num_free_blocks == num_blocks

    return Machine


@pytest.mark.hint(1)
@pytest.mark.parametrize("num_blocks,block_size,max_num_seqs,max_len",
                         [(8, 1, 1, 8), (6, 2, 3, 12), (5, 8, 16, 40)])
def test_scheduler_invariants_under_other_limits(num_blocks, block_size, max_num_seqs, max_len):
    """Scheduler invariants hold with one sequence at a time, one-token blocks, and a cache of a few big blocks."""
    run_state_machine_as_test(machine_for(num_blocks, block_size, max_num_seqs, max_len),
                              settings=settings(max_examples=25, stateful_step_count=25, deadline=None))


@pytest.mark.hint(4)
def test_preempted_sequence_is_recomputed_with_its_generated_tokens():
    """A preempted sequence keeps its generated tokens; when re-admitted its prefill covers prompt + completion."""
    limits = SimpleNamespace(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=32)
    scheduler = Scheduler(limits, BlockManager(3, 2), {EOS})
    old = Sequence([1, 2], SamplingParams(temperature=0.0, max_tokens=4), 2)
    new = Sequence([3, 4], SamplingParams(temperature=0.0, max_tokens=4), 2)
    scheduler.add(old)
    scheduler.add(new)
    seqs, _ = scheduler.schedule()
    scheduler.postprocess(seqs, [7, 8])
    seqs, is_prefill = scheduler.schedule()  # both need a second block, one is free: the newest is preempted
    assert not is_prefill and seqs == [old]
    assert new.status is SequenceStatus.WAITING and new.completion_token_ids == [8] and new.block_table == []
    for _ in range(10):
        scheduler.postprocess(seqs, [9] * len(seqs))
        if old.is_finished:
            break
        seqs, _ = scheduler.schedule()
    assert old.is_finished and old.num_completion_tokens == 4
    seqs, is_prefill = scheduler.schedule()
    assert is_prefill and seqs == [new] and len(new) == 3 and len(new.block_table) == 2


def test_step_on_an_idle_engine_does_nothing(make_llm, idle):
    """LLMEngine.step with no requests returns ([], 0) and changes nothing."""
    llm = make_llm()
    assert llm.step() == ([], 0)
    idle(llm)


@pytest.mark.hint(4)
def test_max_model_len_ends_a_request(make_llm, greedy, random_prompt, idle):
    """A request stops at max_model_len tokens (prompt + completion) with finish_reason "length"."""
    llm = make_llm(max_model_len=32, max_num_batched_tokens=32)
    out = llm.generate([random_prompt(30, seed=9)], greedy(10), use_tqdm=False)[0]
    assert len(out["token_ids"]) == 2 and out["finish_reason"] == "length"
    idle(llm)


@pytest.mark.hint(5)
def test_strings_and_token_lists_in_one_call(make_llm, greedy):
    """One generate call may mix string prompts and token-id prompts."""
    llm = make_llm()
    ids = llm.tokenizer.encode("Once upon a time")
    mixed = llm.generate(["Once upon a time", ids], greedy(5), use_tqdm=False)
    assert mixed[0]["token_ids"] == mixed[1]["token_ids"]


@pytest.mark.hint(1)
def test_generating_twice_gives_the_same_results(make_llm, greedy, random_prompt, idle):
    """The same generate call on the same engine twice gives the same outputs and leaves nothing behind."""
    llm = make_llm(num_kvcache_blocks=10, kvcache_block_size=4)
    prompts = [random_prompt(n, seed=n) for n in (3, 14, 8, 20)]
    first = llm.generate(prompts, greedy(9), use_tqdm=False)
    idle(llm)
    assert llm.generate(prompts, greedy(9), use_tqdm=False) == first
    idle(llm)


def test_outputs_match_transformers_teacher_forced(tiny_model_dir, make_llm, greedy, random_prompt):
    """Each generated token is transformers' argmax given the prompt and the tokens generated before it."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    llm = make_llm()
    prompts = [random_prompt(n, seed=50 + n) for n in (5, 16, 31)]
    outputs = llm.generate(prompts, greedy(10), use_tqdm=False)
    with torch.inference_mode():
        for prompt, out in zip(prompts, outputs):
            tokens = out["token_ids"]
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


def record_batches(llm, monkeypatch):
    """Record (number of sequences, tokens fed, is_prefill) for every batch the engine runs."""
    batches = []
    run = llm.model_runner.run

    def recording_run(seqs, is_prefill):
        fed = sum(len(s) - s.num_cached_tokens for s in seqs) if is_prefill else len(seqs)
        batches.append((len(seqs), fed, is_prefill, [s.seq_id for s in seqs]))
        return run(seqs, is_prefill)

    monkeypatch.setattr(llm.model_runner, "run", recording_run)
    return batches


@pytest.mark.hint(2)
def test_engine_batches_respect_the_limits(make_llm, greedy, random_prompt, monkeypatch):
    """The engine never runs more than max_num_seqs sequences or a prefill over max_num_batched_tokens."""
    llm = make_llm(max_num_seqs=5, max_model_len=64, max_num_batched_tokens=64)
    batches = record_batches(llm, monkeypatch)
    rng = random.Random(3)
    prompts = [random_prompt(rng.randint(1, 40), seed=i) for i in range(17)]
    llm.generate(prompts, greedy(6), use_tqdm=False)
    assert batches and all(n <= 5 for n, _, _, _ in batches)
    assert all(fed <= 64 for _, fed, prefill, _ in batches if prefill)


@pytest.mark.hint(2)
def test_a_freed_place_is_filled_while_others_still_run(make_llm, greedy, random_prompt, monkeypatch):
    """Continuous batching: a waiting request is admitted as soon as a place frees, not when the whole batch is done."""
    llm = make_llm(max_num_seqs=2)
    batches = record_batches(llm, monkeypatch)
    prompts = [random_prompt(4, seed=1), random_prompt(4, seed=2), random_prompt(4, seed=3)]
    params = [greedy(2), greedy(12), greedy(3)]
    llm.generate(prompts, params, use_tqdm=False)
    first_ids = batches[0][3]
    late_prefill = next(i for i, (_, _, prefill, _) in enumerate(batches) if prefill and i > 0)
    later_decodes = [ids for _, _, prefill, ids in batches[late_prefill + 1 :] if not prefill]
    assert any(first_ids[1] in ids and len(ids) == 2 for ids in later_decodes), (
        "the third request should decode beside the long second one"
    )


@pytest.mark.hint(3)
def test_heavy_preemption_still_finishes_everything(make_llm, greedy, random_prompt, alone, idle):
    """With room for about one long request at a time, 20 requests all finish with their run-alone tokens."""
    llm = make_llm(max_num_seqs=16, num_kvcache_blocks=8, kvcache_block_size=4)
    prompts = [random_prompt(n, seed=70 + n) for n in range(3, 23)]
    outputs = llm.generate(prompts, greedy(10), use_tqdm=False)
    assert llm.scheduler.num_preemptions > 0
    for prompt, out in zip(prompts, outputs):
        assert out["token_ids"] == alone(llm, prompt, 10)
    idle(llm)
