"""Lesson 21 (hidden): uneven stages, more sequences than micro-batches, sampling, preemption, a killed middle rank."""

import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.config import Config, features_up_to
from aios.engine.distributed import launch_ranks
from aios.engine.pipeline import Stage, load_stage_model, partition_layers, split_micro_batches
from aios.engine.pp_runner import PipelineError
from aios.engine.tp_runner import step_logits
from aios.llm import LLM
from aios.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(150, method="thread")

OPTIONS = {**features_up_to(14), "device": "cpu", "attention_backend": "torch", "max_num_seqs": 8, "max_model_len": 96,
           "kvcache_block_size": 4, "num_kvcache_blocks": 96}
# Five prompts: more sequences than stages, so micro-batches hold 3 and 2 (PP=2) or 2, 2, 1 (PP=3).
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13, [300, 2, 99], list(range(100, 121))]
# A cache of 24 blocks of 4 slots cannot hold these four at full length: the run must preempt.
SMALL_CACHE = {**OPTIONS, "num_kvcache_blocks": 24}
LONG_RUN = [list(range(i, i + 20)) for i in (30, 60, 90, 120)]


def scripted_logits(llm, logits_of) -> list[torch.Tensor]:
    for prompt in PROMPTS:
        llm.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    steps = []
    for _ in range(3):
        seqs, is_prefill = llm.scheduler.schedule()
        logits = logits_of(seqs, is_prefill)
        steps.append(logits)
        llm.scheduler.postprocess(seqs, logits.argmax(-1).tolist())
    assert llm.is_finished()
    return steps


def greedy(llm, prompts=PROMPTS, max_tokens=6) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def small_reference(small_model_dir):
    """What one process computes on the small model (built before any pipeline engine)."""
    llm = LLM(small_model_dir, **OPTIONS)
    return {"logits": scripted_logits(llm, lambda seqs, p: step_logits(llm.model_runner, seqs, p)),
            "tokens": greedy(llm)}


@pytest.mark.hint(1)
def test_partition_of_real_shapes():
    """Qwen3-32B's 64 layers on 3 stages: [(0, 22), (22, 43), (43, 64)]; 28 layers on 8: four of 4, four of 3."""
    assert partition_layers(64, 3) == [(0, 22), (22, 43), (43, 64)]
    assert [b - a for a, b in partition_layers(28, 8)] == [4, 4, 4, 4, 3, 3, 3, 3]
    assert partition_layers(1, 1) == [(0, 1)]


@pytest.mark.hint(5)
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 9))
def test_fewer_sequences_than_micro_batches(num_seqs, parts):
    """With fewer sequences than micro-batches every part still holds at least one sequence, in order."""
    micro = split_micro_batches([f"s{i}" for i in range(num_seqs)], parts)
    assert len(micro) == min(num_seqs, parts) and all(micro)
    assert [s for part in micro for s in part] == [f"s{i}" for i in range(num_seqs)]


@pytest.mark.hint(5)
def test_activations_arrive_whole_and_in_order(learner_helper):
    """send_activations on rank 0 and recv_activations on rank 1 hand over hidden states and residual unchanged."""
    tasks = learner_helper(Path(__file__).with_name("l21_hidden_rank_tasks.py"))
    _, received = launch_ranks(tasks.hand_over_activations, 2, args=(5, 8), timeout=90)
    expected = torch.arange(40, dtype=torch.float32).view(5, 8)
    torch.testing.assert_close(received["hidden"], expected)
    torch.testing.assert_close(received["residual"], -expected - 0.5)


@pytest.mark.hint(4)
def test_tied_last_stage_head_is_the_embedding(tiny_model_dir):
    """On the tiny model (tied embeddings) stage 1's LM head holds the checkpoint's embedding matrix."""
    config = Config(str(tiny_model_dir), dtype="float32", device="cpu")
    first = load_stage_model(config, Stage(0, 2, 0, 1))
    last = load_stage_model(config, Stage(1, 2, 1, 2))
    torch.testing.assert_close(last.lm_head.weight, first.model.embed_tokens.weight)


@pytest.mark.hint(6)
def test_three_uneven_stages_match_one_process(small_model_dir, small_reference):
    """PP=3 on 4 layers (stages of 2, 1, 1): five prompts' prefill and decode logits and greedy tokens equal one process's."""
    llm = LLM(small_model_dir, pipeline_parallel_size=3, **OPTIONS)
    try:
        assert llm.model_runner.kv_cache.k_cache.shape[0] == 2  # stage 0: layers 0 and 1
        got = scripted_logits(llm, llm.model_runner.step_logits)
        for step, (a, b) in enumerate(zip(got, small_reference["logits"])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")
        assert greedy(llm) == small_reference["tokens"]
    finally:
        llm.shutdown()


@pytest.mark.hint(6)
def test_preempting_and_sampled_runs_on_two_stages(tiny_model_dir):
    """PP=2 with a cache too small for the run (preemption, recompute) gives one process's greedy tokens;
    sampled requests all finish with their max_tokens."""
    expected = greedy(LLM(tiny_model_dir, **SMALL_CACHE), LONG_RUN, max_tokens=12)
    llm = LLM(tiny_model_dir, pipeline_parallel_size=2, **SMALL_CACHE)
    try:
        assert greedy(llm, LONG_RUN, max_tokens=12) == expected
        params = [SamplingParams(temperature=t, max_tokens=5, ignore_eos=True) for t in (0.7, 1.0, 0.0)]
        outputs = llm.generate(PROMPTS[:3], params, use_tqdm=False)
        assert [len(out["token_ids"]) for out in outputs] == [5, 5, 5]
    finally:
        llm.shutdown()


@pytest.mark.hint(6)
def test_killed_middle_stage_is_reported(small_model_dir, learner_import):
    """Killing rank 1 (the middle of three stages) makes generate() raise PipelineError naming it within 20 s."""
    llm = LLM(small_model_dir, pipeline_parallel_size=3, **OPTIONS)
    processes = list(llm.model_runner.processes)
    os = learner_import("os")
    os.kill(processes[0].pid, signal.SIGKILL)
    start = time.monotonic()
    try:
        with pytest.raises(PipelineError, match="rank 1 "):
            greedy(llm)
        assert time.monotonic() - start < 20
    finally:
        llm.shutdown()
    deadline = time.monotonic() + 15
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.is_alive() for p in processes)
