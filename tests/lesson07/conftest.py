"""Fixtures of lesson 7's tests: a ModelRunner over the tiny model with a small paged cache."""

import random

import pytest
import torch

BLOCK_SIZE = 4
NUM_BLOCKS = 96


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    """A ModelRunner on the CPU: tiny model, 96 KV blocks of 4 tokens, lesson 7's features only."""
    from aios.config import Config, features_up_to
    from aios.engine.model_runner import ModelRunner

    config = Config(str(tiny_model_dir), device="cpu", num_kvcache_blocks=NUM_BLOCKS, kvcache_block_size=BLOCK_SIZE,
                    **features_up_to(7))
    return ModelRunner(config)


@pytest.fixture
def block_manager(runner):
    """A fresh allocator for the runner's cache (every test starts with all blocks free)."""
    from aios.engine.block_manager import BlockManager

    return BlockManager(runner.config.num_kvcache_blocks, runner.block_size)


@pytest.fixture
def random_prompt():
    """``random_prompt(length, seed)``: token ids the tiny tokenizer knows."""

    def make(length: int, seed: int = 0) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(3, 500) for _ in range(length)]

    return make


@pytest.fixture
def make_seq(runner):
    """``make_seq(token_ids, block_table=None)``: a greedy Sequence with the runner's block size."""
    from aios.engine.sequence import Sequence
    from aios.sampling_params import SamplingParams

    def make(token_ids, block_table=None):
        seq = Sequence(list(token_ids), SamplingParams(temperature=0.0), runner.block_size)
        if block_table is not None:
            seq.block_table = list(block_table)
        return seq

    return make


def as_lists(context) -> dict:
    """The Context's tensors as Python lists (for comparisons with hand-made expectations)."""
    names = ("positions", "cu_seqlens_q", "context_lens", "slot_mapping", "block_tables")
    return {name: getattr(context, name).tolist() for name in names}


@pytest.fixture
def context_lists():
    return as_lists


@pytest.fixture
def fused_model(runner):
    """The runner's own model (fused residual norm)."""
    return runner.model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run on one CPU thread: the tiny model's tensors gain nothing from more, and a busy machine loses a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
