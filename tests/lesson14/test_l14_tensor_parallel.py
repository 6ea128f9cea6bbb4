"""Lesson 14: two real processes (gloo on the CPU) compute what one process computes.

Every test here bounds its waiting: ``launch_ranks`` fails after a timeout, a test that
still hangs is ended by pytest-timeout (thread method: a collective blocked in C++ cannot
be interrupted by a signal), and every engine is shut down (workers joined) at the end.
One engine at a time: the driver process holds one tensor-parallel group.

The rank processes run learner code, so they are started on the learner's side: the rank
task comes from ``learner_helper`` and only the ranks' results (plain data) come back;
the engine's worker processes are signalled through ``learner_import("os")``.
"""

import signal
import time
from pathlib import Path

import pytest
import torch

from aios.config import features_up_to
from aios.engine.distributed import get_tp_size, launch_ranks
from aios.engine.tp_runner import TensorParallelError
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.loader import load_qwen3

IDS = [4, 8, 15, 16, 23, 42, 108, 7, 300, 2, 99]
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]
pytestmark = pytest.mark.timeout(120, method="thread")

ENGINE_OPTIONS = {**features_up_to(14), "attention_backend": "torch",
                  "max_num_seqs": 4, "max_model_len": 128, "num_kvcache_blocks": 48}


def one_process_logits(model_dir) -> torch.Tensor:
    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


def greedy(llm) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.mark.hint(4)
def test_two_ranks_give_the_logits_of_one(tiny_model_dir, learner_helper):
    """The fused model split over 2 gloo ranks gives the 1-process logits on rank 0 (fp32, atol 1e-4), None on rank 1."""
    expected = one_process_logits(tiny_model_dir)
    tasks = learner_helper(Path(__file__).with_name("l14_rank_tasks.py"))
    rank0, rank1 = launch_ranks(tasks.tp_forward_logits, 2, args=(str(tiny_model_dir), IDS), timeout=90)
    assert rank1["logits"] is None
    torch.testing.assert_close(rank0["logits"], expected, rtol=1e-5, atol=1e-4)
    assert (rank0["qkv_rows"], rank0["down_columns"], rank0["embedding_rows"]) == (64, 64, 256)  # half of each


@pytest.mark.hint(5)
def test_engine_with_two_ranks_generates_what_one_rank_does(tiny_model_dir):
    """LLM(tensor_parallel_size=2) produces the same greedy tokens as tensor_parallel_size=1."""
    expected = greedy(LLM(tiny_model_dir, **ENGINE_OPTIONS))
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, **ENGINE_OPTIONS)
    try:
        assert greedy(llm) == expected
    finally:
        llm.shutdown()


@pytest.mark.hint(5)
def test_shutdown_stops_every_worker(tiny_model_dir):
    """LLM.shutdown() makes every worker exit cleanly (exit code 0) and returns this process to one rank."""
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, **ENGINE_OPTIONS)
    workers = [w.process for w in llm.model_runner.workers]
    assert get_tp_size() == 2
    llm.shutdown()
    assert [p.exitcode for p in workers] == [0]
    assert get_tp_size() == 1


@pytest.mark.hint(5)
def test_dead_worker_is_reported_promptly(tiny_model_dir, learner_import):
    """A worker killed in the middle of a step makes generate() raise TensorParallelError naming rank 1 within seconds."""
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, **ENGINE_OPTIONS)
    pid = llm.model_runner.workers[0].process.pid
    os, threading = learner_import("os"), learner_import("threading")  # where the worker process is
    os.kill(pid, signal.SIGSTOP)  # frozen: the driver's next collective waits for it ...
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))  # ... until it dies
    killer.start()
    start = time.monotonic()
    try:
        with pytest.raises(TensorParallelError, match="rank 1"):
            greedy(llm)
        assert time.monotonic() - start < 20
    finally:
        killer.cancel()
        llm.shutdown()
    assert get_tp_size() == 1


@pytest.mark.hint(5)
def test_failing_driver_step_stops_the_workers(tiny_model_dir, monkeypatch):
    """When the driver's own part of a step fails, its error surfaces within seconds and no worker is left running."""
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, **ENGINE_OPTIONS)
    workers = [w.process for w in llm.model_runner.workers]

    def broken_sample(logits, seqs):
        raise ArithmeticError("sampler exploded")

    monkeypatch.setattr(llm.model_runner.runner, "sample", broken_sample)
    start = time.monotonic()
    try:
        with pytest.raises(ArithmeticError, match="sampler exploded"):
            greedy(llm)
        assert time.monotonic() - start < 20
        assert not any(p.is_alive() for p in workers)
    finally:
        llm.shutdown()
    assert get_tp_size() == 1
