"""What lesson 14's hidden tests run inside each rank of a two-process gloo group (see launch_ranks).

The ranks run learner code, so this module runs on the learner's side (``learner_helper``):
it only calls the learner's layers on inputs and returns what they give. The tests draw
the same inputs themselves and compute the expected values in the test process.
"""

import os
import time
import traceback

import torch


def _checked(results: dict, name: str, check) -> None:
    """Run one check, keeping its result or, as {"error": text}, the end of its error (the other checks still run)."""
    try:
        results[name] = check()
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails with it
        results[name] = {"error": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}"}


def collective_inputs() -> dict:
    """The "full" tensors every rank (and the test) draws from seed 0."""
    torch.manual_seed(0)
    weight, bias, x = torch.randn(3, 8), torch.randn(3), torch.randn(5, 8)
    table, hidden = torch.randn(10, 4), torch.randn(6, 4)
    return {"weight": weight, "bias": bias, "x": x, "table": table, "hidden": hidden,
            "token_ids": torch.tensor([9, 0, 4, 5, 5, 1, 8])}


def collective_checks(model_dir: str, ids: list[int]) -> dict:
    """Exercise gather_to_driver, the row-parallel forward, the vocab-parallel embedding and LM head, a whole model."""
    from aios.engine.distributed import gather_to_driver, get_tp_rank, get_tp_size
    from aios.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
    from aios.layers.linear import RowParallelLinear
    from aios.utils.loader import load_qwen3

    rank, size = get_tp_rank(), get_tp_size()
    inputs = collective_inputs()
    results = {"rank": rank, "size": size}

    def row_forward():
        layer = RowParallelLinear(8, 3, bias=True)
        layer.weight.weight_loader(layer.weight, inputs["weight"])
        layer.bias.weight_loader(layer.bias, inputs["bias"])
        width = 8 // size
        return layer(inputs["x"][:, rank * width : (rank + 1) * width])

    def embedding():
        layer = VocabParallelEmbedding(10, 4)
        layer.weight.weight_loader(layer.weight, inputs["table"])
        return layer(inputs["token_ids"])

    def lm_head():
        layer = ParallelLMHead(10, 4)
        layer.weight.weight_loader(layer.weight, inputs["table"])
        return layer(inputs["hidden"])

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


def is_running(pid: int) -> bool:
    """Whether process ``pid`` still runs, seen from the learner's side where it was started.

    An exited process nobody reaped yet (a zombie) has stopped: in the sandbox's PID namespace
    the orphaned worker is handed to the namespace's first process, which may never reap it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
