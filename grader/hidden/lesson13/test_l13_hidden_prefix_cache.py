"""Lesson 13, hidden: prefix caching under random workloads, forced hash collisions, preemption and the engine."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aios.engine.block_manager as block_manager_module
from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.engine.block_manager import NO_CONTENT, NO_HASH, BlockManager, OutOfBlocksError, compute_block_hash
from aios.engine.sequence import Sequence

ENGINE_OPTIONS = {**features_up_to(13), "attention_backend": "torch"}

HASHES = {
    "xxhash": None,  # the real compute_block_hash
    "constant": lambda token_ids, prev_hash=-1: 7,
    "weak": lambda token_ids, prev_hash=-1: sum(token_ids) % 3,  # ignores the chain: many collisions
}


def seq_of(tokens, block_size) -> Sequence:
    return Sequence(list(tokens), SamplingParams(temperature=0.0), block_size)


def check_invariants(manager: BlockManager, live: list[Sequence]) -> None:
    """Reference counts match the block tables; a block is free exactly when nobody references it."""
    holders = {}
    for seq in live:
        for block_id in seq.block_table:
            holders[block_id] = holders.get(block_id, 0) + 1
    free = list(manager.free_block_ids)
    assert len(free) == len(set(free)), "a block is on the free list twice"
    for block in manager.blocks:
        assert block.ref_count >= 0
        assert block.ref_count == holders.get(block.block_id, 0), f"{block} is held {holders.get(block.block_id, 0)}x"
        assert (block.block_id in free) == (block.ref_count == 0)
        assert (block.block_id in manager.used_block_ids) == (block.ref_count > 0)
    for block_hash, block_id in manager.hash_to_block_id.items():
        assert manager.blocks[block_id].hash == block_hash


class Workload:
    """Drives a BlockManager like the scheduler does and remembers which prefix every block was computed for."""

    def __init__(self, manager: BlockManager):
        self.manager = manager
        self.live: list[Sequence] = []
        self.owner: dict[int, tuple] = {}  # block id -> token prefix whose K/V it holds (full blocks)

    def record(self, seq: Sequence) -> None:
        """After a step every token of ``seq`` is computed: its full blocks hold its prefix."""
        size = self.manager.block_size
        for i, block_id in enumerate(seq.block_table):
            if (i + 1) * size <= len(seq):
                self.owner[block_id] = tuple(seq.token_ids[: (i + 1) * size])

    def admit(self, tokens) -> Sequence | None:
        seq = seq_of(tokens, self.manager.block_size)
        if not self.manager.can_allocate(seq):
            return None
        self.manager.allocate(seq)
        size = self.manager.block_size
        assert seq.num_cached_tokens % size == 0 and seq.num_cached_tokens < len(seq)
        for i in range(seq.num_cached_tokens // size):
            assert self.owner.get(seq.block_table[i]) == tuple(tokens[: (i + 1) * size]), "a wrong block was shared"
        self.live.append(seq)
        self.record(seq)
        return seq

    def grow(self, seq: Sequence, token: int) -> None:
        """A decode step: the sampled token is appended, gets a slot (may_append), and the next step computes it."""
        seq.append_token(token)
        if not self.manager.can_append(seq):
            self.preempt(seq, None)
            return
        self.manager.may_append(seq)
        self.record(seq)

    def finish(self, seq: Sequence, last_token: int) -> None:
        """The final sampled token is appended but never computed; then the blocks are freed."""
        seq.append_token(last_token)
        self.manager.deallocate(seq)
        self.live.remove(seq)

    def preempt(self, seq: Sequence, token: int | None) -> None:
        """Free every block (the newest token not computed yet) and come back later with all tokens."""
        if token is not None:
            seq.append_token(token)
        self.manager.deallocate(seq)
        self.live.remove(seq)
        self.admit(seq.token_ids)


@pytest.mark.hint(1)
@pytest.mark.parametrize("hash_name", list(HASHES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_workloads_share_only_exact_prefixes(hash_name, data):
    """Random admit/grow/finish/preempt sequences: invariants hold and every shared block holds exactly the same prefix."""
    block_size = data.draw(st.sampled_from([1, 2, 4]))
    manager = BlockManager(num_blocks=data.draw(st.integers(4, 24)), block_size=block_size, enable_prefix_caching=True)
    workload = Workload(manager)
    stems = [data.draw(st.lists(st.integers(0, 2), max_size=10)) for _ in range(3)]
    patch = HASHES[hash_name]
    with pytest.MonkeyPatch.context() as mp:
        if patch is not None:
            mp.setattr(block_manager_module, "compute_block_hash", patch)
        for _ in range(data.draw(st.integers(5, 40))):
            action = data.draw(st.sampled_from(["admit", "admit", "grow", "grow", "finish", "preempt"]))
            if action == "admit":
                stem = data.draw(st.sampled_from(stems))
                tail = data.draw(st.lists(st.integers(0, 2), max_size=6))
                if stem or tail:
                    workload.admit(stem + tail)
            elif workload.live:
                seq = data.draw(st.sampled_from(workload.live))
                token = data.draw(st.integers(0, 2))
                if action == "grow":
                    workload.grow(seq, token)
                elif action == "finish":
                    workload.finish(seq, token)
                else:
                    workload.preempt(seq, token)
            check_invariants(manager, workload.live)


@pytest.mark.hint(3)
def test_equal_tokens_after_a_different_prefix_are_not_shared():
    """A block equal in tokens but following a different first block is not shared, even if all hashes collide."""
    for patch in (None, HASHES["constant"]):
        with pytest.MonkeyPatch.context() as mp:
            if patch is not None:
                mp.setattr(block_manager_module, "compute_block_hash", patch)
            manager = BlockManager(num_blocks=20, block_size=2, enable_prefix_caching=True)
            manager.allocate(seq_of([1, 1, 5, 5, 9], 2))
            other = seq_of([2, 2, 5, 5, 9], 2)
            manager.allocate(other)
            assert other.num_cached_tokens == 0
            repeated = seq_of([5, 5, 5, 5, 5, 5, 1], 2)
            manager.allocate(repeated)
            again = seq_of([5, 5, 5, 5, 5, 5, 2], 2)
            manager.allocate(again)  # a correct chain may share all 3 blocks, but never out of order
            for i in range(again.num_cached_tokens // 2):
                assert again.block_table[i] == repeated.block_table[i]


@pytest.mark.hint(4)
def test_hash_map_follows_the_newest_copy_and_old_copies_unmap_only_themselves():
    """Two copies of one full block: taking back the older for new content must not unmap the newer one."""
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    older = seq_of([4, 4], 2)  # one full block that holds the last token: computed, never shared
    manager.allocate(older)
    newer = seq_of([4, 4], 2)
    manager.allocate(newer)
    block_hash = compute_block_hash([4, 4])
    assert manager.hash_to_block_id[block_hash] == newer.block_table[0]
    manager.deallocate(older)
    filler = seq_of([1, 2, 3, 5, 6], 2)  # takes the 3 free blocks, the older copy among them
    manager.allocate(filler)
    assert older.block_table == [] and manager.hash_to_block_id.get(block_hash) == newer.block_table[0]
    follower = seq_of([4, 4, 9], 2)
    manager.deallocate(filler)
    manager.allocate(follower)
    assert follower.block_table[0] == newer.block_table[0] and follower.num_cached_tokens == 2
    check_invariants(manager, [newer, follower])


@pytest.mark.hint(3)
def test_allocation_failure_changes_nothing():
    """With prefix caching on, an allocation that cannot fit raises OutOfBlocksError and leaves counts untouched."""
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    holder = seq_of([1, 2, 3, 4, 5], 2)
    manager.allocate(holder)
    before = ([b.ref_count for b in manager.blocks], list(manager.free_block_ids), dict(manager.hash_to_block_id))
    too_big = seq_of([1, 2, 3, 4, 6, 7, 8, 9], 2)
    assert not manager.can_allocate(too_big)
    with pytest.raises(OutOfBlocksError):
        manager.allocate(too_big)
    assert too_big.block_table == [] and too_big.num_cached_tokens == 0
    after = ([b.ref_count for b in manager.blocks], list(manager.free_block_ids), dict(manager.hash_to_block_id))
    assert after == before


@pytest.mark.hint(1)
def test_sharing_a_freed_cached_block_takes_it_off_the_free_list():
    """Reusing a cached block that sits on the free list removes it from there (and it is not handed out twice)."""
    manager = BlockManager(num_blocks=5, block_size=2, enable_prefix_caching=True)
    first = seq_of([7, 8, 9, 10, 11], 2)
    manager.allocate(first)
    shared = first.block_table[:2]
    manager.deallocate(first)
    again = seq_of([7, 8, 9, 10, 12, 13], 2)
    manager.allocate(again)
    assert again.block_table[:2] == shared and again.num_cached_tokens == 4
    assert not set(shared) & set(manager.free_block_ids)
    other = seq_of([1, 1, 1, 1], 2)
    manager.allocate(other)
    assert not set(other.block_table) & set(again.block_table)
    check_invariants(manager, [again, other])


@pytest.mark.hint(4)
def test_a_block_taken_for_new_content_forgets_its_old_prefix_entirely():
    """A cached block handed out for the partial block of new tokens keeps no hash, tokens or content id of the old."""
    manager = BlockManager(num_blocks=3, block_size=2, enable_prefix_caching=True)
    old = seq_of([1, 1, 2, 2, 3], 2)  # [1 1] [2 2] cached, [3] partial
    manager.allocate(old)
    first_block = old.block_table[0]
    manager.deallocate(old)  # free list: [3], [2 2], [1 1] (the beginning of a prefix last)
    new = seq_of([5, 5, 6, 6, 7], 2)
    manager.allocate(new)
    assert new.block_table[-1] == first_block, "the block that held [1 1] now holds the partial [7]"
    block = manager.blocks[first_block]
    assert (block.hash, block.token_ids, block.content_id, block.parent_content_id) == (
        NO_HASH, [], NO_CONTENT, NO_CONTENT)


@pytest.mark.hint(4)
def test_content_ids_are_never_reused():
    """Every registration gives a new content_id, even to a block registered before: the old content's child no longer
    matches after the block is re-used for other tokens."""
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    manager._register_block(0, 11, [1, 1], NO_CONTENT)
    old_content = manager.blocks[0].content_id
    manager._register_block(1, 12, [2, 2], old_content)
    manager._uncache_block(0)
    manager._register_block(0, 13, [3, 3], NO_CONTENT)
    assert manager.blocks[0].content_id != old_content
    assert manager._lookup_cached_block(12, [2, 2], old_content) == 1
    assert manager._lookup_cached_block(12, [2, 2], manager.blocks[0].content_id) is None


@pytest.mark.hint(2)
def test_block_hash_chain_is_position_sensitive():
    """The same block of tokens hashes differently as a first block and after another block."""
    block = [3, 3, 3, 3]
    first = compute_block_hash(block)
    assert compute_block_hash(block, first) != first
    assert compute_block_hash(block, compute_block_hash(block, first)) != compute_block_hash(block, first)


def engine_outputs(model_dir, prompts, params, caching: bool, **options):
    llm = LLM(model_dir, max_model_len=128, **{**ENGINE_OPTIONS, "enable_prefix_caching": caching, **options})
    seqs = [llm.add_request(prompt, p) for prompt, p in zip(prompts, params)]
    prefilled = 0
    while not llm.is_finished():
        _, num_tokens = llm.step()
        prefilled += max(num_tokens, 0)
    return [seq.completion_token_ids for seq in seqs], prefilled, llm


@pytest.mark.hint(4)
def test_engine_with_preemption_matches_no_caching(tiny_model_dir):
    """A cache so small that sequences are preempted: outputs with prefix caching equal those without."""
    rng = random.Random(5)
    system = [rng.randrange(1, 500) for _ in range(12)]
    prompts = [system + [rng.randrange(1, 500) for _ in range(rng.randrange(1, 6))] for _ in range(5)]
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)] * 5
    options = dict(num_kvcache_blocks=24, kvcache_block_size=4)
    plain, _, _ = engine_outputs(tiny_model_dir, prompts, params, False, **options)
    cached, _, llm = engine_outputs(tiny_model_dir, prompts, params, True, **options)
    assert llm.scheduler.num_preemptions > 0, "the test needs a preemption"
    assert cached == plain


@pytest.mark.hint(3)
def test_engine_seeded_sampling_unchanged_by_prefix_caching(tiny_model_dir):
    """Seeded sampled requests sharing a prefix give the same tokens with and without prefix caching."""
    system = list(range(200, 240))
    prompts = [system + [i, i + 1] for i in range(1, 8, 2)]
    params = [SamplingParams(temperature=0.9, top_p=0.95, seed=i, max_tokens=10, ignore_eos=True) for i in range(4)]
    plain, _, _ = engine_outputs(tiny_model_dir, prompts, params, False, num_kvcache_blocks=48)
    cached, prefilled, _ = engine_outputs(tiny_model_dir, prompts, params, True, num_kvcache_blocks=48)
    assert cached == plain
    assert prefilled == sum(len(p) for p in prompts) - 3 * 32  # 2 full blocks of 16 cached for 3 requests


@pytest.mark.hint(5)
def test_engine_second_turn_reuses_the_first_conversation(tiny_model_dir):
    """A follow-up prompt that extends an earlier prompt + answer prefills only the blocks not cached yet."""
    llm = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=32, kvcache_block_size=8, **ENGINE_OPTIONS)
    first = list(range(1, 21))
    answer = llm.generate([first], SamplingParams(temperature=0.0, max_tokens=13, ignore_eos=True),
                          use_tqdm=False)[0]["token_ids"]
    follow_up = first + answer + [400, 401, 402]
    seq = llm.add_request(follow_up, SamplingParams(temperature=0.0, max_tokens=2))
    _, prefilled = llm.step()
    # 20 + 13 tokens were in the cache; the K/V of all but the last answer token were computed:
    # 32 tokens, 4 full blocks of 8.
    assert seq.num_cached_tokens == 32
    assert prefilled == len(follow_up) - 32


@pytest.mark.gpu
def test_engine_with_every_lesson_13_feature_matches_no_caching(tiny_model_dir):
    """On a GPU with Triton attention and CUDA graphs, prefix caching changes no greedy token and saves the prefill."""
    rng = random.Random(8)
    system = [rng.randrange(1, 500) for _ in range(48)]
    prompts = [system + [rng.randrange(1, 500) for _ in range(rng.randrange(2, 12))] for _ in range(6)]
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)] * 6
    runs = {}
    for caching in (False, True):
        llm = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, max_num_seqs=8,
                  **{**features_up_to(13), "enable_prefix_caching": caching})
        seqs = [llm.add_request(prompt, p) for prompt, p in zip(prompts, params)]
        prefilled = 0
        while not llm.is_finished():
            _, num_tokens = llm.step()
            prefilled += max(num_tokens, 0)
        runs[caching] = ([seq.completion_token_ids for seq in seqs], prefilled)
    assert runs[True][0] == runs[False][0]
    assert runs[True][1] == runs[False][1] - 5 * 48
