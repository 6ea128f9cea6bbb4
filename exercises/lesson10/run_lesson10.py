"""Lesson 10 demo: fused QKV and gate/up projections, and the loader that fills them.

    python exercises/lesson10/run_lesson10.py               # with your aios/
    python exercises/lesson10/run_lesson10.py --reference   # with solutions/aios/
    python exercises/lesson10/run_lesson10.py --model DIR

Shows: one decoder layer's parameters without and with fusion; which rows of
``qkv_proj.weight`` hold q, k and v; how far apart the two models' logits are; one forward
pass over a long prompt timed both ways; and the engine generating the same tokens with
``fused_layers`` on and off.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--tokens", type=int, default=512, help="prompt length of the timed forward pass")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_layouts(plain, fused) -> None:
    print("One decoder layer, parameter by parameter:")
    for title, model in (("unfused (lesson 3)", plain), ("fused (lesson 10)", fused)):
        print(f"  {title}:")
        for name, param in model.model.layers[0].named_parameters():
            if not name.endswith("norm.weight"):
                print(f"    {name:<28} {tuple(param.shape)}")
    attn = fused.model.layers[0].self_attn
    q, kv = attn.qkv_proj.q_size, attn.qkv_proj.kv_size
    print(f"\nqkv_proj.weight rows: q 0..{q - 1}, k {q}..{q + kv - 1}, v {q + kv}..{q + 2 * kv - 1} "
          f"({attn.num_heads} query heads and {attn.num_kv_heads} KV heads of {attn.head_dim})")
    plain_attn = plain.model.layers[0].self_attn
    import torch

    stacked = torch.cat([plain_attn.q_proj.weight, plain_attn.k_proj.weight, plain_attn.v_proj.weight])
    print(f"qkv_proj.weight == cat(q_proj, k_proj, v_proj): {torch.equal(attn.qkv_proj.weight, stacked)}")


def forward_logits(model, ids):
    import torch

    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(len(ids))))


def compare_and_time(plain, fused, vocab: int, tokens: int) -> None:
    import torch

    ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(0))
    difference = (forward_logits(plain, ids) - forward_logits(fused, ids)).abs().max().item()
    print(f"\nLargest logit difference over {tokens} positions (float32): {difference:.2e}")
    for title, model in (("unfused", plain), ("fused", fused)):
        forward_logits(model, ids)  # warm up
        start = time.perf_counter()
        for _ in range(3):
            forward_logits(model, ids)
        print(f"  forward of {tokens} tokens, {title:<8}: {(time.perf_counter() - start) / 3 * 1e3:7.1f} ms")
    print("  (CPU timings are only indicative; on a GPU fewer, larger matmuls also mean fewer kernel launches)")


def compare_engines(model_dir: Path) -> None:
    import torch

    from aios import LLM, SamplingParams
    from aios.config import features_up_to

    prompts = ["The kernel launches", "A fused layer", "Tensor cores like large matrices"]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = {}
    print("\nThe engine (lesson-10 features), fused_layers on and off:")
    for fused in (False, True):
        options = {**features_up_to(10), "fused_layers": fused}
        if not torch.cuda.is_available():
            options["attention_backend"] = "torch"  # Triton would run in its (slow) interpreter
        llm = LLM(str(model_dir), **options)
        start = time.perf_counter()
        outputs[fused] = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(out["token_ids"]) for out in outputs[fused])
        print(f"  fused_layers={fused!s:<5}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tok/s")
    same = [a["token_ids"] for a in outputs[False]] == [b["token_ids"] for b in outputs[True]]
    print(f"  same tokens: {same}")
    print(f"  e.g. {prompts[0]!r} -> {outputs[True][0]['text']!r}")


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    import torch

    from aios.fixtures import trained_model
    from aios.utils.loader import load_qwen3

    model_dir = args.model or trained_model()
    plain = load_qwen3(model_dir, dtype=torch.float32)
    fused = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
    show_layouts(plain, fused)
    compare_and_time(plain, fused, plain.config.vocab_size, args.tokens)
    compare_engines(Path(model_dir))


if __name__ == "__main__":
    main()
