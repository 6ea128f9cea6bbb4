"""Lesson 21: a Qwen3-MoE checkpoint (lesson 20) cut into stages computes what one process computes.

The fixture is tiny-moe with ``mlp_only_layers=[0]``: layer 0 is dense, layers 1 and 2 have
experts. Two stages hold layers (0, 1) and (2,): stage 1's layer 2 is a sparse layer whose
*local* index is 0, which the config would call dense. A stage that built its layers from the
local index would have no experts where the checkpoint has them.
"""

import pytest
import torch

from aios.config import Config, features_up_to
from aios.engine.pipeline import Stage, load_stage_model, partition_layers
from aios.engine.tp_runner import step_logits
from aios.llm import LLM
from aios.sampling_params import SamplingParams
from aios.utils.loader import load_qwen3

pytestmark = pytest.mark.timeout(150, method="thread")

IDS = [4, 8, 15, 16, 23, 42, 108, 7, 300, 2, 99]
OPTIONS = {**features_up_to(14), "device": "cpu", "attention_backend": "torch", "max_num_seqs": 4,
           "max_model_len": 128, "num_kvcache_blocks": 48}
PROMPTS = [[5, 6, 7, 8, 9], list(range(20, 58)), [11] * 13]


@pytest.fixture(scope="module")
def moe_dense_first_dir():
    """tiny-moe (3 layers, 8 experts, 2 per token) whose layer 0 is dense (``mlp_only_layers=[0]``)."""
    from aios.fixtures import cached_model

    return cached_model("tiny-moe", mlp_only_layers=[0])


def one_process_or_skip(compute, *args):
    """``compute(*args)``, the one-process MoE result; skips the test while this tree's lesson 20 (Qwen3-MoE) is
    still a stub: lesson 21 needs only lesson 14, so a learner may reach it before lesson 20."""
    try:
        return compute(*args)
    except NotImplementedError as error:
        if "Lesson 20" not in str(error):
            raise
        pytest.skip("needs lesson 20 (Qwen3-MoE) in aios/: do it first, or `python -m grader checkout-reference 20`")


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


def full_logits(model_dir) -> torch.Tensor:
    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True, fuse_residual_norm=True)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(IDS), torch.arange(len(IDS))))


def one_process(model_dir) -> tuple[list[torch.Tensor], list[list[int]]]:
    llm = LLM(model_dir, **OPTIONS)
    return scripted_logits(llm, lambda seqs, p: step_logits(llm.model_runner, seqs, p)), greedy(llm)


@pytest.mark.hint(3)
def test_moe_stages_chained_give_the_full_model_logits(moe_dense_first_dir):
    """tiny-moe (layer 0 dense) cut in 2: stage 0 then stage 1 give the whole MoE model's logits (fp32, atol 1e-5)."""
    expected = one_process_or_skip(full_logits, moe_dense_first_dir)
    config = Config(str(moe_dense_first_dir), dtype="float32", device="cpu")
    ranges = partition_layers(config.hf_config.num_hidden_layers, 2)
    stages = [load_stage_model(config, Stage(i, 2, *r)) for i, r in enumerate(ranges)]
    positions, hidden, residual = torch.arange(len(IDS)), None, None
    with torch.inference_mode():
        for stage in stages:
            hidden, residual = stage(positions, torch.tensor(IDS) if hidden is None else None, hidden, residual)
        logits = stages[-1].compute_logits(hidden)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    expert_layers = {int(name.split(".")[2]) for stage in stages for name, _ in stage.named_parameters()
                     if ".mlp.experts." in name}
    assert expert_layers == {1, 2}  # layer 2 has experts although it is stage 1's first (local 0) layer


@pytest.mark.hint(6)
def test_moe_two_stages_match_one_process_and_transformers(moe_dense_first_dir):
    """PP=2 on tiny-moe (layer 0 dense): prefill/decode logits and greedy tokens equal one process's, and the
    tokens are transformers' Qwen3MoeForCausalLM argmax."""
    from transformers import AutoModelForCausalLM

    expected_logits, expected_tokens = one_process_or_skip(one_process, moe_dense_first_dir)
    llm = LLM(moe_dense_first_dir, pipeline_parallel_size=2, **OPTIONS)
    try:
        assert tuple(llm.model_runner.kv_cache.k_cache.shape[:2]) == (2, 48)  # stage 0: layers 0 and 1
        got_logits = scripted_logits(llm, llm.model_runner.step_logits)
        got_tokens = greedy(llm)
    finally:
        llm.shutdown()
    for step, (got, expected) in enumerate(zip(got_logits, expected_logits)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")
    assert got_tokens == expected_tokens
    hf = AutoModelForCausalLM.from_pretrained(moe_dense_first_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        for prompt, tokens in zip(PROMPTS, got_tokens):
            logits = hf(torch.tensor([prompt + tokens[:-1]]), use_cache=False).logits[0]
            assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


def test_moe_experts_not_divisible_by_tp_is_refused(tmp_path):
    """TP=2 x PP=2 on a MoE checkpoint whose moe_intermediate_size (31) is odd: a ValueError naming the
    README section 'MoE checkpoints', before any rank starts."""
    from aios.fixtures import make_model

    model_dir = make_model("tiny-moe", tmp_path / "odd", moe_intermediate_size=31)
    with pytest.raises(ValueError, match="moe_intermediate_size \\(31\\).*lesson21/README.md, 'MoE checkpoints'"):
        LLM(model_dir, tensor_parallel_size=2, pipeline_parallel_size=2, **OPTIONS)
