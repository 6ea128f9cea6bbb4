"""Lesson 14 (hidden): the collectives and the vocabulary-parallel layers, run by two real gloo ranks.

The ranks return what the learner's layers computed; the expected values are computed here
from the same inputs (``collective_inputs``, drawn from the same seed).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aios.engine.distributed import launch_ranks
from aios.fixtures import make_model
from aios.utils.loader import load_qwen3
from l14_hidden_rank_tasks import collective_inputs

pytestmark = pytest.mark.timeout(120, method="thread")

IDS = [7, 77, 177, 277, 377, 477, 1, 2, 3]


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    """Tiny shapes with its own lm_head and 4 KV heads: two per rank."""
    return make_model("tiny", tmp_path_factory.mktemp("l14h") / "untied", seed=5,
                      tie_word_embeddings=False, num_key_value_heads=4)


@pytest.fixture(scope="module")
def ranks(untied_dir, learner_helper):
    """The two ranks' results (or the error that stopped them, which every test then reports)."""
    tasks = learner_helper(Path(__file__).with_name("l14_hidden_rank_tasks.py"))
    try:
        return launch_ranks(tasks.collective_checks, 2, args=(str(untied_dir), IDS), timeout=90)
    except RuntimeError as error:
        return error


@pytest.fixture(scope="module")
def inputs():
    """The inputs the ranks drew (same seed, drawn again here)."""
    return collective_inputs()


def result(ranks, rank: int, name: str):
    if isinstance(ranks, Exception):
        pytest.fail(f"the two-rank run failed: {ranks}")
    value = ranks[rank][name]
    if isinstance(value, dict) and set(value) == {"error"}:
        pytest.fail(f"rank {rank}: {value['error']}")
    return value


@pytest.mark.hint(4)
def test_gather_to_driver_concatenates_in_rank_order(ranks):
    """gather_to_driver puts rank 0's tensor first and rank 1's second on the driver (any dim); rank 1 gets None."""
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)], dim=-1)
    assert torch.equal(result(ranks, 0, "gather_last_dim"), expected)
    assert torch.equal(result(ranks, 0, "gather_first_dim"), torch.tensor([[5.0, 5.0], [6.0, 6.0]]))
    assert result(ranks, 1, "gather_last_dim") is None


@pytest.mark.hint(1)
@pytest.mark.parametrize("rank", [0, 1])
def test_row_parallel_forward_sums_ranks_and_adds_bias_once(ranks, inputs, rank):
    """RowParallelLinear.forward all-reduces the partial products: every rank gets x @ W.T + b (bias counted once)."""
    expected = inputs["x"] @ inputs["weight"].T + inputs["bias"]
    torch.testing.assert_close(result(ranks, rank, "row_forward"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.hint(3)
@pytest.mark.parametrize("rank", [0, 1])
def test_vocab_parallel_embedding_gives_every_rank_the_full_lookup(ranks, inputs, rank):
    """VocabParallelEmbedding.forward: ids from both halves of the vocabulary come out right on both ranks."""
    torch.testing.assert_close(result(ranks, rank, "embedding"), F.embedding(inputs["token_ids"], inputs["table"]))


@pytest.mark.hint(4)
def test_parallel_lm_head_gives_full_logits_on_the_driver_only(ranks, inputs):
    """ParallelLMHead.forward returns [n, vocab] logits on rank 0 (both halves of the vocabulary) and None on rank 1."""
    expected = inputs["hidden"] @ inputs["table"].T
    torch.testing.assert_close(result(ranks, 0, "lm_head"), expected, rtol=1e-5, atol=1e-5)
    assert result(ranks, 1, "lm_head") is None


@pytest.mark.hint(1)
def test_untied_model_on_two_ranks_matches_one(ranks, untied_dir):
    """An untied model with 4 KV heads split over 2 ranks gives the 1-process logits (fp32, atol 1e-4)."""
    model = load_qwen3(untied_dir, dtype=torch.float32, fused_layers=True)
    with torch.inference_mode():
        expected = model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))
    torch.testing.assert_close(result(ranks, 0, "model_logits"), expected, rtol=1e-5, atol=1e-4)
    assert result(ranks, 1, "model_logits") is None
