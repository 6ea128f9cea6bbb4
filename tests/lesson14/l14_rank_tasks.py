"""Functions that lesson 14's tests run inside every rank of a real two-process group.

``aios.engine.distributed.launch_ranks`` starts the processes, joins them into one gloo
group and calls the function in each; the child processes import this module by name
(the test directory is on the path they inherit).
"""

import torch


def tp_forward_logits(model_dir: str, ids: list[int]) -> dict:
    """Build the fused model for this rank, run a no-cache forward, return the driver's logits and shard shapes."""
    from aios.engine.distributed import get_tp_rank, get_tp_size
    from aios.utils.loader import load_qwen3

    model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(len(ids)))
        logits = model.compute_logits(hidden)
    layer = model.model.layers[0]
    return {
        "rank": get_tp_rank(),
        "size": get_tp_size(),
        "logits": logits,
        "qkv_rows": layer.self_attn.qkv_proj.weight.shape[0],
        "down_columns": layer.mlp.down_proj.weight.shape[1],
        "embedding_rows": model.model.embed_tokens.weight.shape[0],
    }
