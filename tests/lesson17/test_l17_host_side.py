"""Lesson 17: the host-side pieces of the overlapped loop, one at a time: placeholders, the length rule, the packed step."""

import pytest
import torch


def make_seq(tokens, max_tokens=8, block_size=4, blocks=None):
    from aios import SamplingParams
    from aios.engine.sequence import Sequence

    seq = Sequence(list(tokens), SamplingParams(temperature=0.0, max_tokens=max_tokens), block_size)
    seq.block_table = list(blocks if blocks is not None else range(seq.num_blocks))
    return seq


def in_flight(givers, rows):
    from aios.engine.async_loop import InFlightStep

    tokens = torch.arange(100, 100 + rows)
    return InFlightStep(givers, tokens, tokens)


@pytest.mark.hint(1)
def test_placeholders_go_at_the_end_of_every_live_sequence():
    """append_placeholders gives each live sequence of the step one PLACEHOLDER and records its index and row."""
    from aios.engine.async_loop import PLACEHOLDER, append_placeholders

    a, b = make_seq([5, 6, 7]), make_seq([8, 9])
    pending = append_placeholders(in_flight([(a, 1), (b, 0)], 2))
    assert a.token_ids == [5, 6, 7, PLACEHOLDER] and b.token_ids == [8, 9, PLACEHOLDER]
    assert set(pending) == {a.seq_id, b.seq_id}, "pending is keyed by seq_id"
    assert (pending[a.seq_id].index, pending[a.seq_id].row) == (3, 1)
    assert (pending[b.seq_id].index, pending[b.seq_id].row) == (2, 0)
    assert append_placeholders(None) == {}, "no step in flight: nothing is pending"


@pytest.mark.hint(1)
def test_a_sequence_finished_meanwhile_gets_no_placeholder():
    """A sequence aborted while its token was in flight gets no placeholder: that token will be dropped."""
    from aios.engine.async_loop import append_placeholders
    from aios.engine.sequence import SequenceStatus

    a, b = make_seq([5, 6, 7]), make_seq([8, 9])
    b.status = SequenceStatus.FINISHED
    pending = append_placeholders(in_flight([(a, 0), (b, 1)], 2))
    assert b.token_ids == [8, 9], "a finished sequence's tokens must never change"
    assert set(pending) == {a.seq_id}


@pytest.mark.hint(1)
@pytest.mark.parametrize("completion, max_tokens, max_model_len, expected", [
    (3, 4, 100, False), (4, 4, 100, True), (5, 4, 100, True), (1, 8, 6, True), (1, 8, 7, False),
])
def test_finishes_by_length(completion, max_tokens, max_model_len, expected):
    """finishes_by_length: the newest token reaches max_tokens, or the sequence reaches max_model_len."""
    from aios.engine.async_loop import finishes_by_length

    seq = make_seq([1, 2, 3, 4, 5], max_tokens=max_tokens)
    for _ in range(completion):
        seq.append_token(9)
    assert finishes_by_length(seq, max_model_len) is expected


def unpack(packed):
    from aios.engine.async_loop import PackedStep

    assert packed.buffer.dtype.name == "int64", "one int64 buffer: a single copy for the whole step"
    values, out = packed.buffer.tolist(), {}
    for name in PackedStep.FIELDS:
        out[name], values = values[: packed.sizes[name]], values[packed.sizes[name]:]
    assert not values, "the sizes must add up to the buffer's length"
    return out


@pytest.mark.hint(2)
def test_pack_a_decode_step():
    """A decode row is the sequence's newest token: its position, slot, context length and padded block table."""
    from aios.engine.async_loop import pack_step

    a = make_seq([1, 2, 3, 4, 5], blocks=[7, 3])       # newest token at position 4: block 3, slot 12
    b = make_seq([6, 7, 8], blocks=[9])                  # position 2: block 9, slot 38
    packed = pack_step([a, b], False, {}, 4)
    fields = unpack(packed)
    assert fields["input_ids"] == [5, 8]
    assert fields["positions"] == [4, 2]
    assert fields["slot_mapping"] == [12, 38]
    assert fields["cu_seqlens_q"] == [0, 1, 2]
    assert fields["context_lens"] == [5, 3]
    assert packed.block_table_width == 2 and fields["block_tables"] == [7, 3, 9, -1]
    assert fields["fix_dst"] == [] and fields["fix_src"] == []
    assert (packed.max_seqlen_q, packed.max_seqlen_k) == (1, 5)


@pytest.mark.hint(2)
def test_pack_a_prefill_step_with_a_cached_prefix():
    """A prefill row computes tokens [num_cached_tokens, len): a cached prefix is skipped but attended over."""
    from aios.engine.async_loop import pack_step

    a = make_seq([1, 2, 3, 4, 5, 6], blocks=[2, 5])
    a.num_cached_tokens = 4
    b = make_seq([7, 8, 9], blocks=[1])
    fields = unpack(pack_step([a, b], True, {}, 4))
    assert fields["input_ids"] == [5, 6, 7, 8, 9]
    assert fields["positions"] == [4, 5, 0, 1, 2]
    assert fields["slot_mapping"] == [20, 21, 4, 5, 6]
    assert fields["cu_seqlens_q"] == [0, 2, 5]
    assert fields["context_lens"] == [6, 3]


@pytest.mark.hint(3)
def test_placeholders_are_fixed_up_from_the_previous_step():
    """Each row whose input is a pending placeholder names its flat index (fix_dst) and previous row (fix_src)."""
    from aios.engine.async_loop import PLACEHOLDER, append_placeholders, pack_step

    a, b, c = make_seq([1, 2, 3]), make_seq([4, 5]), make_seq([6, 7, 8, 9])
    pending = append_placeholders(in_flight([(a, 2), (c, 0)], 3))
    for seq in (a, c):
        seq.block_table = list(range(seq.num_blocks))
    decode = unpack(pack_step([b, a, c], False, pending, 4))
    assert decode["input_ids"] == [5, PLACEHOLDER, PLACEHOLDER], "the host does not know the token yet"
    assert (decode["fix_dst"], decode["fix_src"]) == ([1, 2], [2, 0])
    prefill = unpack(pack_step([b, c, a], True, pending, 4))   # c and a re-prefilled from position 0
    assert prefill["input_ids"][2:] == [6, 7, 8, 9, PLACEHOLDER, 1, 2, 3, PLACEHOLDER]
    assert (prefill["fix_dst"], prefill["fix_src"]) == ([6, 10], [0, 2]), "flat index = row offset + index - start"
