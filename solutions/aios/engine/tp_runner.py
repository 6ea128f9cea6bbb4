"""The multi-process engine of lesson 14: one process per rank, rank 0 drives the others.

```
 driver process (rank 0)                          worker process (rank r = 1 .. N-1)
 ───────────────────────                          ──────────────────────────────────
 LLMEngine: tokenizer, Scheduler, BlockManager
 TensorParallelRunner.run(seqs, is_prefill)
   ├─ pipe ──► ("run", ([StepSequence...], is_prefill)) ──► worker loop: runner.run(...)
   └─ its own ModelRunner.run(...)                         its own ModelRunner.run(...)
        forward on its weight shard  ◄── all-reduce ──►     forward on its weight shard
        logits = gather of all ranks ◄──── gather ─────     (gets no logits, samples nothing)
        sample, return token ids
```

Only the driver schedules, allocates KV blocks and samples. Each step it sends every
worker the step's sequences (a compact snapshot: prompts only at prefill, the newest
token at decode) over a pipe; every rank then prepares the same batch and runs the
same forward on its own shard, meeting the others in the collectives.

Failure handling: a worker that dies is reported by the driver as a
``TensorParallelError`` naming the rank, whether the driver was waiting for it to
start, about to send it a step, or blocked in a collective with it (gloo fails the
collective as soon as a peer's connection drops; with NCCL a watchdog thread aborts
the collective). A step that fails in the driver's own part shuts the engine down too:
the workers may be waiting in a collective that will never complete. Workers exit when
the driver goes away, and ``shutdown`` (also run
when the runner is garbage collected or the interpreter exits) stops them all, so no
process is left behind.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import torch

from aios.config import Config
from aios.engine import distributed
from aios.engine.model_runner import ModelRunner

#: Seconds a worker may take to start (load its shard, size its KV cache) before the driver gives up.
START_TIMEOUT_S = float(os.environ.get("AIOS_TP_START_TIMEOUT_S", "900"))
#: Seconds the driver waits for a worker to exit after asking it to.
STOP_TIMEOUT_S = 10.0
#: After a failed step: how long to wait for a worker's death to explain it, and for the others to exit.
FAILURE_WAIT_S = 2.0


SPAWN_HINT = (
    ". Workers are fresh interpreters that re-import your main script: if its traceback mentions "
    "bootstrapping, put the script's top-level code under `if __name__ == \"__main__\":`"
)


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker failed or died; the engine cannot continue."""


@dataclass
class StepSequence:
    """What a worker needs of one sequence to prepare the same batch as the driver.

    It stands in for a Sequence in ``ModelRunner.prepare_prefill`` / ``prepare_decode``:
    at prefill it carries the token ids, at decode only the newest token (``token_ids``
    is then None), always the length, the cached-prefix length and the block table.
    """

    seq_id: int
    num_tokens: int
    last_token: int
    num_cached_tokens: int
    block_table: list[int]
    token_ids: list[int] | None = None

    @classmethod
    def of(cls, seq, is_prefill: bool) -> "StepSequence":
        return cls(seq.seq_id, len(seq), seq.last_token, seq.num_cached_tokens, list(seq.block_table),
                   list(seq.token_ids) if is_prefill else None)

    def __len__(self) -> int:
        return self.num_tokens


def check_tensor_parallel_config(config: Config) -> None:
    """Raise ValueError, before any process starts, when the model cannot be split ``tensor_parallel_size`` ways."""
    size = config.tensor_parallel_size
    if size == 1:
        return
    hf = config.hf_config
    problems = [
        f"{what} ({value}) is not divisible by tensor_parallel_size ({size})"
        for what, value in [("num_attention_heads", hf.num_attention_heads),
                            ("num_key_value_heads", hf.num_key_value_heads),
                            ("intermediate_size", hf.intermediate_size), ("vocab_size", hf.vocab_size)]
        if value % size
    ]
    from aios.utils.moe_config import is_moe_config

    if is_moe_config(hf) and hf.moe_intermediate_size % size:  # lesson 20: every expert is sliced by its width
        problems.append(f"moe_intermediate_size ({hf.moe_intermediate_size}) is not divisible by "
                        f"tensor_parallel_size ({size})")
    if not config.fused_layers:
        problems.append("tensor parallelism needs fused_layers=True (the tensor-parallel layers of lesson 10)")
    if config.device.startswith("cuda") and torch.cuda.device_count() < size:
        problems.append(f"tensor_parallel_size={size} needs {size} GPUs, torch sees {torch.cuda.device_count()}")
    if problems:
        raise ValueError("Invalid tensor-parallel setup: " + "; ".join(problems))


def create_model_runner(config: Config):
    """A plain ModelRunner for one process, a TensorParallelRunner (driver + workers) for several."""
    if distributed.get_tp_size() != 1:
        # Layers take their shard size from this process's group: a second engine would be built for it.
        raise RuntimeError(
            f"this process already drives a tensor-parallel engine of size {distributed.get_tp_size()}; "
            "call its shutdown() before building another engine"
        )
    from aios.engine.pp_runner import create_pipeline_runner, uses_pipeline_runner

    if uses_pipeline_runner(config):  # lesson 21: pipeline stages, or ranks started by torchrun
        return create_pipeline_runner(config)
    if config.tensor_parallel_size == 1:
        return ModelRunner(config)
    return TensorParallelRunner(config)


def step_logits(runner: ModelRunner, seqs, is_prefill: bool) -> torch.Tensor | None:
    """Logits [num_seqs, vocab] of one step without sampling (None on a worker rank)."""
    prepare = runner.prepare_prefill if is_prefill else runner.prepare_decode
    return runner.run_model(*prepare(seqs))


# ---------------------------------------------------------------------------- worker side


def _exit_when_parent_dies() -> None:
    """Start a thread that ends this process as soon as its parent is gone (never an orphan)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="aios-parent-watch", daemon=True).start()


def worker_main(rank: int, config: Config, init_method: str, conn: Connection) -> None:
    """A worker process: join the group, build this rank's ModelRunner, then run what the driver sends."""
    _exit_when_parent_dies()
    try:
        conn.send(("hello", os.getpid()))
        distributed.init_tensor_parallel(rank, config.tensor_parallel_size, init_method, config.device)
        runner = ModelRunner(config)
        conn.send(("ready", None))
        serve_driver(runner, conn)
    except EOFError:
        os._exit(2)  # the driver closed its end: nobody is left to serve
    except BaseException:
        report = traceback.format_exc()
        print(f"[aios tensor-parallel worker rank {rank}]\n{report}", flush=True)
        try:
            conn.send(("error", report))
        finally:
            os._exit(1)  # skip clean-up that could wait on the other ranks
    conn.close()
    # Leave without clean-up: the driver aborts the group once every worker is gone, and an NCCL
    # destroy here could wait for peers that are already leaving (exit frees the GPU anyway).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve_driver(runner: ModelRunner, conn: Connection) -> None:
    """A worker's main loop: run each ``(command, args)`` the driver sends, until ``("exit", ())``.

    Commands: ``"run"`` -> ``runner.run(*args)`` (one engine step; a worker samples
    nothing), ``"logits"`` -> ``step_logits(runner, *args)``. Results stay here: the
    driver gets what it needs through the collectives inside the forward pass.
    """
    # BEGIN SOLUTION lesson14
    # Hint: conn.recv() blocks until the driver sends; it raises EOFError when the driver is gone.
    commands = {"run": runner.run, "logits": functools.partial(step_logits, runner)}
    while True:
        command, args = conn.recv()
        if command == "exit":
            return
        commands[command](*args)
    # END SOLUTION


# ---------------------------------------------------------------------------- driver side


@dataclass
class WorkerHandle:
    """The driver's view of one worker process."""

    rank: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    error: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """'rank 1 (pid 1234) exited with code -9 (killed by signal 9)' or '... is alive'."""
        code = self.process.exitcode
        if code is None:
            state = "is still running"
        elif code < 0:
            state = f"was killed by signal {-code}"
        else:
            state = f"exited with code {code}"
        text = f"tensor-parallel worker rank {self.rank} (pid {self.process.pid}) {state}"
        if self.error:
            text += f"; its error:\n{self.error.strip().splitlines()[-1]}"
        return text

    def drain_messages(self) -> None:
        """Read anything the worker sent (an error report before it died)."""
        try:
            while self.conn.poll():
                kind, payload = self.conn.recv()
                if kind == "error":
                    self.error = payload
        except (EOFError, OSError):
            pass


def start_workers(config: Config, init_method: str) -> list[WorkerHandle]:
    """Spawn ranks 1 .. N-1 (fresh interpreters: CUDA and fork do not mix)."""
    context = multiprocessing.get_context("spawn")
    workers = []
    for rank in range(1, config.tensor_parallel_size):
        driver_end, worker_end = context.Pipe()
        process = context.Process(target=worker_main, args=(rank, config, init_method, worker_end),
                                  name=f"aios-tp-rank{rank}", daemon=True)
        with distributed.same_aios_in_children():
            process.start()
        worker_end.close()
        workers.append(WorkerHandle(rank, process, driver_end))
    return workers


def await_message(workers: list[WorkerHandle], expected: str, timeout: float) -> None:
    """Wait until every worker has sent ``expected``; a worker that dies or reports an error fails fast."""
    pending = {w.conn: w for w in workers}
    sentinels = {w.process.sentinel: w for w in workers}
    while pending:
        ready = wait([*pending, *(s for s, w in sentinels.items() if w.conn in pending)], timeout)
        if not ready:
            ranks = sorted(w.rank for w in pending.values())
            raise TensorParallelError(f"tensor-parallel worker rank(s) {ranks} sent no {expected!r} in {timeout:.0f} s")
        for item in ready:
            worker = pending.get(item) or sentinels[item]
            if worker.conn not in pending:
                continue
            try:
                kind, payload = worker.conn.recv() if worker.conn.poll() else ("died", None)
            except (EOFError, OSError):
                kind, payload = "died", None
            if kind == expected:
                del pending[worker.conn]
                continue
            if kind == "error":
                worker.error = payload
            worker.process.join(timeout=STOP_TIMEOUT_S)
            hint = SPAWN_HINT if expected == "hello" else ""
            raise TensorParallelError(f"{worker.describe()} while the driver waited for {expected!r}{hint}")


def stop_workers(workers: list[WorkerHandle], timeout: float = STOP_TIMEOUT_S) -> None:
    """Ask every live worker to exit, wait up to ``timeout`` seconds, then kill whatever is left."""
    for worker in workers:
        try:
            if worker.process.is_alive():
                worker.conn.send(("exit", ()))
        except OSError:
            pass
    for worker in workers:
        worker.process.join(timeout=timeout)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def _shutdown(workers: list[WorkerHandle], stopping: threading.Event, local_runner: list[ModelRunner]) -> None:
    """Stop the workers, free the driver's CUDA graphs and leave the process group.

    The finalizer of a TensorParallelRunner; ``local_runner`` holds the driver's ModelRunner once built.
    """
    stopping.set()
    stop_workers(workers)
    for runner in local_runner:
        runner.release_cuda_graphs()
    local_runner.clear()
    distributed.destroy_tensor_parallel()


class TensorParallelRunner:
    """The driver's runner: its own rank-0 ModelRunner plus one worker process per other rank.

    It has the ModelRunner's interface (``run`` and, through attribute forwarding,
    ``kv_cache``, ``config`` ...). Call ``shutdown()`` when done (``LLM.shutdown()`` does).
    """

    def __init__(self, config: Config):
        check_tensor_parallel_config(config)
        init_method = f"tcp://127.0.0.1:{distributed.free_port()}"
        self.workers = start_workers(config, init_method)
        self._stopping = threading.Event()
        self._local_runner: list[ModelRunner] = []
        self._finalizer = weakref.finalize(self, _shutdown, self.workers, self._stopping, self._local_runner)
        try:
            await_message(self.workers, "hello", START_TIMEOUT_S)
            self._start_watchdog(config)
            distributed.init_tensor_parallel(0, config.tensor_parallel_size, init_method, config.device)
            self.runner = self._guarded(ModelRunner, config)
            self._local_runner.append(self.runner)
            await_message(self.workers, "ready", START_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise

    def __getattr__(self, name):
        if name == "runner":  # not built (start-up failed): do not recurse
            raise AttributeError(name)
        return getattr(self.runner, name)

    def run(self, seqs, is_prefill: bool) -> list[int]:
        """One engine step on every rank; returns the driver's sampled token ids."""
        return self._call("run", self.runner.run, seqs, is_prefill)

    def step_logits(self, seqs, is_prefill: bool) -> torch.Tensor:
        """One forward on every rank without sampling; returns the full logits [num_seqs, vocab]."""
        return self._call("logits", lambda s, p: step_logits(self.runner, s, p), seqs, is_prefill)

    def _call(self, command: str, local, seqs, is_prefill: bool):
        """Send ``command`` for this step to every worker, then do the driver's part."""
        if self._stopping.is_set():
            raise TensorParallelError("the tensor-parallel engine is shut down")
        self._raise_if_a_worker_died()
        # BEGIN SOLUTION lesson14
        # Hint: workers only need StepSequence snapshots; send before running the driver's part,
        # Hint: or the driver waits in the first collective for workers that never started the step.
        snapshot = [StepSequence.of(seq, is_prefill) for seq in seqs]
        for worker in self.workers:
            self._send(worker, (command, (snapshot, is_prefill)))
        return self._guarded(local, seqs, is_prefill)
        # END SOLUTION

    def _send(self, worker: WorkerHandle, message) -> None:
        """Send ``message`` to ``worker``; a broken pipe means it died: report which."""
        try:
            worker.conn.send(message)
        except OSError:
            self._raise_if_a_worker_died(wait_s=FAILURE_WAIT_S)
            raise

    def _guarded(self, function, *args):
        """Run the driver's part. If it fails, report the worker that died (if one did), and shut down
        either way: the workers may be waiting in a collective that will never complete."""
        try:
            return function(*args)
        except Exception:
            self._raise_if_a_worker_died(wait_s=FAILURE_WAIT_S)
            self._stop_after_failure()
            raise

    def _stop_after_failure(self) -> None:
        """Shut down without the polite wait: after a failure the workers may never read an "exit"."""
        self._stopping.set()
        stop_workers(self.workers, timeout=FAILURE_WAIT_S)
        self.shutdown()

    def _raise_if_a_worker_died(self, wait_s: float = 0.0) -> None:
        """Raise TensorParallelError (and stop the rest) if some worker is gone, waiting up to ``wait_s``."""
        dead = wait([w.process.sentinel for w in self.workers], timeout=wait_s)
        if not dead:
            return
        worker = next(w for w in self.workers if w.process.sentinel in dead)
        worker.process.join()
        worker.drain_messages()
        message = worker.describe()
        self._stop_after_failure()
        raise TensorParallelError(message + "; the engine has shut down")

    def _start_watchdog(self, config: Config) -> None:
        """With NCCL, a collective with a dead peer waits forever: abort it when a worker dies."""
        if not config.device.startswith("cuda"):
            return  # gloo fails the collective by itself
        sentinels = [w.process.sentinel for w in self.workers]
        stopping = self._stopping

        def watch():
            wait(sentinels)
            if not stopping.is_set():
                abort = getattr(torch.distributed.distributed_c10d, "_abort_process_group", None)
                try:
                    if abort is not None and torch.distributed.is_initialized():
                        abort()
                except Exception:  # noqa: BLE001 - best effort: the driver reports the death either way
                    pass

        threading.Thread(target=watch, name="aios-tp-watchdog", daemon=True).start()

    def shutdown(self) -> None:
        """Stop every worker and leave the process group; safe to call more than once."""
        self._finalizer()
