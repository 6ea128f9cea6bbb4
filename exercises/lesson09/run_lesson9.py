"""Lesson 9 demo: the Triton attention kernels, checked against lesson 7 and used by the engine.

    python exercises/lesson09/run_lesson9.py               # with your aios/
    python exercises/lesson09/run_lesson9.py --reference   # with solutions/aios/
    python exercises/lesson09/run_lesson9.py --model DIR --requests 16

Shows: the three kernels against lesson 7's paged_attention on a random paged cache;
the engine's greedy tokens with attention_backend="torch" and "triton" (identical); on a
GPU, the tokens per second of both backends on a batch of requests. Without a GPU the
kernels run in Triton's interpreter, so the demo keeps everything small.
"""

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--requests", type=int, default=16, help="requests in the GPU timing")
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def check_kernels(device: str) -> None:
    import torch

    from aios.layers import triton_attention
    from aios.layers.paged_attention import paged_attention, store_kvcache
    from aios.utils.context import Context

    gen = torch.Generator().manual_seed(0)
    block_size, kv_heads, q_heads, head_dim = 4, 2, 4, 32
    context_lens, query_lens = [13, 40, 7], [13, 9, 1]  # the second has 31 cached tokens
    blocks = [-(-n // block_size) for n in context_lens]
    cache_shape = (sum(blocks) + 2, block_size, kv_heads, head_dim)
    k_cache = torch.zeros(cache_shape, device=device)
    v_cache = torch.zeros(cache_shape, device=device)
    ids = torch.randperm(cache_shape[0], generator=gen).tolist()
    tables = [[ids.pop() for _ in range(n)] for n in blocks]
    slots = [t[p // block_size] * block_size + p % block_size for t, n in zip(tables, context_lens) for p in range(n)]
    keys = torch.randn(len(slots), kv_heads, head_dim, generator=gen).to(device)
    values = torch.randn(len(slots), kv_heads, head_dim, generator=gen).to(device)
    triton_attention.store_kvcache(keys, values, k_cache, v_cache, torch.tensor(slots, device=device))
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    store_kvcache(keys, values, k_ref, v_ref, torch.tensor(slots, device=device))
    print(f"  store_kvcache: {len(slots)} tokens, cache identical to lesson 6's: "
          f"{torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)}")

    width = max(blocks)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    context = Context(
        is_prefill=True, cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32, device=device),
        max_seqlen_q=max(query_lens), max_seqlen_k=max(context_lens))
    q = torch.randn(cu[-1], q_heads, head_dim, generator=gen).to(device)
    scale = head_dim**-0.5
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, scale)
    error = (out - paged_attention(q, k_cache, v_cache, context, scale)).abs().max().item()
    print(f"  prefill_attention: 3 sequences, {cu[-1]} queries, max |difference| = {error:.1e}")

    q_last = q[torch.tensor(cu[1:], device=device) - 1].contiguous()
    context.is_prefill, context.cu_seqlens_q = False, torch.arange(4, dtype=torch.int32, device=device)
    for num_splits in (1, 3):
        out = triton_attention.decode_attention(q_last, k_cache, v_cache, context, scale, num_splits=num_splits)
        error = (out - paged_attention(q_last, k_cache, v_cache, context, scale)).abs().max().item()
        print(f"  decode_attention, {num_splits} split(s): max |difference| = {error:.1e}")


def compare_backends(model_dir: Path, device: str, num_requests: int) -> None:
    from aios import LLM, SamplingParams
    from aios.bench.ladder import make_workload
    from aios.config import features_up_to

    prompts = [[5, 6, 7, 8, 9, 10], list(range(100, 140)), [42] * 11]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engines = {}
    for backend in ("torch", "triton"):
        engines[backend] = LLM(str(model_dir), **{**features_up_to(9), "attention_backend": backend},
                               max_num_seqs=16, max_model_len=1024, num_kvcache_blocks=1024)
        tokens = [out["token_ids"] for out in engines[backend].generate(prompts, params, use_tqdm=False)]
        print(f"  {backend:6s} backend: {tokens}")
    if device != "cuda":
        print("\n(no GPU: skipping the timing; the interpreter is for correctness, not speed)")
        return
    vocab = engines["torch"].config.hf_config.vocab_size
    workload = make_workload(num_requests, (64, 256), (32, 64), vocab)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in workload.output_lens]
    print(f"\n{num_requests} requests, {workload.num_output_tokens} output tokens, eager (no CUDA graphs):")
    for backend, llm in engines.items():
        llm.generate([list(p) for p in workload.prompts[:1]], params[:1], use_tqdm=False)  # warm-up
        start = time.perf_counter()
        llm.generate([list(p) for p in workload.prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        print(f"  {backend:6s}: {workload.num_output_tokens / seconds:8.1f} output tok/s")


def main() -> None:
    args = parse_args()
    select_tree(args.reference)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from aios.fixtures import trained_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = args.model or trained_model()
    print(f"aios from {'solutions/' if args.reference else 'your aios/'}; device {device}"
          f"{' (Triton interpreter)' if device == 'cpu' else ''}\n\nkernels against lesson 7:")
    check_kernels(device)
    print(f"\nthe engine with both backends on {model_dir} (greedy, 8 tokens each):")
    compare_backends(Path(model_dir), device, args.requests)


if __name__ == "__main__":
    main()
