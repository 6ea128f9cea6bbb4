"""Lesson 1 demo: tokens, parameter counts, and the four building blocks you wrote.

    python exercises/lesson01/run_lesson1.py               # with your aios/
    python exercises/lesson01/run_lesson1.py --reference   # with solutions/aios/
    python exercises/lesson01/run_lesson1.py --model DIR   # another checkpoint's tokenizer

Uses rms_norm, rope_cos_sin, apply_rotary, causal_attention and silu_and_mul.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def show_tokens(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "<|im_start|>user\nWhy is decoding slow?<|im_end|>"
    ids = tokenizer(text)["input_ids"]
    print(f"1. Tokenizer ({model_dir.name}): {len(text)} characters -> {len(ids)} ids")
    for token_id, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        print(f"   {token_id:>6}  {piece!r}")


def count_by_formula(c: dict) -> dict[str, int]:
    """Parameters of a Qwen3 checkpoint from its config, block by block."""
    h, d = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    attention = h * q + 2 * h * kv + q * h + 2 * d  # q, k, v, o projections; q_norm and k_norm
    mlp = 3 * h * c["intermediate_size"]  # gate, up, down
    per_layer = attention + mlp + 2 * h  # plus the two RMSNorms
    embedding = c["vocab_size"] * h
    head = 0 if c["tie_word_embeddings"] else embedding
    return {"per layer": per_layer, "all layers": per_layer * c["num_hidden_layers"], "embedding": embedding,
            "lm_head (0 if tied)": head, "final norm": h,
            "total": per_layer * c["num_hidden_layers"] + embedding + head + h}


def show_parameter_count() -> None:
    import torch

    from aios.fixtures import build_config
    from aios.models.qwen3 import Qwen3ForCausalLM
    from aios.utils.hf_config import load_model_config

    config = build_config("0.6b")
    counts = count_by_formula(config)
    print("\n2. Qwen3-0.6B parameters from its shape")
    for name, value in counts.items():
        print(f"   {name:<20} {value:>13,}")
    # Cross-check: build the module on the meta device (shapes only, no memory).
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        with torch.device("meta"):
            model = Qwen3ForCausalLM(load_model_config(tmp))
    counted = sum(p.numel() for p in model.parameters())  # a tied weight is listed once
    print(f"   {'our module says':<20} {counted:>13,}")


def show_rms_norm() -> None:
    import torch

    from aios.layers.layernorm import rms_norm

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.0, 200.0, 300.0, 400.0]])
    out = rms_norm(x, torch.ones(4), 1e-6)
    print("\n3. rms_norm: rows of very different scale come out with root-mean-square 1")
    for row, normed in zip(x, out):
        print(f"   {row.tolist()} -> {[round(v, 3) for v in normed.tolist()]}  rms={normed.pow(2).mean().sqrt():.3f}")


def show_rope() -> None:
    import torch

    from aios.layers.rotary_embedding import apply_rotary, rope_cos_sin

    cos, sin = rope_cos_sin(64, 128, 10_000.0)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 64, generator=gen)

    def score(q_pos: int, k_pos: int) -> float:
        rq = apply_rotary(q, cos[q_pos : q_pos + 1], sin[q_pos : q_pos + 1])
        rk = apply_rotary(k, cos[k_pos : k_pos + 1], sin[k_pos : k_pos + 1])
        return float((rq * rk).sum())

    print("\n4. RoPE: the q.k score depends on the distance between positions, not on where they are")
    for q_pos, k_pos in [(5, 2), (50, 47), (120, 117), (5, 4)]:
        print(f"   q at {q_pos:>3}, k at {k_pos:>3} (distance {q_pos - k_pos}): score {score(q_pos, k_pos):+.4f}")


def show_attention() -> None:
    import torch

    from aios.layers.attention import causal_attention

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(6, 8, 16, generator=gen)  # 8 query heads
    k = torch.randn(6, 2, 16, generator=gen)  # 2 KV heads: each serves 4 query heads
    v = torch.randn(6, 2, 16, generator=gen)
    full = causal_attention(q, k, v, 16**-0.5)
    last = causal_attention(q[-1:], k, v, 16**-0.5)
    print("\n5. causal_attention with GQA: 8 query heads share 2 KV heads")
    print(f"   full sequence: q {tuple(q.shape)} k/v {tuple(k.shape)} -> {tuple(full.shape)}")
    print(f"   only the last query: -> {tuple(last.shape)}; "
          f"equals the full result's last row: {torch.allclose(last, full[-1:], atol=1e-6)}")
    print(f"   the first position sees only itself, so its output is v[0]: "
          f"{torch.allclose(full[0, 0], v[0, 0], atol=1e-6)}")


def show_silu() -> None:
    import torch

    from aios.layers.activation import silu_and_mul

    gate = torch.tensor([-6.0, -1.0, 0.0, 1.0, 6.0])
    out = silu_and_mul(gate, torch.ones(5))
    print("\n6. silu_and_mul: the gate closes for negative inputs and opens for positive ones")
    print("   gate " + " ".join(f"{g:+6.2f}" for g in gate.tolist()))
    print("   out  " + " ".join(f"{o:+6.2f}" for o in out.tolist()))


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = args.model or trained_model()
    sections = [lambda: show_tokens(model_dir), show_parameter_count, show_rms_norm, show_rope, show_attention,
                show_silu]
    missing = 0
    for section in sections:
        try:
            section()
        except NotImplementedError as error:
            missing += 1
            print(f"\n   (not implemented yet: {error})")
    if missing:
        print(f"\n{missing} section(s) need your code; run with --reference to see the finished version.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
