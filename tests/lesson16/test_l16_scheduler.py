"""Lesson 16: the token-budget scheduler on its own: chunks, decodes first, the budget, and its invariants."""

from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from aios.engine.block_manager import BlockManager
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Chunk, Sequence, SequenceStatus
from aios.sampling_params import SamplingParams

EOS = 0


def make_scheduler(num_blocks=32, block_size=4, max_num_seqs=4, budget=8, max_model_len=64, prefix_caching=False):
    limits = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=max_model_len)
    return Scheduler(limits, BlockManager(num_blocks, block_size, prefix_caching), eos_token_ids={EOS})


def seq_of(length, max_tokens=8, block_size=4, first=1):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return Sequence(list(range(first, first + length)), params, block_size)


def step(scheduler, token=7):
    """One scheduled step with every sampled token ``token``; returns [(seq, start, end), ...] of its chunks."""
    chunks = scheduler.schedule_chunked()
    plan = [(chunk.seq, chunk.start, chunk.end) for chunk in chunks]
    scheduler.postprocess_chunks(chunks, [token] * len(chunks))
    return plan


@pytest.mark.hint(1)
def test_a_chunk_is_the_sequence_up_to_its_end_with_the_start_cached():
    """Chunk(seq, n) covers tokens [num_computed_tokens, num_computed_tokens + n): len is its end, its start counts as cached."""
    seq = seq_of(10)
    seq.num_computed_tokens = 4
    chunk = Chunk(seq, 3)
    assert (chunk.start, chunk.end, chunk.num_tokens) == (4, 7, 3)
    assert len(chunk) == 7 and chunk.num_cached_tokens == 4, "prepare_prefill computes positions 4, 5, 6 over 7 tokens"
    assert chunk.token_ids == seq.token_ids[:7] and chunk.last_token == seq.token_ids[6]
    assert not chunk.is_last and not chunk.is_decode, "a chunk that ends mid-prompt samples nothing"
    last = Chunk(seq, 6)
    assert last.is_last and not last.is_decode
    assert not Chunk(seq, 1).is_decode, "one token in the middle of the prompt is a prefill chunk, not a decode"
    seq.num_computed_tokens = 9
    one = Chunk(seq, 1)
    assert one.is_last and one.is_decode, "the newest token alone is a decode"


@pytest.mark.hint(2)
def test_a_prompt_longer_than_the_budget_takes_ceil_len_over_budget_steps():
    """A 21-token prompt with a budget of 8 is computed in chunks of 8, 8 and 5; only the last one yields a token."""
    scheduler = make_scheduler(budget=8)
    seq = seq_of(21)
    scheduler.add(seq)
    assert step(scheduler) == [(seq, 0, 8)]
    assert seq.num_computed_tokens == 8 and len(seq) == 21, "an intermediate chunk's token must be dropped"
    assert step(scheduler) == [(seq, 8, 16)]
    assert len(seq) == 21
    assert step(scheduler) == [(seq, 16, 21)]
    assert seq.completion_token_ids == [7] and seq.num_computed_tokens == 21
    assert step(scheduler) == [(seq, 21, 22)], "then it decodes, one token per step"


@pytest.mark.hint(2)
def test_decodes_go_first_and_a_long_prompt_takes_what_is_left():
    """While a long prompt prefills, every running sequence still decodes in every step; the chunk gets the rest of the budget."""
    scheduler = make_scheduler(budget=8)
    a, b = seq_of(3), seq_of(2, first=50)
    scheduler.add(a)
    scheduler.add(b)
    assert step(scheduler) == [(a, 0, 3), (b, 0, 2)]
    long = seq_of(30, first=100)
    scheduler.add(long)
    plans = [step(scheduler) for _ in range(5)]
    assert plans[0] == [(a, 3, 4), (b, 2, 3), (long, 0, 6)]
    assert plans[1] == [(a, 4, 5), (b, 3, 4), (long, 6, 12)]
    for plan in plans:
        assert sum(end - start for _, start, end in plan) <= 8
        assert [s for s, _, _ in plan[:2]] == [a, b], "both decodes in every step, before any prefill chunk"
    assert plans[4][-1] == (long, 24, 30)


@pytest.mark.hint(3)
def test_admission_keeps_queue_order_and_the_sequence_limit():
    """Waiting requests are admitted in order while budget and places last; the first that does not fit stops admission."""
    scheduler = make_scheduler(budget=8, max_num_seqs=2)
    first, second, third = seq_of(5), seq_of(5, first=20), seq_of(2, first=40)
    for seq in (first, second, third):
        scheduler.add(seq)
    assert step(scheduler) == [(first, 0, 5), (second, 0, 3)], "the second starts with the 3 tokens left"
    assert list(scheduler.waiting) == [third], "max_num_seqs=2 keeps the third waiting"
    assert step(scheduler) == [(first, 5, 6), (second, 3, 5)]
    tight = make_scheduler(num_blocks=3, block_size=4, budget=8)
    big, small = seq_of(9), seq_of(2, first=30)
    tight.add(big)
    tight.add(small)
    assert step(tight) == [(big, 0, 8)]
    assert small.status is SequenceStatus.WAITING, "blocks for the whole prompt are allocated on admission"


@pytest.mark.hint(4)
def test_postprocess_records_progress_and_keeps_only_last_chunk_tokens():
    """postprocess_chunks sets num_computed_tokens to each chunk's end; only chunks ending their sequence append a token."""
    scheduler = make_scheduler(budget=8, max_num_seqs=2)
    done, partial = seq_of(3), seq_of(20, first=30)
    scheduler.add(done)
    scheduler.add(partial)
    chunks = scheduler.schedule_chunked()
    assert [(c.seq, c.start, c.end) for c in chunks] == [(done, 0, 3), (partial, 0, 5)]
    finished = scheduler.postprocess_chunks(chunks, [11, 12])
    assert finished == []
    assert done.completion_token_ids == [11] and partial.completion_token_ids == []
    assert (done.num_computed_tokens, partial.num_computed_tokens) == (3, 5)
    short = seq_of(2, max_tokens=1, first=90)
    scheduler2 = make_scheduler()
    scheduler2.add(short)
    chunks = scheduler2.schedule_chunked()
    assert scheduler2.postprocess_chunks(chunks, [9]) == [short] and short.finish_reason == "length"
    assert short.block_table == [] and scheduler2.is_finished()


@pytest.mark.hint(6)
def test_a_cached_prefix_is_not_computed_again():
    """With prefix caching, a second identical prompt starts its chunks after the cached blocks."""
    scheduler = make_scheduler(budget=8, prefix_caching=True, max_num_seqs=2)
    first = seq_of(18, max_tokens=1)
    scheduler.add(first)
    while not scheduler.is_finished():
        step(scheduler)
    again = seq_of(18, max_tokens=2)
    scheduler.add(again)
    plan = step(scheduler)
    assert again.num_cached_tokens == 16, "four full blocks of 4 were computed by the first request's chunks"
    assert plan == [(again, 16, 18)], "the cached tokens are subtracted from what the chunk computes"


# Limits of the state machine: the budget is smaller than a long prompt, and >= max_num_seqs (as Config requires).
NUM_BLOCKS, BLOCK_SIZE, MAX_SEQS, BUDGET, MAX_LEN = 12, 4, 3, 6, 32


class ChunkedSchedulerMachine(RuleBasedStateMachine):
    """Random arrivals and outputs against schedule_chunked, checking the budget and progress after every step."""

    def __init__(self):
        super().__init__()
        self.scheduler = make_scheduler(NUM_BLOCKS, BLOCK_SIZE, MAX_SEQS, BUDGET, MAX_LEN)
        self.added: list[Sequence] = []
        self.idle_steps: dict[int, int] = {}

    @rule(prompt_len=st.integers(1, 24), max_tokens=st.integers(1, 6))
    def arrive(self, prompt_len, max_tokens):
        seq = seq_of(prompt_len, max_tokens, BLOCK_SIZE)
        if -(-(min(prompt_len + max_tokens, MAX_LEN) - 1) // BLOCK_SIZE) <= NUM_BLOCKS:  # as check_request
            self.scheduler.add(seq)
            self.added.append(seq)

    @rule()
    def step(self):
        self.run_step()

    def run_step(self) -> bool:
        scheduler = self.scheduler
        decoding = [s for s in scheduler.running if len(s) - s.num_computed_tokens == 1]
        chunks = scheduler.schedule_chunked()
        if not chunks:
            assert scheduler.is_finished(), "nothing scheduled although requests are waiting or running"
            return False
        assert sum(c.num_tokens for c in chunks) <= BUDGET, "the step spent more than max_num_batched_tokens"
        assert len({c.seq.seq_id for c in chunks}) == len(chunks) <= MAX_SEQS
        scheduled = {c.seq.seq_id for c in chunks}
        for seq in decoding:
            assert seq.seq_id in scheduled or seq.status is SequenceStatus.WAITING, "a running decode was skipped"
        for chunk in chunks:
            seq = chunk.seq
            assert seq.status is SequenceStatus.RUNNING and chunk.start == seq.num_computed_tokens
            assert 1 <= chunk.num_tokens and chunk.end <= len(seq)
            assert len(seq.block_table) * BLOCK_SIZE >= chunk.end, "a slot for every token the chunk computes"
        before = [(chunk.seq, len(chunk.seq), chunk.end == len(chunk.seq)) for chunk in chunks]
        scheduler.postprocess_chunks(chunks, [5] * len(chunks))
        for seq, length, last in before:
            assert len(seq) - length == int(last), "only a chunk that ends its sequence adds a token"
        for seq in scheduler.running:
            self.idle_steps[seq.seq_id] = 0 if seq.seq_id in scheduled else self.idle_steps.get(seq.seq_id, 0) + 1
            assert self.idle_steps[seq.seq_id] <= MAX_LEN, f"{seq} was starved"
        return True

    @invariant()
    def queues_and_blocks_are_consistent(self):
        scheduler = self.scheduler
        waiting, running = list(scheduler.waiting), list(scheduler.running)
        assert not {s.seq_id for s in waiting} & {s.seq_id for s in running}
        assert all(s.status is SequenceStatus.WAITING and s.block_table == [] for s in waiting)
        assert all(s.num_computed_tokens < len(s) for s in running), "a running sequence always has a token to compute"
        owned = [b for s in running for b in s.block_table]
        assert len(owned) == len(set(owned)) and len(owned) + scheduler.block_manager.num_free_blocks == NUM_BLOCKS

    def teardown(self):
        for _ in range(3000):
            if not self.run_step():
                break
        assert all(seq.is_finished for seq in self.added), "requests never finished"
        for seq in self.added:
            assert seq.num_completion_tokens == seq.sampling_params.max_tokens or len(seq) >= MAX_LEN


@pytest.mark.hint(2)
def test_chunked_scheduler_state_machine():
    """Random arrivals: the budget is never exceeded, running decodes are never skipped, nobody starves, all finish."""
    run_state_machine_as_test(ChunkedSchedulerMachine, settings=settings(max_examples=30, stateful_step_count=25,
                                                                         deadline=None))
