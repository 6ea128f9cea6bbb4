"""Lesson 17 on a GPU: with sampled requests (temperature, top-k, top-p, seeded and unseeded rows) the overlapped
loop's decode steps never make the host wait for the GPU, except for the one deliberate wait per step: step t-1's
tokens, read after step t is launched. Skipped without CUDA.

How it is checked (``l17_helpers.decode_synchronisations``): ``torch.cuda.set_sync_debug_mode("error")`` around
the decode steps after a warm-up raises on any synchronisation torch reports (blocking copies, ``.item()``,
``bool()`` of a GPU tensor, ``nonzero``, stream synchronizes). An event wait is not one of those, so the waits on
``torch.cuda.Event`` are counted separately: exactly one per step, never on the step just launched.
"""

import random

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.hint(4)]

HELPERS = __file__.rsplit("/", 1)[0] + "/l17_helpers.py"

#: Per row kind (row index % 4): greedy; seeded top-k; unseeded top-k + top-p; seeded top-k + top-p.
CANDIDATE_ROWS = [
    {"temperature": 0.0},
    {"temperature": 0.8, "top_k": 20, "seed": 1},
    {"temperature": 1.0, "top_k": 5, "top_p": 0.9},
    {"temperature": 0.7, "top_k": 50, "top_p": 0.95, "seed": 2},
]
#: The same with the unseeded row's top-k removed: no top-k candidates, top-p sorts the whole vocabulary.
FULL_VOCABULARY_ROWS = [CANDIDATE_ROWS[0], CANDIDATE_ROWS[1], {"temperature": 1.0, "top_p": 0.9},
                        CANDIDATE_ROWS[3]]


def sampled_workload(rows: list[dict], n: int = 12):
    """n short prompts (one prefill step) and their settings: row kinds in turn, max_tokens 8, 12, ..., seeds
    distinct per request, EOS ignored (some requests finish inside the checked window, most do not)."""
    rng = random.Random(17)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(4, 30))] for _ in range(n)]
    settings = []
    for i in range(n):
        options = {**rows[i % len(rows)], "max_tokens": 8 + 4 * i, "ignore_eos": True}
        if "seed" in options:
            options["seed"] = 1000 * options["seed"] + i
        settings.append(options)
    return prompts, settings


@pytest.fixture(scope="module")
def overlapped_llm(tiny_model_dir):
    """One overlapped engine on the GPU (CUDA graphs, Triton attention), shared by this file's tests."""
    from aios import LLM
    from aios.config import features_up_to

    llm = LLM(str(tiny_model_dir), **{**features_up_to(17), "async_scheduling": True, "max_num_seqs": 16,
                                      "max_model_len": 512, "num_kvcache_blocks": 256})
    yield llm
    llm.shutdown()


@pytest.mark.parametrize("rows", [CANDIDATE_ROWS, FULL_VOCABULARY_ROWS], ids=["top-k-candidates", "full-vocabulary"])
def test_sampled_decode_steps_wait_only_for_the_previous_tokens(overlapped_llm, learner_helper, rows):
    """Sampled decode steps (temperature, top-k, top-p, seeded and unseeded rows) with CUDA graphs: no
    synchronisation torch reports, and one event wait per step, for step t-1's tokens only (lesson 12's
    sampler must decide from the host settings sampling_tensors passes; see lesson 12's README)."""
    llm = overlapped_llm
    assert llm.model_runner.graphs, "the GPU check expects CUDA graphs on"
    assert llm.is_finished(), "the engine should start idle (did an earlier test leave requests behind?)"
    prompts, settings = sampled_workload(rows)
    result = learner_helper(HELPERS).decode_synchronisations(llm, prompts, settings, warmup=3, window=24)
    assert result["error"] is None, (
        "a decode step of the overlapped loop made the host wait for the GPU (torch.cuda.set_sync_debug_mode "
        "'error'): the call below. With sampled requests this is usually the sampler reading a device tensor "
        "(bool(), int(), .item(), torch.tensor(list, device='cuda'), indexing with a list): take those decisions "
        "from the host settings instead (exercises/lesson12/README.md, 'Deciding on the host').\n"
        + result["error"])
    assert len(result["steps"]) >= 20 and all(n < 0 for n in result["steps"]), (
        f"the window should hold decode steps only (num_tokens < 0 each): {result['steps']}")
    assert result["waits"] == [1] * len(result["steps"]), (
        f"event waits per step: {result['waits']}; the overlapped loop waits exactly once per step, for the "
        "tokens of the step before (InFlightStep.token_ids)")
    assert result["waits_on_launched"] == 0, "a step waited for the tokens of the step it had just launched"
    assert result["device_syncs"] == 0, "torch.cuda.synchronize() was called during a decode step"
