"""Lesson 6: the block allocator, block tables and the slot mapping."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aios.engine.block_manager import BlockManager, OutOfBlocksError, slot_mapping
from aios.engine.sequence import Sequence


def seq_of(length: int, block_size: int = 4) -> Sequence:
    return Sequence(list(range(length)), block_size=block_size)


@pytest.mark.hint(3)
def test_allocate_covers_every_token():
    """allocate gives a sequence ceil(len / block_size) distinct blocks, taken from the free ones."""
    manager = BlockManager(num_blocks=10, block_size=4)
    seq = seq_of(9)
    manager.allocate(seq)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert all(0 <= b < 10 for b in seq.block_table)
    assert manager.num_free_blocks == 7


@pytest.mark.hint(3)
def test_deallocate_returns_every_block():
    """deallocate empties the block table and every block is free again (and can be handed out again)."""
    manager = BlockManager(num_blocks=6, block_size=4)
    first, second = seq_of(8), seq_of(13)
    manager.allocate(first)
    manager.allocate(second)
    assert manager.num_free_blocks == 0
    manager.deallocate(first)
    manager.deallocate(second)
    assert first.block_table == [] and second.block_table == []
    assert manager.num_free_blocks == 6
    again = seq_of(24)
    manager.allocate(again)
    assert sorted(again.block_table) == list(range(6))


@pytest.mark.hint(3)
def test_allocation_fails_cleanly_when_blocks_run_out():
    """Without enough free blocks, can_allocate is False and allocate raises OutOfBlocksError, changing nothing."""
    manager = BlockManager(num_blocks=4, block_size=4)
    holder, newcomer = seq_of(9), seq_of(8)
    manager.allocate(holder)
    assert not manager.can_allocate(newcomer)
    with pytest.raises(OutOfBlocksError):
        manager.allocate(newcomer)
    assert newcomer.block_table == [], "no half-built block table"
    assert manager.num_free_blocks == 1, "no block may leak out of a failed allocation"
    assert manager.can_allocate(seq_of(4))


@pytest.mark.hint(2)
def test_a_new_block_only_when_the_last_one_is_full():
    """may_append adds a block exactly when the newest token is the first of a new block."""
    manager = BlockManager(num_blocks=3, block_size=4)
    seq = seq_of(4)
    manager.allocate(seq)
    seq.append_token(99)  # token 5 needs block 2
    assert manager.can_append(seq)
    manager.may_append(seq)
    assert len(seq.block_table) == 2 and manager.num_free_blocks == 1
    for _ in range(3):  # tokens 6..8 fit in block 2
        seq.append_token(99)
        assert manager.can_append(seq)
        manager.may_append(seq)
        assert len(seq.block_table) == 2
    assert manager.num_free_blocks == 1


@pytest.mark.hint(2)
def test_cannot_append_without_a_free_block():
    """can_append is False when the newest token needs a block and none is free."""
    manager = BlockManager(num_blocks=2, block_size=2)
    seq = seq_of(4, block_size=2)
    manager.allocate(seq)
    seq.append_token(7)
    assert not manager.can_append(seq)
    seq2 = seq_of(3, block_size=2)
    assert not manager.can_allocate(seq2)


def test_slot_mapping_by_hand():
    """slot = block_table[p // block_size] * block_size + p % block_size."""
    assert slot_mapping([7, 2], [0, 1, 2, 3, 4, 5], 4) == [28, 29, 30, 31, 8, 9]
    assert slot_mapping([3, 0, 5], [9, 4, 0], 4) == [21, 0, 12]


@pytest.mark.hint(3)
def test_deallocate_resets_num_cached_tokens():
    """deallocate sets num_cached_tokens back to 0: the K/V it counted left with the blocks."""
    manager = BlockManager(num_blocks=4, block_size=4)
    seq = seq_of(9)
    manager.allocate(seq)
    seq.num_cached_tokens = 8  # as if prefill (or, in lesson 13, a cached prefix) had filled two blocks
    manager.deallocate(seq)
    assert seq.num_cached_tokens == 0, "a re-admitted sequence would skip tokens whose K/V are gone"


@pytest.mark.hint(6)
def test_a_shared_block_is_freed_by_its_last_user_only():
    """A block two sequences share (ref_count 2) stays used after the first deallocate, and is freed by the second."""
    manager = BlockManager(num_blocks=4, block_size=4)
    owner, sharer = seq_of(8), seq_of(6)
    manager.allocate(owner)
    sharer.block_table = list(owner.block_table)  # lesson 13's prefix caching shares blocks like this
    for block_id in owner.block_table:
        manager.blocks[block_id].ref_count += 1
    manager.deallocate(owner)
    assert [manager.blocks[b].ref_count for b in sharer.block_table] == [1, 1], "one reference each is left"
    assert set(manager.used_block_ids) == set(sharer.block_table), "blocks still referenced must stay used"
    assert manager.num_free_blocks == 2
    manager.deallocate(sharer)
    assert manager.num_free_blocks == 4 and not manager.used_block_ids


@pytest.mark.hint(6)
def test_free_blocks_are_handed_out_oldest_first():
    """The free list is a queue: blocks are taken from its front and given back at its end."""
    manager = BlockManager(num_blocks=4, block_size=4)
    first, second = seq_of(8), seq_of(4)
    manager.allocate(first)
    manager.allocate(second)
    assert (first.block_table, second.block_table) == ([0, 1], [2]), "a fresh pool hands out 0, 1, 2, ..."
    manager.deallocate(second)
    third = seq_of(8)
    manager.allocate(third)
    assert third.block_table == [3, 2], "block 3 has been free longest; block 2, just given back, comes after it"


NUM_BLOCKS, BLOCK_SIZE = 12, 4


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / grow / free sequences against one BlockManager, checking its bookkeeping after each step."""

    def __init__(self):
        super().__init__()
        self.manager = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.holding: list[Sequence] = []
        self.slots_checked: dict[int, tuple] = {}  # id(seq) -> ((block table, length), its slots)

    @rule(length=st.integers(1, 30))
    def admit(self, length):
        seq = seq_of(length, BLOCK_SIZE)
        free = self.manager.num_free_blocks
        fits = seq.num_blocks <= free
        assert self.manager.can_allocate(seq) == fits
        if fits:
            self.manager.allocate(seq)
            assert len(seq.block_table) == seq.num_blocks
            self.holding.append(seq)
        else:
            with pytest.raises(OutOfBlocksError):
                self.manager.allocate(seq)
            assert seq.block_table == [] and self.manager.num_free_blocks == free

    @precondition(lambda self: self.holding)
    @rule(pick=st.integers(0, 10**6))
    def grow(self, pick):
        seq = self.holding[pick % len(self.holding)]
        seq.append_token(1)
        needs_block = len(seq) % BLOCK_SIZE == 1
        can_append = self.manager.can_append(seq)
        assert can_append == (not needs_block or self.manager.num_free_blocks > 0)
        if can_append:
            self.manager.may_append(seq)
            assert len(seq.block_table) == seq.num_blocks
        else:  # out of memory: give the sequence's blocks back, as the scheduler will
            self.release_seq(seq)

    @precondition(lambda self: self.holding)
    @rule(pick=st.integers(0, 10**6))
    def release(self, pick):
        self.release_seq(self.holding[pick % len(self.holding)])

    def release_seq(self, seq):
        held = len(seq.block_table)
        free = self.manager.num_free_blocks
        self.manager.deallocate(seq)
        assert seq.block_table == [] and self.manager.num_free_blocks == free + held
        self.holding.remove(seq)

    @invariant()
    def no_block_owned_twice_and_none_lost(self):
        owned = [b for seq in self.holding for b in seq.block_table]
        assert len(owned) == len(set(owned)), "a block belongs to two sequences"
        assert self.manager.num_free_blocks + len(owned) == NUM_BLOCKS
        assert set(self.manager.free_block_ids).isdisjoint(owned)
        assert set(self.manager.used_block_ids) == set(owned)

    @invariant()
    def slot_mapping_is_injective_and_follows_block_tables(self):
        seen = set()
        for seq in self.holding:
            table, positions = seq.block_table, list(range(len(seq)))
            checked = self.slots_checked.get(id(seq))
            if checked is not None and checked[0] == (table, len(positions)):
                slots = checked[1]  # slot_mapping is a function of its arguments: asked once per argument set
            else:
                slots = slot_mapping(table, positions, BLOCK_SIZE)
                assert len(slots) == len(positions)
                for p, slot in zip(positions, slots):
                    assert slot // BLOCK_SIZE == table[p // BLOCK_SIZE] and slot % BLOCK_SIZE == p % BLOCK_SIZE
                self.slots_checked[id(seq)] = ((table, len(positions)), slots)
            assert seen.isdisjoint(slots), "two tokens share a cache slot"
            seen.update(slots)

    def teardown(self):
        for seq in list(self.holding):
            self.release_seq(seq)
        assert self.manager.num_free_blocks == NUM_BLOCKS


@pytest.mark.hint(1)
def test_allocator_state_machine():
    """Random allocate/grow/free: no block owned twice, free + used = all, frees return everything, slots unique."""
    run_state_machine_as_test(AllocatorMachine, settings=settings(max_examples=40, stateful_step_count=30,
                                                                  deadline=None))
