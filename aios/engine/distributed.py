"""Tensor parallelism's process group: who am I, how many are we, and the two collectives we need.

Every rank runs the same model code on its own shard of the weights (lesson 14).
Layers ask this module for the rank and the group size when they are built, and
call its collectives in their forward passes:

* ``all_reduce``: every rank ends up with the element-wise sum of everyone's tensor
  (after a row-parallel linear layer and after the vocabulary-parallel embedding);
* ``gather_to_driver``: rank 0, the driver, receives every rank's slice of the
  logits and glues them together; the other ranks get ``None``.

Without ``init_tensor_parallel`` the process is a group of one: rank 0 of 1, and
both collectives return their input untouched, so code written for tensor
parallelism runs unchanged in one process.

``launch_ranks`` starts a small group of processes that each run one function
(handy for tests, demos and experiments that need real collectives).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

#: How long a collective may wait for the other ranks before it fails.
COLLECTIVE_TIMEOUT = timedelta(seconds=int(os.environ.get("AIOS_TP_TIMEOUT_S", "300")))
#: Seconds the driver gives NCCL to abort its communicators at shutdown.
ABORT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ParallelState:
    """This process's place in the tensor-parallel group."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    cpu_threads_before: int | None = None
    # Lesson 21: with pipeline parallelism the TP group is one stage's ranks, not the whole world.
    group: object = None
    group_ranks: tuple[int, ...] = ()
    pp_rank: int = 0
    pp_size: int = 1


_STATE = ParallelState()


def get_tp_rank() -> int:
    """This process's rank in the tensor-parallel group (0 in a single process)."""
    return _STATE.rank


def get_tp_size() -> int:
    """How many ranks share the model (1 in a single process)."""
    return _STATE.size


def default_backend(device: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def free_port() -> int:
    """A TCP port on this host that nobody listens on right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_tensor_parallel(rank: int, size: int, init_method: str, device: str = "cpu") -> None:
    """Join the group of ``size`` processes as ``rank``; blocks until every rank has joined.

    ``init_method`` is a rendezvous address such as ``tcp://127.0.0.1:29500``, the same for
    every rank. On a GPU each rank takes the device with its own index.
    """
    global _STATE
    backend = default_backend(device)
    threads_before = None
    if backend == "nccl":
        torch.cuda.set_device(rank)
    elif size > 1:
        # CPU ranks share the cores: more threads than cores makes every collective wait on a busy core.
        threads_before = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    if size > 1:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                                timeout=COLLECTIVE_TIMEOUT)
    _STATE = ParallelState(rank, size, backend, threads_before)


def destroy_tensor_parallel() -> None:
    """Leave the group (if any) and become a group of one again.

    NCCL groups are aborted rather than destroyed: the engine leaves only after its workers
    have exited, and a polite NCCL destroy would wait for peers that will never answer. Free
    captured CUDA graphs first (``ModelRunner.release_cuda_graphs``): NCCL will not abort a
    communicator that live graphs still use. The abort gets ``ABORT_TIMEOUT_S`` seconds; if
    NCCL takes longer, the group is left to the process's exit, with a warning.
    """
    global _STATE
    if dist.is_available() and dist.is_initialized():
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if _STATE.backend == "nccl" and abort is not None:
            _run_with_deadline(abort, ABORT_TIMEOUT_S, "aborting the NCCL process group")
        else:
            dist.destroy_process_group()
    if _STATE.cpu_threads_before is not None:
        torch.set_num_threads(_STATE.cpu_threads_before)
    _STATE = ParallelState()


def _run_with_deadline(function, timeout_s: float, what: str) -> None:
    """Call ``function()`` on a daemon thread; warn and go on if it has not returned in ``timeout_s``."""
    done = threading.Thread(target=function, name="aios-tp-teardown", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        warnings.warn(f"{what} did not finish in {timeout_s:g} s; leaving it to the process's exit",
                      RuntimeWarning, stacklevel=3)


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; every rank gets the sum. Returns ``tensor``."""
    if _STATE.size > 1:
        dist.all_reduce(tensor, group=_STATE.group)
    return tensor


def gather_to_driver(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's ``tensor`` along ``dim``, in rank order, on rank 0.

    Every rank passes a tensor of the same shape. Rank 0 gets the concatenation
    (``size`` times wider along ``dim``), the other ranks get None.
    """
    if _STATE.size == 1:
        return tensor
    if _STATE.group is not None:  # a TP group inside a pipeline stage (lesson 21)
        return _gather_in_stage_group(tensor, dim)
    # Hint: torch.distributed.gather needs a contiguous tensor and, on rank 0 only, a list of buffers.
    raise NotImplementedError("Lesson 14: implement gather_to_driver in aios/engine/distributed.py — see exercises/lesson14/README.md, 'What to implement'")


def _gather_in_stage_group(tensor: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``gather_to_driver`` inside one pipeline stage's TP group: its first rank gets the concatenation."""
    tensor = tensor.contiguous()
    if _STATE.rank != 0:
        dist.gather(tensor, group=_STATE.group, group_dst=0)
        return None
    parts = [torch.empty_like(tensor) for _ in range(_STATE.size)]
    dist.gather(tensor, parts, group=_STATE.group, group_dst=0)
    return torch.cat(parts, dim=dim)


def get_pp_rank() -> int:
    """This process's pipeline stage (0 without pipeline parallelism, lesson 21)."""
    return _STATE.pp_rank


def get_pp_size() -> int:
    """How many pipeline stages the model is cut into (1 without pipeline parallelism)."""
    return _STATE.pp_size


def set_parallel_state(state: ParallelState) -> None:
    """Install ``state`` as this process's place in the groups (lesson 21's pipeline set-up uses it)."""
    global _STATE
    _STATE = state


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` any rank holds (so all ranks agree, e.g. on the KV-cache size)."""
    if _STATE.size == 1 and _STATE.pp_size == 1:
        return value
    device = "cuda" if _STATE.backend == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


@contextmanager
def same_aios_in_children():
    """Start processes inside this block so that they import this process's ``aios``.

    A spawned child starts from a copy of ``sys.path``; putting the directory that holds
    our ``aios`` package first makes it find the same tree (reference, learner, ...) even
    when another copy sits earlier on the path.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    saved = sys.path[:]
    sys.path.insert(0, package_root)
    try:
        yield
    finally:
        sys.path[:] = saved


def _rank_main(rank: int, size: int, init_method: str, device: str, target, args, results) -> None:
    """Body of one process started by ``launch_ranks``."""
    try:
        init_tensor_parallel(rank, size, init_method, device)
        # Pickled here, by value: a tensor put on the queue as it is travels as a handle to this
        # process's shared memory, which is gone if the process ends before the parent reads it.
        results.put((rank, True, pickle.dumps(target(*args))))
    except BaseException:  # report anything, then exit with an error code
        results.put((rank, False, traceback.format_exc()))
        raise SystemExit(1)
    finally:
        destroy_tensor_parallel()


def launch_ranks(target, size: int, args: tuple = (), device: str = "cpu", timeout: float = 120.0) -> list:
    """Run ``target(*args)`` in ``size`` fresh processes that form one tensor-parallel group.

    ``target`` must be importable (a module-level function). Returns the list of the
    ranks' return values, in rank order. Raises RuntimeError when a rank fails (with its
    traceback) or when the ranks are not done after ``timeout`` seconds; either way no
    process is left behind.
    """
    import queue

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    processes = [
        context.Process(target=_rank_main, args=(rank, size, init_method, device, target, args, results), daemon=True)
        for rank in range(size)
    ]
    with same_aios_in_children():
        for process in processes:
            process.start()
    outputs: dict[int, object] = {}
    try:
        while len(outputs) < size:
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"launch_ranks: no result from ranks {sorted(set(range(size)) - set(outputs))} "
                                   f"after {timeout:.0f} s") from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {size} failed:\n{value}")
            outputs[rank] = pickle.loads(value)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    return [outputs[rank] for rank in range(size)]
