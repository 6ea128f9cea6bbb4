"""Functions lesson 21's hidden tests run inside each rank of a real two-process gloo group."""

import torch


def hand_over_activations(num_tokens: int, hidden_size: int) -> dict:
    """Rank 0 sends a known (hidden, residual) pair with send_activations; rank 1 receives it with recv_activations."""
    from aios.engine.distributed import get_tp_rank
    from aios.engine.pipeline import recv_activations, send_activations

    hidden = torch.arange(num_tokens * hidden_size, dtype=torch.float32).view(num_tokens, hidden_size)
    residual = -hidden - 0.5
    if get_tp_rank() == 0:
        for work in send_activations(hidden, residual, dst=1):
            work.wait()
        return {"sent": True}
    got_hidden, got_residual = recv_activations(num_tokens, hidden_size, torch.float32, "cpu", src=0)
    return {"hidden": got_hidden, "residual": got_residual,
            "ok": bool(torch.equal(got_hidden, hidden) and torch.equal(got_residual, residual))}
