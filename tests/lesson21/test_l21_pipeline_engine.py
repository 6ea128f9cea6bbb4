"""Lesson 21: the engine over real ranks (gloo on the CPU) computes what one process computes.

Every test bounds its waiting (pytest-timeout's thread method: a blocked collective cannot be
interrupted by a signal) and shuts its engine down; one parallel engine per process at a time.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aios.config import features_up_to
from aios.engine.distributed import free_port, get_tp_size
from aios.engine.pipeline import partition_layers
from aios.engine.pp_runner import PipelineError
from aios.engine.tp_runner import step_logits
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from grader.remote.client import learner_readable

pytestmark = pytest.mark.timeout(150, method="thread")

# device="cpu": these are the gloo tests, also on a GPU machine (tests/lesson21/test_l21_gpu.py runs NCCL).
OPTIONS = {**features_up_to(14), "device": "cpu", "attention_backend": "torch", "max_num_seqs": 4,
           "max_model_len": 128, "num_kvcache_blocks": 48}
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]


def greedy(llm) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(PROMPTS, params, use_tqdm=False)]


def scripted_logits(llm, logits_of) -> list[torch.Tensor]:
    """Logits of a prefill step and two decode steps, the scheduler driven by hand."""
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


def one_process(model_dir) -> dict:
    llm = LLM(model_dir, **OPTIONS)
    return {"logits": scripted_logits(llm, lambda seqs, p: step_logits(llm.model_runner, seqs, p)),
            "tokens": greedy(llm)}


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_dir):
    return one_process(tiny_model_dir)


def assert_same_logits(got, expected):
    for step, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")


@pytest.mark.hint(6)
def test_two_stages_match_one_process(tiny_model_dir, tiny_reference):
    """PP=2 on the tiny model: prefill and decode logits and greedy tokens equal one process's; stage 0 caches 1 layer."""
    llm = LLM(tiny_model_dir, pipeline_parallel_size=2, **OPTIONS)
    try:
        assert tuple(llm.model_runner.kv_cache.k_cache.shape[:2]) == (1, 48)  # its own layer only
        assert_same_logits(scripted_logits(llm, llm.model_runner.step_logits), tiny_reference["logits"])
        assert greedy(llm) == tiny_reference["tokens"]
    finally:
        llm.shutdown()
    assert get_tp_size() == 1


@pytest.mark.hint(6)
def test_two_stages_match_transformers(tiny_model_dir):
    """PP=2 greedy tokens are transformers' argmax after the prompt and the tokens before them."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    llm = LLM(tiny_model_dir, pipeline_parallel_size=2, **OPTIONS)
    try:
        outputs = greedy(llm)
    finally:
        llm.shutdown()
    with torch.inference_mode():
        for prompt, tokens in zip(PROMPTS, outputs):
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


@pytest.mark.hint(2)
def test_tp2_x_pp2_matches_one_process(small_model_dir):
    """TP=2 x PP=2 (4 ranks) on the small model: logits and greedy tokens equal one process's."""
    expected = one_process(small_model_dir)
    llm = LLM(small_model_dir, tensor_parallel_size=2, pipeline_parallel_size=2, **OPTIONS)
    try:
        assert tuple(llm.model_runner.kv_cache.k_cache.shape[:4]) == (2, 48, 16, 2)  # 2 layers, half the KV heads
        assert_same_logits(scripted_logits(llm, llm.model_runner.step_logits), expected["logits"])
        assert greedy(llm) == expected["tokens"]
    finally:
        llm.shutdown()


@pytest.mark.hint(6)
def test_killed_stage_is_a_clear_error_in_bounded_time(tiny_model_dir, learner_import):
    """Killing stage 1 mid-run makes generate() raise PipelineError naming rank 1 within 20 s; no rank is left."""
    llm = LLM(tiny_model_dir, pipeline_parallel_size=2, **OPTIONS)
    process = llm.model_runner.processes[0]
    os, threading = learner_import("os"), learner_import("threading")  # where the worker process is
    os.kill(process.pid, signal.SIGSTOP)  # frozen: the driver's next step waits on it ...
    killer = threading.Timer(1.0, os.kill, (process.pid, signal.SIGKILL))  # ... until it dies
    killer.start()
    start = time.monotonic()
    try:
        with pytest.raises(PipelineError, match="rank 1 .*killed by signal 9"):
            greedy(llm)
        assert time.monotonic() - start < 20
    finally:
        killer.cancel()
        llm.shutdown()
    assert get_tp_size() == 1


@pytest.mark.hint(6)
def test_shutdown_stops_every_rank(tiny_model_dir):
    """LLM.shutdown() makes every worker rank exit cleanly (code 0) and the process leaves the groups."""
    llm = LLM(tiny_model_dir, tensor_parallel_size=2, pipeline_parallel_size=2, **OPTIONS)
    processes = list(llm.model_runner.processes)
    llm.shutdown()
    assert [p.exitcode for p in processes] == [0, 0, 0]


def test_more_stages_than_layers_is_refused(tiny_model_dir):
    """pipeline_parallel_size=3 on the 2-layer tiny model is a ValueError pointing to the README, before any rank starts."""
    with pytest.raises(ValueError, match="lesson21/README.md, 'Cutting the model into stages'"):
        LLM(tiny_model_dir, pipeline_parallel_size=3, **OPTIONS)
    assert partition_layers(2, 2) == [(0, 1), (1, 2)]  # while two stages are fine


def test_quantization_is_refused(tiny_model_dir):
    """pipeline_parallel_size=2 with quantization="int8" is a ValueError pointing to the README, before any rank starts."""
    with pytest.raises(ValueError, match="lesson21/README.md, 'What pipeline parallelism leaves out'"):
        LLM(tiny_model_dir, pipeline_parallel_size=2, quantization="int8", **OPTIONS)


def test_rank_that_never_joins_fails_the_rendezvous(tiny_model_dir, learner_import):
    """A rank alone at the rendezvous (its peer never comes) gets PipelineError within AIOS_PP_TIMEOUT_S (3 s here)."""
    code = ("import sys; from aios.config import Config\n"
            "from aios.engine.pp_runner import check_pipeline_config, init_pipeline_parallel\n"
            "config = Config(sys.argv[1], pipeline_parallel_size=2, device='cpu', attention_backend='torch')\n"
            "check_pipeline_config(config)\n"
            "init_pipeline_parallel(0, config, sys.argv[2])\n")
    env = {**learner_import("os").environ, "AIOS_PP_TIMEOUT_S": "3"}
    start = time.monotonic()
    result = learner_import("subprocess").run(
        [sys.executable, "-c", code, str(tiny_model_dir), f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "PipelineError" in result.stderr and "rendezvous" in result.stderr, result.stderr[-2000:]
    assert "'When a rank fails'" in result.stderr
    assert time.monotonic() - start < 40


@pytest.mark.timeout(120, method="thread")
def test_two_torchrun_nodes_over_loopback(tiny_model_dir, tiny_reference, tmp_path, learner_import):
    """Two `torchrun --nnodes 2` launches (c10d rendezvous on loopback) generate TP=1's tokens; killing rank 1
    then makes rank 0 fail with PipelineError and both launches end within 30 s."""
    script = learner_readable(Path(__file__).with_name("l21_torchrun_task.py"))  # the bundle is not, when sandboxed
    port = free_port()
    popen, os = learner_import("subprocess").Popen, learner_import("os")
    launches = [  # each rank's output goes to tmp_path/logs (torchrun --redirects 3 --log-dir)
        popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"aios-l21-{port}", "--rdzv-conf", "join_timeout=60", "--max-restarts", "0",
               "--redirects", "3", "--log-dir", str(tmp_path / "logs" / f"node{node}"),
               str(script), str(tiny_model_dir), str(tmp_path)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "AIOS_PP_TIMEOUT_S": "60"})
        for node in range(2)
    ]

    def rank_logs() -> str:
        return "\n".join(f"--- {path}\n{path.read_text()[-2000:]}" for path in sorted((tmp_path / "logs").rglob("*.log")))

    try:
        deadline = time.monotonic() + 80
        while not (tmp_path / "tokens.json").exists():
            assert time.monotonic() < deadline, "no tokens after 80 s:\n" + rank_logs()
            assert all(p.poll() is None for p in launches), "a launch ended early:\n" + rank_logs()
            time.sleep(0.2)
        assert json.loads((tmp_path / "tokens.json").read_text()) == tiny_reference["tokens"]
        os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        for launch in launches:
            launch.wait(timeout=max(1.0, 30 - (time.monotonic() - killed)))
        assert "PipelineError" in (tmp_path / "error.txt").read_text()
        assert all(launch.returncode != 0 for launch in launches)
    finally:
        for launch in launches:
            if launch.poll() is None:
                launch.kill()
                launch.wait()
