"""Lesson 20 on a GPU: the compiled Triton kernel (not the interpreter) in bfloat16, and the engine on the GPU."""

import pytest
import torch
from l20_helpers import expert_weights, routing

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_compiled_fused_moe_equals_the_loop_in_bfloat16(tokens):
    """On the GPU, fused_moe (bf16, compiled Triton) == moe_loop within bf16 rounding, for decode and prefill sizes."""
    from aios.layers.fused_moe import fused_moe, moe_loop

    w13, w2 = expert_weights(64, 256, 128, seed=tokens)
    x = torch.randn(tokens, 256, generator=torch.Generator().manual_seed(tokens))
    weights, ids = routing(tokens, 64, 6, seed=tokens, unused=9)
    args = [t.cuda() for t in (x.bfloat16(), w13.bfloat16(), w2.bfloat16(), weights, ids)]
    expected = moe_loop(x.double(), w13.double(), w2.double(), weights.double(), ids).float()
    torch.testing.assert_close(fused_moe(*args).float().cpu(), expected, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(moe_loop(*args).float().cpu(), expected, rtol=3e-2, atol=3e-2)


def test_engine_on_the_gpu_with_cuda_graphs_matches_transformers(tiny_moe_dir):
    """LLM on CUDA (fused MoE kernel, CUDA graphs, fp32) gives transformers' greedy tokens on tiny-moe."""
    from transformers import AutoModelForCausalLM

    from aios import LLM
    from aios.sampling_params import SamplingParams

    prompts = [[5, 6, 7, 8, 9], list(range(20, 50))]
    hf = AutoModelForCausalLM.from_pretrained(tiny_moe_dir, dtype=torch.float32)
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)
        expected.append(out[0, len(prompt):].tolist())
    llm = LLM(str(tiny_moe_dir), device="cuda", dtype="float32", max_num_seqs=4, max_model_len=128,
              async_scheduling=False)  # lesson 20 needs lessons <= 16, not lesson 17's loop
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    assert [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)] == expected
