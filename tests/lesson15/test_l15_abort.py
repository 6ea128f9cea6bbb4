"""Lesson 15: cancelling a request — Scheduler.abort removes it and gives its KV blocks back."""

from types import SimpleNamespace

import pytest

from aios.engine.block_manager import BlockManager
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Sequence, SequenceStatus
from aios.sampling_params import SamplingParams

BLOCK = 4


def make_scheduler(num_blocks=32):
    config = SimpleNamespace(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=128)
    manager = BlockManager(num_blocks, BLOCK)
    return Scheduler(config, manager, eos_token_ids={0}), manager


def seq(n_tokens, first=1):
    return Sequence(list(range(first, first + n_tokens)), SamplingParams(temperature=0, max_tokens=8), BLOCK)


@pytest.mark.hint(2)
def test_abort_running_sequence_frees_its_blocks():
    """Aborting a running sequence removes it from `running`, frees all its blocks, marks it FINISHED/'abort'."""
    scheduler, manager = make_scheduler()
    a, b = seq(9), seq(5, first=20)
    scheduler.add(a)
    scheduler.add(b)
    scheduled, is_prefill = scheduler.schedule()
    assert is_prefill and set(scheduled) == {a, b}
    used_by_b = len(b.block_table)
    free_before = manager.num_free_blocks
    assert scheduler.abort(a.seq_id) is a
    assert a not in scheduler.running and b in scheduler.running
    assert a.status is SequenceStatus.FINISHED and a.finish_reason == "abort"
    assert a.block_table == []
    assert manager.num_free_blocks == free_before + 3 == manager.num_blocks - used_by_b


@pytest.mark.hint(2)
def test_abort_waiting_sequence():
    """Aborting a waiting sequence removes it from `waiting`; the others are untouched."""
    scheduler, manager = make_scheduler()
    a, b = seq(3), seq(3, first=10)
    scheduler.add(a)
    scheduler.add(b)
    assert scheduler.abort(b.seq_id) is b
    assert list(scheduler.waiting) == [a]
    assert b.finish_reason == "abort" and b.status is SequenceStatus.FINISHED
    assert manager.num_free_blocks == manager.num_blocks


@pytest.mark.hint(2)
def test_abort_unknown_or_finished_returns_none():
    """abort() of an id that is not waiting or running returns None and changes nothing."""
    scheduler, manager = make_scheduler()
    a = seq(3)
    scheduler.add(a)
    assert scheduler.abort(a.seq_id + 1000) is None
    assert list(scheduler.waiting) == [a]
    assert scheduler.abort(a.seq_id) is a
    assert scheduler.abort(a.seq_id) is None
    assert scheduler.is_finished()
