"""Lesson 6, hidden: the allocator under other shapes, and paged storage at its edges."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aios.engine.block_manager import BlockManager, OutOfBlocksError, slot_mapping
from aios.engine.kv_cache import PagedSequenceKVCache
from aios.engine.sequence import Sequence
from aios.generate import generate_no_cache, generate_with_cache
from aios.layers.paged_attention import PagedKVCache, gather_kv, store_kvcache


def machine_for(num_blocks: int, block_size: int):
    """An allocator state machine for one pool shape."""

    class Machine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.manager = BlockManager(num_blocks, block_size)
            self.holding: list[Sequence] = []

        @rule(length=st.integers(1, 3 * block_size + 2))
        def admit(self, length):
            seq = Sequence([0] * length, block_size=block_size)
            free = self.manager.num_free_blocks
            try:
                self.manager.allocate(seq)
            except OutOfBlocksError:
                assert seq.num_blocks > free and seq.block_table == [] and self.manager.num_free_blocks == free
            else:
                assert seq.num_blocks <= free and len(seq.block_table) == seq.num_blocks
                self.holding.append(seq)

        @precondition(lambda self: self.holding)
        @rule(pick=st.integers(0, 10**6), tokens=st.integers(1, 2 * block_size))
        def grow(self, pick, tokens):
            seq = self.holding[pick % len(self.holding)]
            for _ in range(tokens):
                seq.append_token(0)
                if not self.manager.can_append(seq):
                    with pytest.raises(OutOfBlocksError):
                        self.manager.may_append(seq)
                    self.manager.deallocate(seq)
                    self.holding.remove(seq)
                    return
                self.manager.may_append(seq)

        @precondition(lambda self: self.holding)
        @rule(pick=st.integers(0, 10**6))
        def release(self, pick):
            seq = self.holding.pop(pick % len(self.holding))
            self.manager.deallocate(seq)
            assert seq.block_table == []

        @invariant()
        def conserved(self):
            owned = [b for seq in self.holding for b in seq.block_table]
            assert len(owned) == len(set(owned))
            assert self.manager.num_free_blocks + len(owned) == num_blocks
            assert all(len(seq.block_table) == seq.num_blocks for seq in self.holding)
            assert all(self.manager.blocks[b].ref_count == 1 for b in owned)

    return Machine


@pytest.mark.hint(1)
@pytest.mark.parametrize("num_blocks,block_size", [(5, 1), (9, 3), (3, 16)])
def test_allocator_invariants_for_other_pool_shapes(num_blocks, block_size):
    """The allocator keeps every block accounted for with block sizes 1, 3 and 16 and tiny pools."""
    run_state_machine_as_test(machine_for(num_blocks, block_size),
                              settings=settings(max_examples=25, stateful_step_count=25, deadline=None))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_slots_of_disjoint_block_tables_never_collide(data):
    """Sequences with disjoint block tables map their tokens to disjoint slots, all inside their own blocks."""
    block_size = data.draw(st.integers(1, 8))
    ids = data.draw(st.permutations(list(range(12))))
    cut = data.draw(st.integers(1, 11))
    tables = [ids[:cut], ids[cut:]]
    all_slots = []
    for table in tables:
        length = data.draw(st.integers(1, len(table) * block_size))
        slots = slot_mapping(table, list(range(length)), block_size)
        assert all(s // block_size in table for s in slots)
        all_slots += slots
    assert len(all_slots) == len(set(all_slots))


@pytest.mark.hint(6)
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_blocks_with_several_references_are_freed_by_their_last_release(data):
    """A block with n references stays used through n - 1 releases; the n-th frees it, at the end of the free list."""
    num_blocks = data.draw(st.integers(1, 8))
    manager = BlockManager(num_blocks, 2)
    taken = [manager._take_free_block() for _ in range(data.draw(st.integers(1, num_blocks)))]
    assert taken == list(range(len(taken))), "a fresh pool hands out its blocks oldest first: 0, 1, 2, ..."
    left = {block_id: data.draw(st.integers(1, 4)) for block_id in taken}
    for block_id, refs in left.items():
        manager.blocks[block_id].ref_count = refs  # as if refs sequences shared it (lesson 13)
    expected_free = list(manager.free_block_ids)
    for block_id in data.draw(st.permutations([b for b, refs in left.items() for _ in range(refs)])):
        manager._release_block(block_id)
        left[block_id] -= 1
        if left[block_id] == 0:
            expected_free.append(block_id)
        assert manager.blocks[block_id].ref_count == left[block_id]
        assert set(manager.used_block_ids) == {b for b, refs in left.items() if refs > 0}
        assert list(manager.free_block_ids) == expected_free, "a freed block goes to the end of the free list"


@pytest.mark.hint(2)
def test_exact_fit_is_allowed():
    """can_allocate is True when the free blocks exactly cover the sequence, and allocate takes them all."""
    manager = BlockManager(3, 4)
    seq = Sequence([1] * 12, block_size=4)
    assert manager.can_allocate(seq)
    manager.allocate(seq)
    assert manager.num_free_blocks == 0 and sorted(seq.block_table) == [0, 1, 2]


@pytest.mark.hint(1)
def test_may_append_without_a_free_block_raises_and_changes_nothing():
    """may_append raises OutOfBlocksError when a new block is needed and none is free; the table is unchanged."""
    manager = BlockManager(2, 2)
    seq = Sequence([1, 2, 3, 4], block_size=2)
    manager.allocate(seq)
    table = list(seq.block_table)
    seq.append_token(5)
    with pytest.raises(OutOfBlocksError):
        manager.may_append(seq)
    assert seq.block_table == table and manager.num_free_blocks == 0


@pytest.mark.hint(5)
def test_gather_with_padded_block_table_and_partial_last_block():
    """gather_kv ignores -1 padding after the blocks in use and cuts the last, partial block."""
    k_cache, v_cache = torch.randn(6, 4, 1, 2), torch.randn(6, 4, 1, 2)
    keys, values = gather_kv(k_cache, v_cache, torch.tensor([4, 2, -1, -1], dtype=torch.int32), 6)
    torch.testing.assert_close(keys, torch.cat([k_cache[4], k_cache[2, :2]]))
    torch.testing.assert_close(values, torch.cat([v_cache[4], v_cache[2, :2]]))
    one_k, _ = gather_kv(k_cache, v_cache, torch.tensor([3], dtype=torch.int32), 1)
    torch.testing.assert_close(one_k, k_cache[3, :1])


@pytest.mark.hint(4)
def test_store_writes_through_a_layer_view():
    """store_kvcache writes in place: storing into cache.k_cache[layer] changes the engine's cache tensor."""
    cache = PagedKVCache(3, 4, 2, 1, 2, torch.float32, "cpu")
    k, v = torch.ones(2, 1, 2), torch.full((2, 1, 2), 2.0)
    store_kvcache(k, v, cache.k_cache[1], cache.v_cache[1], torch.tensor([5, 0]))
    assert cache.k_cache[1, 2, 1].eq(1).all() and cache.v_cache[1, 0, 0].eq(2).all()
    assert cache.k_cache[0].eq(0).all() and cache.k_cache[2].eq(0).all()


@pytest.mark.hint(2)
def test_paged_generation_with_one_token_blocks(fused_model, random_prompt):
    """With block_size 1 every token gets its own block, and the tokens are still lesson 3's."""
    prompt = random_prompt(9, seed=21)
    paged = PagedSequenceKVCache.for_model(fused_model, num_blocks=40, block_size=1)
    assert generate_with_cache(fused_model, prompt, 11, paged) == generate_no_cache(fused_model, prompt, 11)
    assert len(set(paged.block_table)) == 9 + 10
    paged.release()
    assert paged.block_manager.num_free_blocks == 40


@pytest.mark.hint(1)
def test_paged_generation_running_out_of_blocks_fails_loudly(fused_model, random_prompt):
    """A paged sequence that outgrows its pool raises OutOfBlocksError instead of overwriting other blocks."""
    paged = PagedSequenceKVCache.for_model(fused_model, num_blocks=3, block_size=4)
    with pytest.raises(OutOfBlocksError):
        generate_with_cache(fused_model, random_prompt(10, seed=22), 8, paged)
