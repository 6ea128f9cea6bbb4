"""Helpers of lesson 20's tests: random expert weights, the MoE step by its definition, routings."""

import torch

#: Lesson 20's engine on the CPU: PyTorch attention (lesson 7) and the per-expert loop keep it fast.
ENGINE = {"attention_backend": "torch", "kvcache_block_size": 8, "max_model_len": 128, "max_num_seqs": 4,
          "device": "cpu", "dtype": "float32"}


def expert_weights(num_experts: int, hidden: int, intermediate: int, seed: int, dtype=torch.float32):
    """Random stacked expert weights: w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I]."""
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.randn(num_experts, 2 * intermediate, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, intermediate, generator=gen) / intermediate**0.5
    return w13.to(dtype), w2.to(dtype)


def naive_moe(x, w13, w2, weights, ids):
    """out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]), token by token (the definition, in float64)."""
    x, w13, w2, weights = x.double(), w13.double(), w2.double(), weights.double()
    intermediate = w2.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate_up = w13[e] @ x[t]
            hidden = torch.nn.functional.silu(gate_up[:intermediate]) * gate_up[intermediate:]
            out[t] += weights[t, j] * (w2[e] @ hidden)
    return out


def routing(tokens: int, num_experts: int, top_k: int, seed: int, unused: int = 0):
    """Random routing of ``tokens`` tokens: (weights [T, k] float32 summing to 1, ids [T, k] distinct per token).

    The last ``unused`` experts are never chosen (experts that receive no token).
    """
    gen = torch.Generator().manual_seed(seed)
    choices = num_experts - unused
    ids = torch.stack([torch.randperm(choices, generator=gen)[:top_k] for _ in range(tokens)]) if tokens else \
        torch.empty(0, top_k, dtype=torch.int64)
    weights = torch.rand(tokens, top_k, generator=gen) + 0.1
    return weights / weights.sum(-1, keepdim=True), ids
