"""Lesson 11 (hidden): batch-size buckets, static-buffer reuse across steps, and the eager fallback."""

import pytest
import torch

from aios.config import features_up_to
from aios.engine.model_runner import DecodeGraphInputs, fill_graph_inputs, graph_batch_size_for, graph_batch_sizes
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.context import Context, using_context


@pytest.mark.hint(1)
@pytest.mark.parametrize("max_num_seqs,expected_tail", [(16, [8, 16]), (17, [16, 17]), (100, [80, 96, 100]),
                                                        (2, [1, 2])])
def test_graph_batch_sizes_other_maxima(max_num_seqs, expected_tail):
    """graph_batch_sizes is ascending, starts at 1, has no duplicates and ends with max_num_seqs."""
    sizes = graph_batch_sizes(max_num_seqs)
    assert sizes[0] == 1 and sizes == sorted(set(sizes))
    assert sizes[-len(expected_tail):] == expected_tail


@pytest.mark.hint(1)
def test_graph_batch_size_for_exact_sizes():
    """A batch whose size was captured replays exactly that graph (no padding at all)."""
    sizes = graph_batch_sizes(64)
    assert all(graph_batch_size_for(size, sizes) == size for size in sizes)


def step(num_seqs, width, base):
    context = Context(
        is_prefill=False,
        cu_seqlens_q=torch.arange(num_seqs + 1, dtype=torch.int32),
        context_lens=torch.full((num_seqs,), base, dtype=torch.int32),
        slot_mapping=torch.arange(base, base + num_seqs),
        block_tables=torch.full((num_seqs, width), base, dtype=torch.int32),
        max_seqlen_q=1,
        max_seqlen_k=base,
    )
    return torch.full((num_seqs,), base), torch.full((num_seqs,), base - 1), context


@pytest.mark.hint(3)
def test_fill_graph_inputs_resets_rows_of_a_previous_larger_step():
    """When the batch shrinks, rows that held real sequences last step become padding again (slot -1, length 0)."""
    inputs = DecodeGraphInputs.allocate(8, 4, hidden_size=2, dtype=torch.float32, device="cpu")
    fill_graph_inputs(inputs, *step(6, 3, base=20), batch_size=8)
    fill_graph_inputs(inputs, *step(2, 2, base=7), batch_size=4)
    assert inputs.slot_mapping[:4].tolist() == [7, 8, -1, -1]
    assert inputs.context_lens[:4].tolist() == [7, 7, 0, 0]
    assert inputs.input_ids[:4].tolist() == [7, 7, 0, 0]
    assert inputs.positions[:2].tolist() == [6, 6]
    assert inputs.block_tables[:2, :2].eq(7).all()


class EagerReplay:
    """Stand-in for a CUDA graph on the CPU: replay() runs the recorded decode forward eagerly."""

    def __init__(self, runner, batch_size):
        self.runner, self.batch_size, self.replays = runner, batch_size, 0

    def replay(self):
        runner = self.runner
        with using_context(runner.graph_inputs.context(runner.kv_cache, self.batch_size, runner.config.max_model_len)):
            runner._graph_forward(self.batch_size)
        self.replays += 1


@pytest.mark.hint(5)
def test_batches_beyond_the_largest_graph_run_eagerly(tiny_model_dir):
    """With graphs only for 1 and 2 sequences, a 3-sequence step runs eagerly and the tokens still match."""
    options = {**features_up_to(11), "max_num_seqs": 3, "max_model_len": 64, "kvcache_block_size": 8,
               "num_kvcache_blocks": 64}
    prompts = [[1, 2, 3], list(range(60, 75)), [6] * 5]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (2, 5, 3)]
    eager = [o["token_ids"] for o in LLM(tiny_model_dir, **options).generate(prompts, params, use_tqdm=False)]
    llm = LLM(tiny_model_dir, **options)
    runner = llm.model_runner
    runner.graph_sizes = [1, 2]
    runner.graph_inputs = DecodeGraphInputs.allocate(2, 8, llm.config.hf_config.hidden_size, llm.config.dtype,
                                                 runner.device)
    runner.graphs = {size: EagerReplay(runner, size) for size in (1, 2)}
    assert runner.run_decode_graph(*runner.prepare_decode(_three_fake_seqs())) is None
    assert [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)] == eager
    assert runner.graphs[2].replays > 0 and runner.graphs[1].replays > 0


def _three_fake_seqs():
    from aios.engine.sequence import Sequence

    seqs = [Sequence([1, 2], block_size=8) for _ in range(3)]
    for i, seq in enumerate(seqs):
        seq.block_table = [i]
    return seqs
