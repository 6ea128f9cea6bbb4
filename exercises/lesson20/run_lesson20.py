"""Lesson 20 demo: Mixture-of-Experts, from one token's routing to a Qwen3-MoE engine.

    python exercises/lesson20/run_lesson20.py               # with your aios/
    python exercises/lesson20/run_lesson20.py --reference   # with solutions/aios/

Shows: the router's choice for a few tokens (softmax over all experts, top-k, renormalised); how
a small batch's (token, slot) pairs are sorted into expert blocks; the fused step against the
per-expert loop; the tiny-moe model against transformers' Qwen3MoeForCausalLM; greedy
generation through LLM; and how many parameters a 30B-A3B token really uses.
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_routing() -> None:
    import torch

    from aios.layers.fused_moe import route_tokens

    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 2
    print("1. Routing: 3 tokens, 8 experts, top-2")
    for renormalize in (False, True):
        weights, ids = route_tokens(logits, 2, renormalize)
        rows = ", ".join(f"t{t}->{ids[t].tolist()} w={[round(w, 3) for w in weights[t].tolist()]}" for t in range(3))
        print(f"   norm_topk_prob={renormalize!s:5}: {rows}")


def show_blocks() -> None:
    import torch

    from aios.layers.fused_moe import align_tokens_to_blocks

    ids = torch.tensor([[3, 1], [1, 0], [3, 1]])
    sorted_ids, block_expert = align_tokens_to_blocks(ids, num_experts=5, block_m=4)
    used = int((block_expert >= 0).sum())
    print("\n2. Sorting pairs into expert blocks (ids [[3,1],[1,0],[3,1]], 5 experts, BLOCK_M 4, sentinel 6)")
    for block in range(used):
        print(f"   block {block}: expert {int(block_expert[block])}  pairs "
              f"{sorted_ids[block * 4:(block + 1) * 4].tolist()}")
    print(f"   then {block_expert.numel() - used} unused blocks (-1): the worst case any routing could need")


def show_fused() -> None:
    import time

    import torch

    from aios.layers.fused_moe import fused_moe, moe_loop, route_tokens

    gen = torch.Generator().manual_seed(1)
    E, k, H, I, T = 16, 4, 64, 48, 40
    w13 = torch.randn(E, 2 * I, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, I, generator=gen) / I**0.5
    x = torch.randn(T, H, generator=gen)
    weights, ids = route_tokens(torch.randn(T, E, generator=gen), k, True)
    moe_loop(x, w13, w2, weights, ids), fused_moe(x, w13, w2, weights, ids)  # warm-up: first calls compile
    start = time.perf_counter()
    expected = moe_loop(x, w13, w2, weights, ids)
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    out = fused_moe(x, w13, w2, weights, ids)
    fused_s = time.perf_counter() - start
    print(f"\n3. Fused step vs per-expert loop ({T} tokens, {E} experts, k={k}): "
          f"max |difference| {float((out - expected).abs().max()):.2e}")
    print(f"   loop {loop_s * 1e3:.1f} ms, fused {fused_s * 1e3:.1f} ms (Triton's interpreter on a CPU is slow: "
          "the speed-up shows on a GPU, tests/lesson20/test_l20_benchmark.py)")


def show_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from aios import LLM, SamplingParams
    from aios.fixtures import make_model
    from aios.utils.loader import load_qwen3

    with tempfile.TemporaryDirectory() as folder:
        model_dir = make_model("tiny-moe", folder)
        ids = [4, 8, 15, 16, 23, 42]
        ours = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
        with torch.inference_mode():
            logits = ours.compute_logits(ours(torch.tensor(ids), torch.arange(len(ids))))
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0]
        print(f"\n4. tiny-moe ({type(ours).__name__}) vs transformers' {type(hf).__name__}: "
              f"max |logit difference| {float((logits - expected).abs().max()):.2e}")
        llm = LLM(str(model_dir), device="cpu", attention_backend="torch", max_model_len=128, max_num_seqs=4)
        out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                           use_tqdm=False)
        print(f"   LLM.generate greedy tokens: {out[0]['token_ids']}")


def show_active_parameters() -> None:
    import torch

    from aios.fixtures.presets import build_config
    from aios.fixtures.weights import tensor_specs

    config = build_config("30b-a3b")
    total = sum(torch.Size(spec.shape).numel() for spec in tensor_specs(config))
    E, k = config["num_experts"], config["num_experts_per_tok"]
    experts = sum(torch.Size(s.shape).numel() for s in tensor_specs(config) if ".experts." in s.name)
    active = total - experts + experts * k // E
    print(f"\n5. Qwen3-30B-A3B: {total / 1e9:.1f} B parameters, {active / 1e9:.1f} B used per token "
          f"({k} of {E} experts per layer)")


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    try:
        show_routing()
        show_blocks()
        show_fused()
        show_model()
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    show_active_parameters()
    return 0


if __name__ == "__main__":
    sys.exit(main())
