"""Lesson 20: the Mixture-of-Experts feed-forward step, as a loop and as one grouped matmul.

A MoE layer replaces the one big MLP by ``E`` small ones (the *experts*) and a *router*
that sends every token to ``k`` of them. For T tokens with hidden size H:

1. route:   router logits [T, E] -> softmax (float32) -> top-k -> weights [T, k], ids [T, k]
            (Qwen3-MoE with ``norm_topk_prob``: the k weights are rescaled to sum to 1);
2. experts: every (token, slot) pair runs expert ``ids[t, j]``'s gated MLP
            ``down_e(silu(gate_e(x_t)) * up_e(x_t))``;
3. combine: ``out_t = sum_j weights[t, j] * expert_out[t, j]``.

``moe_loop`` does step 2 the readable way: one expert at a time, gather its tokens,
two matmuls, scatter back. On a GPU that is ``E`` small matmuls of a few rows each (and a
host round trip to find which experts are used), so the fused path sorts the work instead:

* ``align_tokens_to_blocks``: the T * k (token, slot) pairs sorted by expert, each expert's
  run padded to a multiple of ``block_m`` rows, so that every block of ``block_m`` rows
  belongs to one expert (``block_expert``);
* ``grouped_gemm``: one Triton launch; program (m, n) reads its block's expert, gathers
  its rows of the input and multiplies them by that expert's weight tile;
* ``fused_moe``: gemm 1 (gate and up stacked, [E, 2I, H]), SiLU-and-mul, gemm 2 (down,
  [E, H, I]) with the routing weight folded in, then a sum over the k slots.

Expert weights are stacked ``[E, N, K]`` (``nn.Linear``'s [out, in] per expert): the
layout of transformers 5's ``Qwen3MoeExperts`` (``gate_up_proj`` [E, 2I, H], ``down_proj``
[E, H, I]). Tensor parallelism (lesson 14) splits every expert by its intermediate size:
rank r holds rows ``[gate_r; up_r]`` of gate_up and the matching columns of down, so its
output is a partial sum that an all-reduce completes (like ``RowParallelLinear``).

Without a GPU the Triton kernel runs in the interpreter (slow: tests only); the engine on
the CPU uses ``moe_loop`` (``backend="torch"``), which is also the fallback without Triton.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from aios.engine.distributed import all_reduce, get_tp_rank, get_tp_size
from aios.layers.linear import copy_into, divide, read_all, tensor_shape

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - Triton ships with CUDA torch; the loop is the fallback
    triton = tl = None
    HAS_TRITON = False

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: Tiles: decode-sized work (few rows per expert) and prefill-sized work.
SMALL_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
LARGE_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}


def route_tokens(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each token's experts: softmax over all experts (in float32), then the top k.

    router_logits: [T, E]. Returns (weights [T, k] float32, ids [T, k] int64), the k largest
    probabilities in descending order; with ``renormalize`` (config ``norm_topk_prob``) the
    k weights of a token are divided by their sum.
    """
    # Hint: the probabilities are over *all* E experts; top-k only chooses among them.
    raise NotImplementedError("Lesson 20: implement route_tokens in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def moe_loop(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
             topk_ids: torch.Tensor) -> torch.Tensor:
    """The readable baseline: each expert in turn runs on the tokens routed to it.

    x: [T, H]; w13: [E, 2I, H] (gate rows, then up rows); w2: [E, H, I];
    topk_weights: [T, k]; topk_ids: [T, k]. Returns [T, H] in x's dtype:
    ``out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))``, e = topk_ids[t, j].
    """
    # Hint: (topk_ids == e).nonzero(as_tuple=True) gives the tokens and slots that chose expert e.
    # Hint: index_add_ scatters each expert's weighted rows back onto their tokens.
    raise NotImplementedError("Lesson 20: implement moe_loop in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def align_tokens_to_blocks(topk_ids: torch.Tensor, num_experts: int,
                           block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the T * k (token, slot) pairs by expert, each expert's run padded to whole blocks.

    topk_ids: [T, k]. A pair is named by its flat index ``p = t * k + j``. Returns

    * sorted_ids [P] int64: expert 0's pairs (in increasing p), padded with the sentinel
      ``T * k`` up to a multiple of ``block_m``, then expert 1's, ...; the tail after the
      last expert is sentinels too;
    * block_expert [P / block_m] int64: the expert of each block of ``block_m`` rows, -1 for
      the unused blocks at the end.

    P = T * k + E * (block_m - 1), rounded up to a multiple of ``block_m``: the most any
    routing can need, so that the shapes depend only on T (no host round trip, CUDA-graph safe).
    """
    # Hint: counts per expert, rounded up to block_m; an exclusive cumsum gives each expert's first row.
    # Hint: a stable argsort of the flat ids lists the pairs by expert; a pair's rank inside its
    # Hint: expert is its sorted position minus the number of pairs of all earlier experts.
    raise NotImplementedError("Lesson 20: implement align_tokens_to_blocks in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division of two ints (``triton.cdiv``, also without Triton)."""
    return -(-a // b)


if HAS_TRITON:

    @triton.jit
    def _grouped_gemm_kernel(
        a_ptr, w_ptr, out_ptr, sorted_ids_ptr, block_expert_ptr, scale_ptr,
        num_pairs, N, K, rows_per_a,
        stride_am, stride_we, stride_wn, stride_om,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        MUL_SCALE: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    ):
        """Program (pid_m, pid_n): for the pairs p of sorted block pid_m (one expert e),
        out[p, cols] = a[p // rows_per_a, :] @ w[e, cols, :].T  (times scale[p] if MUL_SCALE)."""
        # Hint: read the block's expert first; -1 means an unused block: return before loading anything.
        # Hint: sentinel rows (p == num_pairs) are padding: mask their loads and their store.
        raise NotImplementedError("Lesson 20: implement _grouped_gemm_kernel in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def launch_config(num_pairs: int, num_experts: int) -> dict:
    """Tile sizes: small row blocks when experts get few rows each (decode), large ones otherwise."""
    return dict(SMALL_CONFIG if num_pairs <= 16 * num_experts else LARGE_CONFIG)


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, sorted_ids: torch.Tensor, block_expert: torch.Tensor,
                 num_pairs: int, rows_per_a: int, cfg: dict, scale: torch.Tensor | None = None) -> torch.Tensor:
    """One launch of ``_grouped_gemm_kernel`` over every block of ``sorted_ids``.

    a: [num_pairs / rows_per_a, K] (rows_per_a = k: the tokens, each read by its k pairs;
    rows_per_a = 1: one row per pair); w: [E, N, K]; scale: [num_pairs] or None.
    Returns [num_pairs, N] in a's dtype; row p = a[p // rows_per_a] @ w[expert of p].T (* scale[p]).
    """
    # Hint: the grid is (number of blocks, ceil(N / BLOCK_N)); strides come from the contiguous tensors.
    raise NotImplementedError("Lesson 20: implement grouped_gemm in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, block_m: int | None = None) -> torch.Tensor:
    """The MoE step with two grouped matmuls: same result as ``moe_loop``.

    x: [T, H]; w13: [E, 2I, H]; w2: [E, H, I]; topk_weights, topk_ids: [T, k].
    ``block_m`` overrides the tile's row count (tests). Returns [T, H] in x's dtype.
    """
    # Hint: gemm 1 reads token p // k for pair p; gemm 2 reads its own row and multiplies by the weight.
    # Hint: the result has one row per pair, in pair order t * k + j: view it [T, k, H] and sum the slots.
    raise NotImplementedError("Lesson 20: implement fused_moe in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")


def default_backend(device: torch.device | str) -> str:
    """``"triton"`` (the fused kernel) on a GPU with Triton; ``"torch"`` (``moe_loop``) elsewhere.

    The environment variable ``AIOS_MOE_BACKEND`` ("torch" or "triton") overrides the choice.
    """
    forced = os.environ.get("AIOS_MOE_BACKEND")
    if forced:
        return forced
    return "triton" if HAS_TRITON and torch.device(device).type == "cuda" else "torch"


class FusedMoE(nn.Module):
    """All experts of one layer, stacked: ``gate_up_proj`` [E, 2I / tp, H] and ``down_proj`` [E, H, I / tp].

    ``forward(x, topk_weights, topk_ids)`` runs the experts and combines them (the router
    lives in the model's MoE block). Checkpoint tensors come in through ``weight_loader``
    with a ``shard_id``: None for a stacked tensor (transformers 5's ``experts.gate_up_proj``
    [E, 2I, H] / ``experts.down_proj`` [E, H, I]), or ``(expert, "gate" | "up" | "down")`` for
    one expert's ``nn.Linear`` weight (the published checkpoints' ``experts.{e}.gate_proj.weight``).
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, backend: str | None = None,
                 tp_rank: int | None = None, tp_size: int | None = None):
        super().__init__()
        self.tp_rank = get_tp_rank() if tp_rank is None else tp_rank
        self.tp_size = get_tp_size() if tp_size is None else tp_size
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.intermediate_per_rank = divide(intermediate_size, self.tp_size)
        self.backend = backend
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * self.intermediate_per_rank, hidden_size), requires_grad=False)
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, self.intermediate_per_rank),
                                      requires_grad=False)
        self.gate_up_proj.weight_loader = self.weight_loader
        self.down_proj.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        """Copy a checkpoint tensor (or this rank's part of it) into ``param``.

        shard_id None: ``loaded_weight`` is the stacked tensor of every expert; ``(e, "gate")``
        or ``(e, "up")``: expert e's [I, H] projection; ``(e, "down")``: expert e's [H, I].
        """
        # Hint: rank r keeps rows [r * I/tp, (r + 1) * I/tp) of gate and of up, and those columns of down.
        # Hint: a stacked gate_up holds [gate; up] along dim 1: cut each half separately.
        raise NotImplementedError("Lesson 20: implement FusedMoE.weight_loader in aios/layers/fused_moe.py — see exercises/lesson20/README.md, 'What to implement'")

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """x: [T, H]; topk_weights, topk_ids: [T, k] -> [T, H] (summed over the tensor-parallel ranks)."""
        backend = self.backend or default_backend(x.device)
        if backend == "triton":
            out = fused_moe(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids)
        else:
            out = moe_loop(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids)
        return all_reduce(out) if self.tp_size > 1 else out

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, intermediate_per_rank={self.intermediate_per_rank}, "
                f"tp={self.tp_rank}/{self.tp_size}")


def sliced(loaded, index: tuple) -> torch.Tensor:
    """``loaded[index]`` for a tensor or a safetensors slice (which then reads only that part)."""
    if isinstance(loaded, torch.Tensor):
        return loaded[index]
    if all(part == slice(None) for part in index):
        return read_all(loaded)
    return loaded[index]
