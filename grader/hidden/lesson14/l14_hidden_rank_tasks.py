"""What lesson 14's hidden tests run inside each rank of a two-process gloo group (see launch_ranks)."""

import os
import time
import traceback

import torch
import torch.nn.functional as F


def _checked(results: dict, name: str, check) -> None:
    """Run one check, keeping its result or the last line of its error (the other checks still run)."""
    try:
        results[name] = check()
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails with it
        results[name] = RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}")


def collective_checks(model_dir: str, ids: list[int]) -> dict:
    """Exercise gather_to_driver, the row-parallel forward, the vocab-parallel embedding and LM head, a whole model."""
    from aios.engine.distributed import gather_to_driver, get_tp_rank, get_tp_size
    from aios.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
    from aios.layers.linear import RowParallelLinear
    from aios.utils.loader import load_qwen3

    rank, size = get_tp_rank(), get_tp_size()
    torch.manual_seed(0)  # every rank draws the same "full" tensors
    weight, bias, x = torch.randn(3, 8), torch.randn(3), torch.randn(5, 8)
    table, hidden = torch.randn(10, 4), torch.randn(6, 4)
    token_ids = torch.tensor([9, 0, 4, 5, 5, 1, 8])
    results = {"rank": rank, "size": size}

    def row_forward():
        layer = RowParallelLinear(8, 3, bias=True)
        layer.weight.weight_loader(layer.weight, weight)
        layer.bias.weight_loader(layer.bias, bias)
        width = 8 // size
        return layer(x[:, rank * width : (rank + 1) * width]), x @ weight.T + bias

    def embedding():
        layer = VocabParallelEmbedding(10, 4)
        layer.weight.weight_loader(layer.weight, table)
        return layer(token_ids), F.embedding(token_ids, table)

    def lm_head():
        layer = ParallelLMHead(10, 4)
        layer.weight.weight_loader(layer.weight, table)
        return layer(hidden), hidden @ table.T

    def model_logits():
        model = load_qwen3(model_dir, dtype=torch.float32, fused_layers=True)
        with torch.inference_mode():
            return model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))

    _checked(results, "gather_last_dim", lambda: gather_to_driver(torch.full((2, 3), float(rank)), dim=-1))
    _checked(results, "gather_first_dim", lambda: gather_to_driver(torch.full((1, 2), float(rank + 5)), dim=0))
    _checked(results, "row_forward", row_forward)
    _checked(results, "embedding", embedding)
    _checked(results, "lm_head", lm_head)
    _checked(results, "model_logits", model_logits)
    return results


def drive_engine_then_wait(model_dir: str, options: dict, pid_queue) -> None:
    """A driver process: start a TP=2 engine, report its worker's pid, then idle until killed."""
    from aios.llm import LLM

    llm = LLM(model_dir, tensor_parallel_size=2, **options)
    pid_queue.put([w.process.pid for w in llm.model_runner.workers])
    time.sleep(120)
    os._exit(0)
