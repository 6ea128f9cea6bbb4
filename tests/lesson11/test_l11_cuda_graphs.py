"""Lesson 11: choosing a captured batch size, padding a decode step into static buffers, replaying.

CUDA graphs need a GPU (test_l11_gpu.py). On the CPU these tests check the pure parts —
which sizes to capture, which one a step uses, how the static buffers are filled — and
run the replay path with a stand-in "graph" that re-runs the recorded forward eagerly.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.config import features_up_to
from aios.engine.model_runner import DecodeGraphInputs, fill_graph_inputs, graph_batch_size_for, graph_batch_sizes
from aios.engine.sequence import Sequence
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.context import Context, using_context

# Triton attention (lesson 9, the interpreter on the CPU) with small blocks, so decode steps cross blocks.
GRAPH_OPTIONS = {**features_up_to(11), "max_num_seqs": 4, "max_model_len": 96, "kvcache_block_size": 4,
                 "num_kvcache_blocks": 128}


@pytest.mark.hint(1)
def test_graph_batch_sizes_ladder():
    """graph_batch_sizes(256) is 1, 2, 4, 8, then every multiple of 16 up to 256."""
    assert graph_batch_sizes(256) == [1, 2, 4, 8] + list(range(16, 257, 16))


@pytest.mark.hint(1)
@pytest.mark.parametrize("max_num_seqs,expected", [(1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20])])
def test_graph_batch_sizes_end_at_max_num_seqs(max_num_seqs, expected):
    """The largest captured size is max_num_seqs itself, so every batch the scheduler forms has a graph."""
    assert graph_batch_sizes(max_num_seqs) == expected


@pytest.mark.hint(1)
def test_graph_batch_size_for_picks_smallest_fit():
    """A step of n sequences replays the smallest captured size >= n; beyond the largest there is none (eager)."""
    sizes = [1, 2, 4, 8, 16, 32]
    assert [graph_batch_size_for(n, sizes) for n in (1, 2, 3, 5, 8, 9, 17, 32)] == [1, 2, 4, 8, 8, 16, 32, 32]
    assert graph_batch_size_for(33, sizes) is None


@pytest.mark.hint(1)
@settings(max_examples=60, deadline=None)
@given(max_num_seqs=st.integers(1, 512), data=st.data())
def test_padding_waste_is_bounded(max_num_seqs, data):
    """For any batch up to max_num_seqs, the chosen graph fits it and pads at most 15 rows (or less than doubles it)."""
    num_seqs = data.draw(st.integers(1, max_num_seqs))
    size = graph_batch_size_for(num_seqs, graph_batch_sizes(max_num_seqs))
    assert size is not None and num_seqs <= size <= max_num_seqs
    assert size - num_seqs < max(16, num_seqs)


def decode_step(num_seqs: int, width: int):
    """What prepare_decode hands over for a step of num_seqs sequences (CPU tensors)."""
    input_ids = torch.arange(100, 100 + num_seqs)
    positions = torch.arange(10, 10 + num_seqs)
    context = Context(
        is_prefill=False,
        cu_seqlens_q=torch.arange(num_seqs + 1, dtype=torch.int32),
        context_lens=torch.arange(11, 11 + num_seqs, dtype=torch.int32),
        slot_mapping=torch.arange(50, 50 + num_seqs),
        block_tables=torch.arange(num_seqs * width, dtype=torch.int32).view(num_seqs, width),
        max_seqlen_q=1,
        max_seqlen_k=10 + num_seqs,
    )
    return input_ids, positions, context


@pytest.mark.hint(3)
def test_fill_graph_inputs_copies_and_pads():
    """fill_graph_inputs copies the step into the first rows and marks rows up to the graph size as padding."""
    inputs = DecodeGraphInputs.allocate(8, 6, hidden_size=4, dtype=torch.float32, device="cpu")
    input_ids, positions, context = decode_step(3, width=2)
    fill_graph_inputs(inputs, input_ids, positions, context, batch_size=4)
    assert inputs.input_ids[:4].tolist() == [100, 101, 102, 0]
    assert inputs.positions[:4].tolist() == [10, 11, 12, 0]
    assert inputs.slot_mapping[:4].tolist() == [50, 51, 52, -1], "padding rows must not write the cache"
    assert inputs.context_lens[:4].tolist() == [11, 12, 13, 0], "padding rows must attend over nothing"
    assert torch.equal(inputs.block_tables[:3, :2], context.block_tables)


class EagerReplay:
    """A stand-in for torch.cuda.CUDAGraph on the CPU: replay() re-runs what capture would have recorded."""

    def __init__(self, runner, batch_size: int):
        self.runner, self.batch_size = runner, batch_size
        self.replays = 0

    def replay(self):
        runner = self.runner
        context = runner.graph_inputs.context(runner.kv_cache, self.batch_size, runner.config.max_model_len)
        with using_context(context):
            runner._graph_forward(self.batch_size)
        self.replays += 1


def fake_graphs(llm, sizes):
    """Give the engine's runner static buffers and stand-in graphs for ``sizes``."""
    runner = llm.model_runner
    config = llm.config
    runner.graph_sizes = list(sizes)
    runner.graph_inputs = DecodeGraphInputs.allocate(
        max(sizes), -(-config.max_model_len // config.kvcache_block_size), config.hf_config.hidden_size,
        config.dtype, runner.device)
    runner.graphs = {size: EagerReplay(runner, size) for size in sizes}
    return runner.graphs


@pytest.mark.hint(5)
def test_replayed_decode_matches_eager_decode(tiny_model_dir):
    """Decode through run_decode_graph (padded batches, Triton kernels) yields the same greedy tokens as eager."""
    options = GRAPH_OPTIONS
    prompts = [[3, 4, 5, 6], list(range(30, 52)), [9] * 7]
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    eager = [o["token_ids"] for o in LLM(tiny_model_dir, **options).generate(prompts, params, use_tqdm=False)]
    llm = LLM(tiny_model_dir, **options)
    graphs = fake_graphs(llm, [1, 4])
    replayed = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert replayed == eager
    assert graphs[4].replays > 0, "3 running sequences should replay the graph of size 4"


@pytest.mark.hint(5)
def test_replayed_step_returns_one_row_per_sequence(tiny_model_dir):
    """run_decode_graph returns the hidden states of the step's sequences only (not the padding rows), as eager."""
    llm = LLM(tiny_model_dir, **GRAPH_OPTIONS)
    graphs = fake_graphs(llm, [1, 4])
    runner = llm.model_runner
    seqs = [Sequence(list(range(5, 5 + n)), block_size=GRAPH_OPTIONS["kvcache_block_size"]) for n in (3, 6, 9)]
    for i, seq in enumerate(seqs):
        seq.block_table = [3 * i + j for j in range(seq.num_blocks)]
    input_ids, positions, context = runner.prepare_decode(seqs)
    replayed = runner.run_decode_graph(input_ids, positions, context)
    assert graphs[4].replays == 1, "3 sequences replay the graph of size 4"
    assert replayed is not None and replayed.shape == (3, llm.config.hf_config.hidden_size), (
        "one row per sequence: the padding row is not part of the result")
    replayed = replayed.clone()
    with using_context(context):
        eager = runner.model(input_ids, positions)
    torch.testing.assert_close(replayed, eager, rtol=1e-4, atol=1e-4)  # a batch of 4 rounds like one of 3, nearly
