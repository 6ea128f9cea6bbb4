"""Lesson 19: how many tokens to propose, and appending verified tokens with lesson 8's stop rules."""

from types import SimpleNamespace

import pytest

from aios.engine.block_manager import BlockManager
from aios.engine.scheduler import Scheduler
from aios.engine.sequence import Sequence, SequenceStatus
from aios.sampling_params import SamplingParams
from aios.spec.config import SpeculativeConfig
from aios.spec.decoding import SpeculativeDecoder

EOS = 0


def decoder(k):
    return SpeculativeDecoder(SpeculativeConfig("ngram", k, prompt_lookup_max=3, prompt_lookup_min=1), proposer=None)


def seq_with(prompt_len, generated, max_tokens, ignore_eos=True):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    seq = Sequence(list(range(1, prompt_len + 1)), params, 4)
    for token in range(generated):
        seq.append_token(100 + token)
    return seq


@pytest.mark.hint(5)
@pytest.mark.parametrize("generated, max_tokens, expected", [(0, 64, 4), (5, 10, 4), (6, 10, 3), (8, 10, 1),
                                                             (9, 10, 0)])
def test_the_budget_leaves_room_for_the_targets_token(generated, max_tokens, expected):
    """k = 4, but a step adds the kept proposals plus one token: with m completion tokens left, at most m - 1 proposals."""
    assert decoder(4).speculation_budget(seq_with(5, generated, max_tokens), SimpleNamespace(max_model_len=100)) == expected


@pytest.mark.hint(5)
@pytest.mark.parametrize("length, expected", [(90, 4), (95, 4), (96, 3), (99, 0)])
def test_the_budget_stops_at_max_model_len(length, expected):
    """The sequence may grow to max_model_len (100) tokens: len + proposals + 1 <= 100."""
    seq = seq_with(length, 0, 64)
    assert decoder(4).speculation_budget(seq, SimpleNamespace(max_model_len=100)) == expected


def scheduler_with(seq, max_model_len=100):
    limits = SimpleNamespace(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=max_model_len)
    scheduler = Scheduler(limits, BlockManager(16, 4), eos_token_ids={EOS})
    scheduler.add(seq)
    scheduler.schedule()  # admitted and allocated: RUNNING
    return scheduler


@pytest.mark.hint(5)
def test_accepting_stops_at_a_stop_token():
    """Verified tokens [5, EOS, 7]: the sequence ends with EOS (finish_reason "stop"), 7 is never delivered, blocks freed."""
    seq = seq_with(3, 0, 20, ignore_eos=False)
    scheduler = scheduler_with(seq)
    assert decoder(4).accept_tokens(scheduler, seq, [5, EOS, 7]) is True
    assert seq.completion_token_ids == [5, EOS] and seq.finish_reason == "stop"
    assert seq.status is SequenceStatus.FINISHED and not scheduler.running
    assert scheduler.block_manager.num_free_blocks == 16


@pytest.mark.hint(5)
def test_accepting_stops_at_max_tokens():
    """max_tokens 2: of the verified [5, 6, 7] only two are delivered; a run that does not finish returns False."""
    seq = seq_with(3, 0, 2)
    assert decoder(4).accept_tokens(scheduler_with(seq), seq, [5, 6, 7]) is True
    assert seq.completion_token_ids == [5, 6] and seq.finish_reason == "length"
    other = seq_with(3, 0, 10)
    assert decoder(4).accept_tokens(scheduler_with(other), other, [5, 6, 7]) is False
    assert other.completion_token_ids == [5, 6, 7] and not other.is_finished
