"""Lesson 11 on a GPU: captured decode graphs replay to the same results as eager decode."""

import pytest
import torch

from aios.config import features_up_to
from aios.engine.model_runner import graph_batch_sizes
from aios.llm import LLM
from aios.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.hint(4)]


def engine(model_dir, **options):
    return LLM(model_dir, **{**features_up_to(11), "max_num_seqs": 16, "max_model_len": 512,
                              "num_kvcache_blocks": 512, **options})


def test_one_graph_per_batch_size(tiny_model_dir):
    """The runner captures one graph for every size of graph_batch_sizes(max_num_seqs)."""
    llm = engine(tiny_model_dir)
    assert not llm.config.enforce_eager
    assert sorted(llm.model_runner.graphs) == graph_batch_sizes(16)


def test_replayed_logits_equal_eager_logits(tiny_model_dir):
    """For a padded decode batch (5 sequences -> graph of 8), replayed logits equal the eager forward's."""
    llm = engine(tiny_model_dir)
    for n in (3, 30, 100, 7, 64):
        llm.add_request(list(range(1, n + 1)), SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    llm.step()  # prefill all five
    seqs, is_prefill = llm.scheduler.schedule()
    assert not is_prefill and len(seqs) == 5
    runner = llm.model_runner
    replayed = runner.run_model(*runner.prepare_decode(seqs)).clone()
    graphs, runner.graphs = runner.graphs, {}
    try:
        eager = runner.run_model(*runner.prepare_decode(seqs))
    finally:
        runner.graphs = graphs
    torch.testing.assert_close(replayed, eager, atol=1e-4, rtol=1e-4)


def test_graph_engine_generates_same_tokens_as_eager(tiny_model_dir):
    """Greedy generation with CUDA graphs equals enforce_eager=True, across batch sizes that shrink as requests end."""
    prompts = [list(range(2, 2 + n)) for n in (5, 50, 120, 9, 33, 77, 4, 200, 16, 61)]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in (40, 3, 25, 60, 8, 33, 1, 17, 50, 12)]
    graphed = [o["token_ids"] for o in engine(tiny_model_dir).generate(prompts, params, use_tqdm=False)]
    eager = [o["token_ids"] for o in engine(tiny_model_dir, enforce_eager=True).generate(prompts, params, use_tqdm=False)]
    assert graphed == eager
