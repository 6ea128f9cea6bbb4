"""Lesson 19: KV slots for proposals: reserved before verification, released after it, the allocator intact."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aios.engine.block_manager import NO_HASH, BlockManager
from aios.engine.sequence import Sequence
from aios.sampling_params import SamplingParams
from aios.spec.rollback import reserve_speculative_slots, rollback_speculative_slots

BLOCK = 4


def running_seq(manager, prompt, generated=()):
    """A sequence allocated for its prompt, then given ``generated`` tokens as decode steps would (room for each)."""
    seq = Sequence(list(prompt), SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True), BLOCK)
    manager.allocate(seq)
    for token in generated:
        seq.append_token(token)
        manager.may_append(seq)
    seq.append_token(99)  # the newest token: sampled, not yet computed
    manager.may_append(seq)
    return seq


@pytest.mark.hint(4)
def test_reserve_takes_the_blocks_the_proposals_need():
    """len 6 in 2 blocks of 4: 5 proposals need slots up to token 11, one more block; 1 proposal needs none."""
    manager = BlockManager(8, BLOCK)
    seq = running_seq(manager, [1, 2, 3, 4, 5])
    assert len(seq) == 6 and len(seq.block_table) == 2
    assert reserve_speculative_slots(manager, seq, 1) == 1 and len(seq.block_table) == 2, "slot 6 is in block 1"
    assert reserve_speculative_slots(manager, seq, 5) == 5
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 5


@pytest.mark.hint(4)
def test_reserve_shrinks_the_proposal_when_blocks_run_short():
    """With no free block left, only the slots of the last block are usable: 2 of 5 proposals fit, never an error."""
    manager = BlockManager(2, BLOCK)
    seq = running_seq(manager, [1, 2, 3, 4, 5])
    assert manager.num_free_blocks == 0
    assert reserve_speculative_slots(manager, seq, 5) == 2
    assert len(seq.block_table) == 2


@pytest.mark.hint(4)
def test_rollback_releases_the_blocks_of_rejected_proposals():
    """After 5 proposals (3 blocks) and 1 kept + 1 target token (len 8), the third block goes back to the free list."""
    manager = BlockManager(8, BLOCK)
    seq = running_seq(manager, [1, 2, 3, 4, 5])
    reserve_speculative_slots(manager, seq, 5)
    third = seq.block_table[2]
    seq.append_token(40)
    seq.append_token(41)
    rollback_speculative_slots(manager, seq, len(seq) - 1)
    assert len(seq.block_table) == 2 and third not in seq.block_table
    assert manager.num_free_blocks == 6 and manager.blocks[third].ref_count == 0
    assert third in manager.free_block_ids


@pytest.mark.hint(4)
def test_rollback_registers_only_blocks_of_final_computed_tokens():
    """Prefix caching: a block becomes findable once full of final tokens with K/V, never one holding proposals."""
    manager = BlockManager(8, BLOCK, enable_prefix_caching=True)
    seq = running_seq(manager, [1, 2, 3, 4, 5])  # tokens 1 2 3 4 | 5 99
    reserve_speculative_slots(manager, seq, 5)
    for token in (30, 31, 32):  # 2 proposals kept, then the target's token: len 9
        seq.append_token(token)
    rollback_speculative_slots(manager, seq, 8)
    assert len(seq.block_table) == 3
    second = manager.blocks[seq.block_table[1]]
    assert second.hash != NO_HASH and second.token_ids == [5, 99, 30, 31], "block 1 is full of final tokens"
    assert manager.blocks[seq.block_table[2]].hash == NO_HASH, "block 2 holds only one final token"
    manager.deallocate(seq)
    again = Sequence([1, 2, 3, 4, 5, 99, 30, 31, 7], block_size=BLOCK)
    manager.allocate(again)
    assert again.num_cached_tokens == 8, "a new request with that prefix reuses both blocks"


class RollbackMachine(RuleBasedStateMachine):
    """Random admissions, speculative steps (reserve, keep some, roll back) and finishes over one BlockManager
    with prefix caching; the test side remembers what every slot holds, to check what registered blocks claim."""

    def __init__(self):
        super().__init__()
        self.manager = BlockManager(12, BLOCK, enable_prefix_caching=True)
        self.seqs = []
        self.written = {}  # block id -> {slot: token whose K/V it holds}

    def write(self, seq, start, tokens):
        for position, token in enumerate(tokens, start):
            block_id = seq.block_table[position // BLOCK]
            self.written.setdefault(block_id, {})[position % BLOCK] = token

    @rule(prompt=st.lists(st.integers(1, 3), min_size=1, max_size=9))
    def admit(self, prompt):
        seq = Sequence(prompt, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True), BLOCK)
        if len(self.seqs) >= 4 or not self.manager.can_allocate(seq):
            return
        self.manager.allocate(seq)
        self.write(seq, seq.num_cached_tokens, prompt[seq.num_cached_tokens:])
        seq.append_token(1)
        self.seqs.append(seq)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def speculative_step(self, data):
        seq = data.draw(st.sampled_from(self.seqs))
        if len(seq) > 36 or not self.manager.can_append(seq):
            return
        self.manager.may_append(seq)
        k = data.draw(st.integers(0, 6))
        got = reserve_speculative_slots(self.manager, seq, k)
        assert 0 <= got <= k
        assert len(seq.block_table) * BLOCK >= len(seq) + got, "the block table must cover every proposal"
        proposals = data.draw(st.lists(st.integers(1, 3), min_size=got, max_size=got))
        kept = data.draw(st.integers(0, got))
        length = len(seq)
        self.write(seq, length - 1, [seq.last_token] + proposals)  # the verification pass writes them all
        extra = data.draw(st.integers(1, 3).filter(lambda t: kept == got or t != proposals[kept]))
        for token in proposals[:kept] + [extra]:
            seq.append_token(token)
        rollback_speculative_slots(self.manager, seq, length + kept)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(self.seqs))
        self.manager.deallocate(seq)
        self.seqs.remove(seq)

    @invariant()
    def blocks_are_accounted_for(self):
        manager = self.manager
        free = list(manager.free_block_ids)
        assert len(free) == len(set(free)), "a block is twice in the free list"
        assert set(free).isdisjoint(manager.used_block_ids)
        assert len(free) + len(manager.used_block_ids) == manager.num_blocks, "a block was lost"
        refs = {}
        for seq in self.seqs:
            for block_id in seq.block_table:
                refs[block_id] = refs.get(block_id, 0) + 1
        for block in manager.blocks:
            assert block.ref_count == refs.get(block.block_id, 0), f"block {block.block_id}: wrong reference count"

    @invariant()
    def tables_fit_their_sequences(self):
        for seq in self.seqs:
            assert -(-(len(seq) - 1) // BLOCK) <= len(seq.block_table) <= -(-len(seq) // BLOCK), (
                "between steps a table covers the computed tokens, at most len(seq): rejected proposals' blocks go back")

    @invariant()
    def findable_blocks_hold_what_they_claim(self):
        for block_hash, block_id in self.manager.hash_to_block_id.items():
            block = self.manager.blocks[block_id]
            assert block.hash == block_hash
            held = self.written.get(block_id, {})
            assert [held.get(slot) for slot in range(BLOCK)] == block.token_ids, (
                f"block {block_id} is findable as {block.token_ids} but its K/V are of {held}: a block was "
                "registered before its tokens were final and computed")


@pytest.mark.hint(4)
def test_rollback_keeps_the_allocator_consistent():
    """Hypothesis state machine: reserve / keep some / roll back, with admissions and finishes, never loses a block,
    miscounts a reference or makes a block findable whose K/V are not its final tokens."""
    run_state_machine_as_test(RollbackMachine, settings=settings(
        max_examples=40, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)))
