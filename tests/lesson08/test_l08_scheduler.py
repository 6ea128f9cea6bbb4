"""Lesson 8: the scheduler on its own: admission limits, preemption, finishing, and its invariants."""

from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from aios.engine.block_manager import BlockManager
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Sequence, SequenceStatus
from aios.sampling_params import SamplingParams

EOS = 0


def make_scheduler(num_blocks=16, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64):
    limits = SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                             max_model_len=max_model_len)
    return Scheduler(limits, BlockManager(num_blocks, block_size), eos_token_ids={EOS})


def seq_of(length, max_tokens=8, ignore_eos=False, block_size=4):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    return Sequence(list(range(1, length + 1)), params, block_size)


@pytest.mark.hint(2)
def test_prefill_first_then_decode():
    """Waiting requests are admitted as a prefill batch; with nobody waiting, every running sequence decodes."""
    scheduler = make_scheduler()
    a, b = seq_of(5), seq_of(3)
    scheduler.add(a)
    scheduler.add(b)
    seqs, is_prefill = scheduler.schedule()
    assert is_prefill and seqs == [a, b]
    assert a.status is b.status is SequenceStatus.RUNNING and len(a.block_table) == 2 and len(b.block_table) == 1
    scheduler.postprocess(seqs, [7, 7])
    seqs, is_prefill = scheduler.schedule()
    assert not is_prefill and seqs == [a, b]
    c = seq_of(2)
    scheduler.add(c)
    seqs, is_prefill = scheduler.schedule()
    assert is_prefill and seqs == [c], "a waiting request that fits is admitted before the next decode"


@pytest.mark.hint(2)
def test_admission_respects_max_num_seqs():
    """No more than max_num_seqs sequences run at once."""
    scheduler = make_scheduler(max_num_seqs=3)
    seqs = [seq_of(2) for _ in range(5)]
    for seq in seqs:
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    assert batch == seqs[:3] and list(scheduler.waiting) == seqs[3:]
    scheduler.postprocess(batch, [7, 7, 7])
    batch, is_prefill = scheduler.schedule()
    assert not is_prefill and batch == seqs[:3], "full: decode, do not admit a fourth"


@pytest.mark.hint(2)
def test_admission_respects_the_token_budget_in_arrival_order():
    """A prefill holds at most max_num_batched_tokens tokens and stops at the first request that does not fit."""
    scheduler = make_scheduler(max_num_batched_tokens=16)
    first, big, small = seq_of(6), seq_of(11), seq_of(2)
    for seq in (first, big, small):
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    assert batch == [first], "the 11-token request does not fit beside the 6 and must not be overtaken"
    batch, is_prefill = scheduler.schedule()
    assert is_prefill and batch == [big, small]


@pytest.mark.hint(2)
def test_admission_needs_free_blocks():
    """A request is not admitted while its blocks cannot be allocated."""
    scheduler = make_scheduler(num_blocks=3, block_size=4)
    a, b = seq_of(8), seq_of(5)
    scheduler.add(a)
    scheduler.add(b)
    batch, _ = scheduler.schedule()
    assert batch == [a] and b.status is SequenceStatus.WAITING and b.block_table == []


@pytest.mark.hint(3)
def test_decode_preempts_the_newest_sequence_when_blocks_run_out():
    """Out of blocks at decode time, the newest running sequence is preempted: blocks freed, back to the front of waiting."""
    scheduler = make_scheduler(num_blocks=4, block_size=2)
    old, new = seq_of(4, block_size=2), seq_of(4, block_size=2)
    scheduler.add(old)
    scheduler.add(new)
    batch, _ = scheduler.schedule()
    assert batch == [old, new] and scheduler.block_manager.num_free_blocks == 0
    scheduler.postprocess(batch, [7, 7])  # both now need a third block
    batch, is_prefill = scheduler.schedule()
    assert not is_prefill and batch == [old]
    assert len(old.block_table) == 3
    assert new.status is SequenceStatus.WAITING and new.block_table == [] and scheduler.waiting[0] is new
    assert list(scheduler.running) == [old] and scheduler.num_preemptions == 1


@pytest.mark.hint(4)
def test_postprocess_finishes_on_eos_and_max_tokens():
    """postprocess appends tokens; EOS finishes with "stop" (unless ignore_eos), max_tokens with "length"."""
    scheduler = make_scheduler()
    stops, ignores, short, goes_on = seq_of(3), seq_of(3, ignore_eos=True), seq_of(3, max_tokens=1), seq_of(3)
    for seq in (stops, ignores, short, goes_on):
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    finished = scheduler.postprocess(batch, [EOS, EOS, 9, 9])
    assert finished == [stops, short]
    assert (stops.finish_reason, short.finish_reason) == ("stop", "length")
    assert stops.completion_token_ids == [EOS] and short.completion_token_ids == [9]
    for seq in finished:
        assert seq.status is SequenceStatus.FINISHED and seq.block_table == []
    assert list(scheduler.running) == [ignores, goes_on]
    assert scheduler.block_manager.num_free_blocks == 16 - 2


@pytest.mark.hint(4)
def test_postprocess_stops_at_max_model_len():
    """A sequence that reaches max_model_len tokens finishes with "length" whatever its max_tokens."""
    scheduler = make_scheduler(max_model_len=6, max_num_batched_tokens=64)
    seq = seq_of(5, max_tokens=50)
    scheduler.add(seq)
    batch, _ = scheduler.schedule()
    assert scheduler.postprocess(batch, [9]) == [seq] and seq.finish_reason == "length" and len(seq) == 6


@pytest.mark.hint(2)
def test_a_prefill_may_fill_the_token_budget_exactly():
    """A batch whose tokens exactly equal max_num_batched_tokens is admitted, one request as long as the budget too."""
    scheduler = make_scheduler(max_num_batched_tokens=16, max_model_len=32)
    first, second, whole = seq_of(6), seq_of(10), seq_of(16)
    for seq in (first, second, whole):
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    assert batch == [first, second], "6 + 10 tokens fit a budget of 16"
    batch, is_prefill = scheduler.schedule()
    assert is_prefill and batch == [whole], "a 16-token prompt fits a budget of 16"


@pytest.mark.hint(3)
def test_decode_preempts_from_the_back_of_running():
    """With three running sequences short of blocks, the newest (the last one) is preempted, and only it."""
    scheduler = make_scheduler(num_blocks=6, block_size=2)
    oldest, middle, newest = (seq_of(4, block_size=2) for _ in range(3))
    for seq in (oldest, middle, newest):
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    scheduler.postprocess(batch, [7, 7, 7])  # each now needs a third block; none is free
    batch, is_prefill = scheduler.schedule()
    assert not is_prefill and batch == [oldest, middle], "freeing the newest one's two blocks makes room for both others"
    assert list(scheduler.waiting) == [newest] and scheduler.num_preemptions == 1


@pytest.mark.hint(4)
def test_a_preempted_sequence_goes_back_ahead_of_later_arrivals():
    """preempt puts the sequence at the front of waiting: it arrived before the requests still queued there."""
    scheduler = make_scheduler(num_blocks=4, block_size=2, max_num_seqs=2)
    old, new, late = seq_of(4, block_size=2), seq_of(4, block_size=2), seq_of(2, block_size=2)
    for seq in (old, new, late):
        scheduler.add(seq)
    batch, _ = scheduler.schedule()
    assert batch == [old, new] and list(scheduler.waiting) == [late], "max_num_seqs=2 keeps the third waiting"
    scheduler.postprocess(batch, [7, 7])
    batch, _ = scheduler.schedule()
    assert batch == [old]
    assert list(scheduler.waiting) == [new, late], "the preempted request must not lose its place to a later one"


# As Config guarantees, the token budget holds the longest sequence (a preempted one is recomputed whole).
NUM_BLOCKS, BLOCK_SIZE, MAX_SEQS, MAX_TOKENS, MAX_LEN = 10, 4, 4, 24, 24


class SchedulerMachine(RuleBasedStateMachine):
    """Random arrivals and model outputs against one Scheduler, checking its invariants after every step."""

    def __init__(self):
        super().__init__()
        self.scheduler = make_scheduler(NUM_BLOCKS, BLOCK_SIZE, MAX_SEQS, MAX_TOKENS, MAX_LEN)
        self.added: list[Sequence] = []

    @rule(prompt_len=st.integers(1, 20), max_tokens=st.integers(1, 12), ignore_eos=st.booleans())
    def arrive(self, prompt_len, max_tokens, ignore_eos):
        # Every request fits the cache on its own (LLM.generate refuses the others up front).
        seq = seq_of(prompt_len, max_tokens, ignore_eos, BLOCK_SIZE)
        self.scheduler.add(seq)
        self.added.append(seq)

    @rule(outputs=st.lists(st.sampled_from([EOS, 5, 6, 7]), min_size=MAX_SEQS, max_size=MAX_SEQS))
    def step(self, outputs):
        self.run_step(outputs)

    def run_step(self, outputs) -> bool:
        scheduler = self.scheduler
        seqs, is_prefill = scheduler.schedule()
        if not seqs:
            assert scheduler.is_finished(), "nothing scheduled although requests are waiting or running"
            return False
        assert len(seqs) <= MAX_SEQS and len({s.seq_id for s in seqs}) == len(seqs)
        if is_prefill:
            assert sum(len(s) for s in seqs) <= MAX_TOKENS
        for seq in seqs:
            assert seq.status is SequenceStatus.RUNNING and seq in scheduler.running
            assert len(seq.block_table) == seq.num_blocks, "a scheduled sequence must hold a slot for every token"
        finished = scheduler.postprocess(seqs, outputs[: len(seqs)])
        for seq in finished:
            assert seq.status is SequenceStatus.FINISHED and seq.block_table == []
            stopped = seq.last_token == EOS and not seq.sampling_params.ignore_eos
            assert seq.finish_reason == ("stop" if stopped else "length")
            assert stopped or seq.num_completion_tokens == seq.sampling_params.max_tokens or len(seq) >= MAX_LEN
        return True

    @invariant()
    def queues_and_blocks_are_consistent(self):
        scheduler = self.scheduler
        waiting, running = list(scheduler.waiting), list(scheduler.running)
        assert not {s.seq_id for s in waiting} & {s.seq_id for s in running}, "a sequence is both waiting and running"
        for seq in waiting:
            assert seq.status is SequenceStatus.WAITING and seq.block_table == []
        for seq in running:
            assert seq.status is SequenceStatus.RUNNING and len(seq.block_table) >= (len(seq) - 1 + BLOCK_SIZE - 1) // BLOCK_SIZE
        owned = [b for seq in running for b in seq.block_table]
        assert len(owned) == len(set(owned)) and len(owned) + scheduler.block_manager.num_free_blocks == NUM_BLOCKS
        for seq in self.added:
            places = (seq in waiting) + (seq in running) + seq.is_finished
            assert places == 1, f"{seq} must be exactly one of waiting, running or finished"

    def teardown(self):
        for _ in range(2000):
            if not self.run_step([5] * MAX_SEQS):
                break
        assert self.scheduler.is_finished() and all(seq.is_finished for seq in self.added), "requests never finished"
        assert self.scheduler.block_manager.num_free_blocks == NUM_BLOCKS


@pytest.mark.hint(1)
def test_scheduler_state_machine():
    """Random arrivals/outputs: never waiting and running at once, scheduled sequences hold their blocks, all finish."""
    run_state_machine_as_test(SchedulerMachine, settings=settings(max_examples=40, stateful_step_count=30,
                                                                  deadline=None))
