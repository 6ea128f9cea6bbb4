"""Lesson 11 (hidden, GPU): graph replay under preemption and in bfloat16."""

import pytest
import torch

from aios.config import features_up_to
from aios.llm import LLM
from aios.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.hint(4)]


def tokens(model_dir, **options):
    base = {**features_up_to(11), "max_num_seqs": 8, "max_model_len": 256, "kvcache_block_size": 16,
            "num_kvcache_blocks": 512}
    llm = LLM(model_dir, **{**base, **options})
    prompts = [list(range(3, 3 + n)) for n in (20, 90, 45, 7, 130, 60)]
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    return [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)], llm


def test_graphs_match_eager_under_preemption(tiny_model_dir):
    """With a KV cache small enough to force preemptions, graph decode still equals eager decode."""
    graphed, llm = tokens(tiny_model_dir, num_kvcache_blocks=24)
    assert llm.scheduler.num_preemptions > 0 and llm.model_runner.graphs
    assert graphed == tokens(tiny_model_dir, num_kvcache_blocks=24, enforce_eager=True)[0]


def test_replayed_logits_close_in_bfloat16(tiny_model_dir):
    """In bfloat16, a replayed decode step's logits stay within bf16 rounding of the eager step's."""
    llm = LLM(tiny_model_dir, **{**features_up_to(11), "max_num_seqs": 8, "dtype": "bfloat16",
                               "num_kvcache_blocks": 256})
    for n in (5, 80, 33):
        llm.add_request(list(range(1, n + 1)), SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    llm.step()
    seqs, _ = llm.scheduler.schedule()
    runner = llm.model_runner
    replayed = runner.run_model(*runner.prepare_decode(seqs)).clone()
    graphs, runner.graphs = runner.graphs, {}
    try:
        eager = runner.run_model(*runner.prepare_decode(seqs))
    finally:
        runner.graphs = graphs
    torch.testing.assert_close(replayed, eager, atol=5e-2, rtol=5e-2)
