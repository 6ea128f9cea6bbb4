"""Lesson 13: prefix caching — hash-chained blocks, shared by reference count, reused after they are freed."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aios.engine.block_manager as block_manager_module
from aios import LLM, SamplingParams
from aios.config import features_up_to
from aios.engine.block_manager import BlockManager, compute_block_hash
from aios.engine.sequence import Sequence

BLOCK = 4
# The lesson's mechanisms up to 13; attention stays on the PyTorch path (lesson 7), fast on the CPU.
ENGINE_OPTIONS = {**features_up_to(13), "attention_backend": "torch"}


def seq_of(tokens, block_size=BLOCK) -> Sequence:
    return Sequence(list(tokens), SamplingParams(temperature=0.0), block_size)


def hash_chain(tokens, block_size=BLOCK) -> list[int]:
    """compute_block_hash over every full block of ``tokens``, each chained to the one before."""
    hashes, prev = [], -1
    for start in range(0, len(tokens) - block_size + 1, block_size):
        prev = compute_block_hash(tokens[start : start + block_size], prev)
        hashes.append(prev)
    return hashes


@pytest.mark.hint(2)
def test_block_hash_covers_tokens_and_previous_hash():
    """compute_block_hash is a deterministic 64-bit value that changes with any token or with the previous hash."""
    tokens = [1, 2, 3, 4]
    first = compute_block_hash(tokens)
    assert first == compute_block_hash(list(tokens)) and 0 <= first < 2**64
    assert compute_block_hash([1, 2, 3, 5]) != first
    assert compute_block_hash([2, 1, 3, 4]) != first
    assert compute_block_hash(tokens, first) != first
    assert compute_block_hash(tokens, first) != compute_block_hash(tokens, first + 1)


@pytest.mark.hint(2)
@settings(max_examples=50, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3), min_size=BLOCK, max_size=6 * BLOCK),
    position=st.integers(0, 6 * BLOCK - 1),
    new_token=st.integers(4, 9),
)
def test_a_changed_token_changes_its_block_hash_and_every_later_one(tokens, position, new_token):
    """Equal prefixes give equal hash chains; changing one token changes its block's hash and all later ones."""
    position %= len(tokens)
    changed = tokens[:position] + [new_token] + tokens[position + 1 :]
    original, edited = hash_chain(tokens), hash_chain(changed)
    block = position // BLOCK
    assert original[:block] == edited[:block]
    assert all(a != b for a, b in zip(original[block:], edited[block:]))


@pytest.mark.hint(1)
def test_sequences_with_a_common_prefix_share_its_blocks():
    """A second sequence with the same first 3 blocks reuses them (ref count 2) and skips their 12 tokens."""
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    prefix = list(range(100, 112))
    first, second = seq_of(prefix + [1, 2, 3, 4, 5]), seq_of(prefix + [7, 8])
    manager.allocate(first)
    assert first.num_cached_tokens == 0
    manager.allocate(second)
    assert second.block_table[:3] == first.block_table[:3]
    assert second.block_table[3] not in first.block_table
    assert second.num_cached_tokens == 12
    assert [manager.blocks[b].ref_count for b in first.block_table] == [2, 2, 2, 1, 1]
    assert manager.num_free_blocks == 16 - 6


@pytest.mark.hint(3)
@pytest.mark.parametrize("length,cached", [(12, 8), (13, 12), (3, 0), (4, 0), (5, 4)])
def test_a_fully_cached_prompt_still_computes_its_last_token(length, cached):
    """The block holding the last prompt token is never taken from the cache: prefill needs that token's logits."""
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    tokens = list(range(length))
    manager.allocate(seq_of(tokens))
    again = seq_of(tokens)
    manager.allocate(again)
    assert again.num_cached_tokens == cached
    assert again.num_cached_tokens < len(again)


@pytest.mark.hint(1)
def test_freed_blocks_keep_their_content_until_reused():
    """After a sequence is freed its full blocks stay findable: the same prompt gets the same blocks back."""
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=True)
    tokens = list(range(50, 61))  # 2 full blocks + 3 tokens
    first = seq_of(tokens)
    manager.allocate(first)
    table = list(first.block_table)
    manager.deallocate(first)
    assert manager.num_free_blocks == 8
    again = seq_of(tokens)
    manager.allocate(again)
    assert again.block_table[:2] == table[:2] and again.num_cached_tokens == 8
    assert manager.num_free_blocks == 8 - 3
    assert all(manager.blocks[b].ref_count == 1 for b in again.block_table)


@pytest.mark.hint(4)
def test_a_block_taken_for_new_content_is_no_longer_found():
    """When the free list hands out a cached block for other tokens, its old prefix must stop matching."""
    manager = BlockManager(num_blocks=3, block_size=BLOCK, enable_prefix_caching=True)
    old = seq_of([1, 1, 1, 1, 2, 2, 2, 2, 9])
    manager.allocate(old)
    manager.deallocate(old)
    filler = seq_of([5, 5, 5, 5, 6, 6, 6, 6, 7])  # needs all 3 blocks: every old block is re-used
    manager.allocate(filler)
    manager.deallocate(filler)
    again = seq_of([1, 1, 1, 1, 2, 2, 2, 2, 9])
    manager.allocate(again)
    assert again.num_cached_tokens == 0
    assert manager.hash_to_block_id[hash_chain(again.token_ids)[0]] == again.block_table[0]


@pytest.mark.hint(5)
@pytest.mark.parametrize("generated", [2, 5])
def test_decode_registers_a_block_once_its_last_token_is_scheduled(generated):
    """may_append makes a block shareable as soon as the decode step that completes it is scheduled."""
    manager = BlockManager(num_blocks=16, block_size=BLOCK, enable_prefix_caching=True)
    growing = seq_of([3, 1, 4, 1, 5, 9])
    manager.allocate(growing)
    for token in [2, 6, 5, 3, 5][:generated]:  # 8 tokens fill blocks 0 and 1; 11 also start block 2
        growing.append_token(token)
        assert manager.can_append(growing)
        manager.may_append(growing)
    assert len(growing.block_table) == growing.num_blocks
    follower = seq_of(growing.token_ids[:8] + [8, 8])
    manager.allocate(follower)
    assert follower.block_table[:2] == growing.block_table[:2]
    assert follower.num_cached_tokens == 8


@pytest.mark.hint(3)
def test_forced_hash_collisions_never_return_a_wrong_block(monkeypatch):
    """With every block hash forced equal, the token/parent check still never hands out a block of another prefix."""
    monkeypatch.setattr(block_manager_module, "compute_block_hash", lambda token_ids, prev_hash=-1: 42)
    manager = BlockManager(num_blocks=40, block_size=BLOCK, enable_prefix_caching=True)
    rng = random.Random(0)
    owners = {}  # block id -> the token prefix its K/V were computed for
    for _ in range(30):
        tokens = [rng.randrange(2) for _ in range(rng.randrange(1, 14))]
        seq = seq_of(tokens)
        manager.allocate(seq)
        for i in range(seq.num_cached_tokens // BLOCK):
            assert owners[seq.block_table[i]] == tuple(tokens[: (i + 1) * BLOCK])
        for i, block_id in enumerate(seq.block_table):
            owners[block_id] = tuple(tokens[: (i + 1) * BLOCK])
        manager.deallocate(seq)


@pytest.fixture(scope="module")
def shared_prompt_runs(tiny_model_dir):
    """The same workload (one 64-token system prompt, 6 user turns) with prefix caching off and on."""
    rng = random.Random(13)
    system = [rng.randrange(1, 500) for _ in range(64)]
    prompts = [system + [rng.randrange(1, 500) for _ in range(rng.randrange(3, 9))] for _ in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    runs = {}
    for caching in (False, True):
        llm = LLM(tiny_model_dir, max_model_len=128, num_kvcache_blocks=64, kvcache_block_size=16,
                  **{**ENGINE_OPTIONS, "enable_prefix_caching": caching})
        seqs = [llm.add_request(prompt, params) for prompt in prompts]
        prefilled = 0
        while not llm.is_finished():
            _, num_tokens = llm.step()
            prefilled += max(num_tokens, 0)
        runs[caching] = ([seq.completion_token_ids for seq in seqs], prefilled)
    return prompts, runs


def test_engine_outputs_are_identical_with_and_without_prefix_caching(shared_prompt_runs):
    """LLM with prefix caching generates exactly the tokens it generates without it (greedy)."""
    _, runs = shared_prompt_runs
    assert runs[True][0] == runs[False][0]


@pytest.mark.hint(4)
def test_engine_prefills_the_shared_system_prompt_once(shared_prompt_runs):
    """With a shared 64-token system prompt (4 blocks), only the first request prefills it: 5 * 64 tokens saved."""
    prompts, runs = shared_prompt_runs
    total = sum(len(p) for p in prompts)
    assert runs[False][1] == total
    assert runs[True][1] == total - 5 * 64
