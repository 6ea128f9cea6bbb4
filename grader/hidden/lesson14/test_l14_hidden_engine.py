"""Lesson 14 (hidden): the two-rank engine step by step, under preemption, with sampling, and without orphans."""

import signal
import time
from pathlib import Path

import pytest
import torch

from aios.config import features_up_to
from aios.engine.distributed import same_aios_in_children
from aios.engine.tp_runner import step_logits
from aios.llm import LLM
from aios.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(120, method="thread")

# A small cache (24 blocks of 4 slots) so that the long run below must preempt.
OPTIONS = {**features_up_to(14), "attention_backend": "torch", "max_num_seqs": 4, "max_model_len": 64,
           "kvcache_block_size": 4, "num_kvcache_blocks": 24}
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]
LONG_RUN = [list(range(i, i + 20)) for i in (30, 60, 90, 120)]


def scripted_logits(llm, logits_of) -> list[torch.Tensor]:
    """Logits of a prefill step and two decode steps, driving the scheduler by hand."""
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


def long_run(llm) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(LONG_RUN, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def one_rank(tiny_model_dir):
    """What the one-process engine computes (built before any two-rank engine: one group per process)."""
    llm = LLM(tiny_model_dir, **OPTIONS)
    return {"logits": scripted_logits(llm, lambda seqs, p: step_logits(llm.model_runner, seqs, p)),
            "long_run": long_run(llm)}


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, one_rank):
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, **OPTIONS)
    yield llm
    llm.shutdown()


@pytest.mark.hint(5)
def test_prefill_and_decode_logits_match_one_rank(one_rank, two_ranks):
    """Driver logits of a prefill and two decode steps on 2 ranks equal the 1-process logits (fp32, atol 1e-4)."""
    got = scripted_logits(two_ranks, two_ranks.model_runner.step_logits)
    for step, (a, b) in enumerate(zip(got, one_rank["logits"])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")


@pytest.mark.hint(5)
def test_preempting_run_matches_one_rank(one_rank, two_ranks):
    """A run that overflows the KV cache (preemption, recompute) gives the 1-process greedy tokens on 2 ranks."""
    assert long_run(two_ranks) == one_rank["long_run"]


@pytest.mark.hint(5)
def test_sampled_requests_finish_on_two_ranks(two_ranks):
    """Requests with temperature > 0 (sampled on the driver only) all finish with their max_tokens on 2 ranks."""
    params = [SamplingParams(temperature=t, max_tokens=5, ignore_eos=True) for t in (0.7, 1.0, 0.0)]
    outputs = two_ranks.generate(PROMPTS, params, use_tqdm=False)
    assert [len(out["token_ids"]) for out in outputs] == [5, 5, 5]


def wait_for_worker_pid(driver, pids, empty, timeout: float) -> int:
    """The pid the driver reports once its engine is up; fails at once if the driver dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            (pid,) = pids.get(timeout=0.5)
            return pid
        except empty:
            if not driver.is_alive():
                pytest.fail(f"the driver process exited with code {driver.exitcode} before its engine started")
    pytest.fail(f"the driver's two-rank engine did not start within {timeout:.0f} s")


@pytest.mark.hint(5)
def test_worker_exits_when_its_driver_is_killed(tiny_model_dir, learner_helper, learner_import):
    """Killing the driver process (SIGKILL, no clean-up) makes its worker exit within seconds: no orphans."""
    # The driver runs learner code: it is started, watched and killed on the learner's side.
    tasks = learner_helper(Path(__file__).with_name("l14_hidden_rank_tasks.py"))
    context = learner_import("multiprocessing").get_context("spawn")
    pids = context.Queue()
    driver = context.Process(target=tasks.drive_engine_then_wait, args=(str(tiny_model_dir), OPTIONS, pids))
    with same_aios_in_children():
        driver.start()  # not a daemon: daemonic processes may not start workers
    try:
        worker_pid = wait_for_worker_pid(driver, pids, learner_import("queue").Empty, timeout=90)
    finally:
        driver.kill()
        driver.join()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not tasks.is_running(worker_pid):
            return
        time.sleep(0.1)
    learner_import("os").kill(worker_pid, signal.SIGKILL)
    pytest.fail(f"worker {worker_pid} was still running 15 s after its driver was killed")
