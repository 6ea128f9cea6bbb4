"""Functions lesson 20's tests run inside every rank of a real two-process gloo group (see lesson 14's)."""

import torch


def tp_moe_logits(model_dir: str, ids: list[int]) -> dict:
    """Build the fused MoE model for this rank, run a no-cache forward; the driver's logits and expert shard shapes."""
    from aios.engine.distributed import get_tp_rank, get_tp_size
    from aios.utils.loader import load_qwen3

    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True, fuse_residual_norm=True)
    with torch.inference_mode():
        logits = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))
    experts = model.model.layers[0].mlp.experts
    return {
        "rank": get_tp_rank(),
        "size": get_tp_size(),
        "logits": logits,
        "gate_up_shape": tuple(experts.gate_up_proj.shape),
        "down_shape": tuple(experts.down_proj.shape),
        "router_shape": tuple(model.model.layers[0].mlp.gate.weight.shape),
    }


def tp_moe_block(hidden: int, intermediate: int, num_experts: int, seed: int, backend: str) -> dict:
    """One FusedMoE layer on this rank, fed this rank's share of full random expert weights; its summed output."""
    from aios.engine.distributed import get_tp_rank
    from aios.layers.fused_moe import FusedMoE

    gen = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(num_experts, 2 * intermediate, hidden, generator=gen) / hidden**0.5
    down = torch.randn(num_experts, hidden, intermediate, generator=gen) / intermediate**0.5
    x = torch.randn(9, hidden, generator=gen)
    ids = torch.stack([torch.randperm(num_experts, generator=gen)[:2] for _ in range(9)])
    weights = torch.softmax(torch.randn(9, 2, generator=gen), dim=-1)
    layer = FusedMoE(num_experts, hidden, intermediate, backend=backend)
    layer.gate_up_proj.weight_loader(layer.gate_up_proj, gate_up, None)
    layer.down_proj.weight_loader(layer.down_proj, down, None)
    with torch.inference_mode():
        out = layer(x, weights, ids)
    return {"rank": get_tp_rank(), "out": out, "gate_up": gate_up, "down": down, "x": x, "ids": ids,
            "weights": weights}
