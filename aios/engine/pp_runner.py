"""The pipeline-parallel engine of lesson 21: TP x PP ranks over torch.distributed, rank 0 drives.

```
 rank 0 (driver, stage 0, tp 0)            every other rank (worker)
 ──────────────────────────────            ─────────────────────────
 LLMEngine: tokenizer, Scheduler            serve_pipeline_driver():
 PipelineRunner.run(seqs, is_prefill)         loop: command = recv_command(from rank 0)
   ├─ send_command("run", snapshot) ──────►         runner.execute(snapshot)
   └─ runner.execute(seqs)                    
        micro-batch 0: stage 0 ──hidden,residual──► stage 1 ... ──► last stage
        micro-batch 1: stage 0 ──────────────────►  (while micro-batch 0 is further on)
        ...                                         last stage, tp 0: logits of every
   ◄────────── sampled token ids (int64 [num_seqs]) ─ micro-batch, sample once
```

Every rank runs the same step: it splits the step's sequences into ``pp_size``
micro-batches, and for each one receives the previous stage's activations (or embeds the
tokens on stage 0), runs its layers, and sends the result on (or, on the last stage, keeps
the logits). Stage 0 starts micro-batch 1 while stage 1 works on micro-batch 0: within a
step, every stage is busy once the pipeline has filled. Only the last stage's TP rank 0
holds the gathered logits; it samples and sends the token ids back to the driver.

Two launchers start the same ranks:

* the engine's own (``LLM(dir, pipeline_parallel_size=2)`` in a plain ``python``): the
  driver spawns ranks 1 .. N-1 on this machine, like lesson 14;
* ``torchrun`` (one launch per machine): every process builds the engine; rank 0 returns
  from ``LLM(...)`` and drives (``aios serve`` then serves HTTP on rank 0 only), every
  other rank serves the driver inside ``create_model_runner`` and exits when it is done.

Control messages (the step's sequences, a few hundred bytes) travel on a gloo group as
pickled plain data; activations travel on the main group (NCCL on GPUs) as raw tensors
whose shapes every rank derives from that metadata. A rank that dies closes its
connections: every rank talking to it fails at once and the driver raises
``PipelineError``; a rank that never joins fails the rendezvous after
``AIOS_PP_TIMEOUT_S`` seconds. See the README's 'When a rank fails'.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist

from aios.config import Config
from aios.engine import distributed
from aios.engine.model_runner import ModelRunner, default_num_kvcache_blocks
from aios.engine.pipeline import (
    PP_README,
    RankLayout,
    check_parallel_layout,
    load_stage_model,
    recv_activations,
    send_activations,
    split_micro_batches,
)
from aios.engine.pp_graphs import StageDecodeGraphs, stage_graphs_wanted
from aios.engine.tp_runner import StepSequence, check_tensor_parallel_config
from aios.layers.paged_attention import PagedKVCache
from aios.layers.sampler import Sampler
from aios.utils.context import using_context

#: Seconds a rank waits for the others: at the rendezvous, and in a step's collectives (0 < value).
PP_TIMEOUT_S = float(os.environ.get("AIOS_PP_TIMEOUT_S", "300"))
#: Seconds the driver waits for a spawned worker to exit after asking it to.
STOP_TIMEOUT_S = 10.0
#: The control group's timeout: an idle worker waits for the next step as long as the server is up.
IDLE_TIMEOUT = timedelta(days=365)

COMMANDS = ("run", "logits", "exit")
_CONTROL_TAG = 21


class PipelineError(RuntimeError):
    """A pipeline rank failed, died or never joined; the engine cannot continue."""


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (torch.distributed.elastic sets these variables)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def uses_pipeline_runner(config: Config) -> bool:
    """Pipeline stages, or any multi-process launch by torchrun (TP alone included), take this runner."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    return config.pipeline_parallel_size > 1 or world > 1


def check_pipeline_config(config: Config) -> None:
    """Raise ValueError for options pipeline parallelism cannot serve; adjust the ones it overrides.

    The asynchronous loop (lesson 17) is switched off: a stage's forward waits on another
    process. Decode micro-batches replay CUDA graphs per stage (pp_graphs.py) unless
    ``enforce_eager``. Speculative decoding (lesson 19) is refused.
    """
    world = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else None
    check_parallel_layout(config.hf_config.num_hidden_layers, config.tensor_parallel_size,
                          config.pipeline_parallel_size, world)
    if not config.fused_layers:
        raise ValueError(f"pipeline parallelism needs fused_layers=True (the layers of lessons 10 and 14) "
                         f"({PP_README}, 'Ranks and groups')")
    if getattr(config, "speculative_config", None) is not None:
        raise ValueError(f"pipeline parallelism does not run speculative decoding: drop speculative_config "
                         f"({PP_README}, 'What pipeline parallelism leaves out')")
    if getattr(config, "quantization", None) or getattr(config, "kv_cache_dtype", "auto") != "auto":
        raise ValueError(f"pipeline parallelism does not load quantized weights or keep an FP8 KV cache (lesson 18): "
                         f"drop quantization / kv_cache_dtype ({PP_README}, 'What pipeline parallelism leaves out')")
    check_moe_pipeline_config(config)  # first: its message names lesson 21's README section
    if config.tensor_parallel_size > 1:
        check_tensor_parallel_config(config)
    if world is None and config.device.startswith("cuda"):
        needed = config.tensor_parallel_size * config.pipeline_parallel_size
        if torch.cuda.device_count() < needed:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = {needed} ranks need {needed} GPUs on "
                             f"this machine, torch sees {torch.cuda.device_count()}; use torchrun to span machines "
                             f"({PP_README}, 'Launching across machines')")
    if hasattr(config, "async_scheduling"):
        config.async_scheduling = False


def check_moe_pipeline_config(config: Config) -> None:
    """A Qwen3-MoE checkpoint (lesson 20): its MoE fields must be valid, and with TP every expert is
    sharded by its intermediate size, so ``moe_intermediate_size`` must divide by ``tensor_parallel_size``."""
    from aios.utils.moe_config import check_moe_config, is_moe_config

    hf, tp_size = config.hf_config, config.tensor_parallel_size
    if not is_moe_config(hf):
        return
    check_moe_config(hf)
    if hf.moe_intermediate_size % tp_size:
        raise ValueError(
            f"Qwen3-MoE over tensor_parallel_size={tp_size}: each rank holds a 1/{tp_size} slice of every expert, "
            f"but moe_intermediate_size ({hf.moe_intermediate_size}) is not divisible by {tp_size} "
            f"({PP_README}, 'MoE checkpoints')"
        )


# ---------------------------------------------------------------------------- groups


def init_pipeline_parallel(world_rank: int, config: Config, init_method: str,
                           local_rank: int | None = None) -> tuple[RankLayout, object]:
    """Join the world of tp x pp ranks as ``world_rank``; build every stage's TP group and the control group.

    Returns (this rank's layout, the gloo group that carries control messages). Installs the
    stage's TP group as the group lesson 14's layers all-reduce and gather in.
    """
    layout = RankLayout(world_rank, config.tensor_parallel_size, config.pipeline_parallel_size,
                        config.hf_config.num_hidden_layers)
    backend = distributed.default_backend(config.device)
    threads_before = None
    if backend == "nccl":
        torch.cuda.set_device(world_rank if local_rank is None else local_rank)
    else:
        threads_before = torch.get_num_threads()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", layout.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    try:
        dist.init_process_group(backend, init_method=init_method, rank=world_rank, world_size=layout.world_size,
                                timeout=timedelta(seconds=PP_TIMEOUT_S))
    except Exception as error:  # noqa: BLE001 - the rendezvous timed out or failed: say which and why
        raise PipelineError(
            f"pipeline rank {world_rank} of {layout.world_size}: the rendezvous at {init_method} failed ({error}); "
            f"every rank must join within AIOS_PP_TIMEOUT_S={PP_TIMEOUT_S:g} s ({PP_README}, 'When a rank fails')"
        ) from None
    tp_group = None
    for pp_rank in range(layout.pp_size):  # every rank creates every group, in the same order
        group = dist.new_group(layout.tp_group_ranks(pp_rank))
        if pp_rank == layout.pp_rank:
            tp_group = group
    control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    distributed.set_parallel_state(distributed.ParallelState(
        layout.tp_rank, layout.tp_size, backend, threads_before, tp_group,
        tuple(layout.tp_group_ranks(layout.pp_rank)), layout.pp_rank, layout.pp_size,
    ))
    return layout, control


# ---------------------------------------------------------------------------- control messages


@dataclass
class PipelineStepSequence(StepSequence):
    """Lesson 14's step snapshot plus what the sampling stage needs: the request's sampling settings."""

    sampling_params: object = None
    num_completion_tokens: int = 0

    @classmethod
    def of(cls, seq, is_prefill: bool) -> "PipelineStepSequence":
        base = StepSequence.of(seq, is_prefill)
        return cls(**vars(base), sampling_params=seq.sampling_params,
                   num_completion_tokens=seq.num_completion_tokens)


def send_command(command: str, payload, dst: int, group) -> None:
    """Send ``(command, payload)`` to world rank ``dst``: a 2-int header (command, byte count), then the bytes."""
    data = pickle.dumps(payload)
    header = torch.tensor([COMMANDS.index(command), len(data)], dtype=torch.int64)
    dist.send(header, dst=dst, group=group, tag=_CONTROL_TAG)
    if data:
        dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst=dst, group=group, tag=_CONTROL_TAG)


def recv_command(group, src: int = 0):
    """Receive one ``(command, payload)`` from world rank ``src`` (blocks while the engine is idle)."""
    header = torch.empty(2, dtype=torch.int64)
    dist.recv(header, src=src, group=group, tag=_CONTROL_TAG)
    code, size = header.tolist()
    data = torch.empty(size, dtype=torch.uint8)
    if size:
        dist.recv(data, src=src, group=group, tag=_CONTROL_TAG)
    return COMMANDS[code], pickle.loads(data.numpy().tobytes())


# ---------------------------------------------------------------------------- one rank's runner


def stage_num_kvcache_blocks(config: Config, num_layers: int) -> int:
    """``default_num_kvcache_blocks`` for a stage that caches ``num_layers`` layers (its memory holds only those)."""
    import copy

    stage_config = copy.copy(config)
    stage_config.hf_config = copy.copy(config.hf_config)
    stage_config.hf_config.num_hidden_layers = num_layers
    return default_num_kvcache_blocks(stage_config)


class StageRunner(ModelRunner):
    """One rank's part: this stage's weights and KV cache, and ``execute`` for one engine step.

    It reuses ModelRunner's batch preparation (lesson 7) and sampling; decode graphs are pp_graphs.py's.
    """

    def __init__(self, config: Config, layout: RankLayout):
        self.config = config
        self.layout = layout
        self.stage = layout.stage
        self.block_size = config.kvcache_block_size
        self.device = torch.device(config.device)
        self.model = load_stage_model(config, self.stage)
        if config.num_kvcache_blocks <= 0:
            # Every rank must agree: the driver's block manager hands out the same block ids to all stages.
            config.num_kvcache_blocks = distributed.min_over_ranks(
                stage_num_kvcache_blocks(config, self.stage.num_layers))
        self.kv_cache = self.allocate_kv_cache()
        self.sampler = Sampler()
        self.graphs, self.graph_sizes, self.graph_inputs = {}, [], None
        # Decode micro-batches replay CUDA graphs on a GPU (pp_graphs.py); prefill runs forward_step.
        self.stage_graphs = StageDecodeGraphs(self).capture() if stage_graphs_wanted(config) else None
        if dist.is_initialized():  # every stage is loaded: a rank that failed to start fails the others here
            dist.barrier()

    def allocate_kv_cache(self) -> PagedKVCache:
        """The paged KV cache of this stage's layers only, for this rank's share of the KV heads.

        Shape per K and V: [stage layers, num_kvcache_blocks, block_size, kv_heads / tp, head_dim].
        """
        config, hf = self.config, self.config.hf_config
        # Hint: the attention layers of a stage index the cache with their local layer index.
        raise NotImplementedError("Lesson 21: implement StageRunner.allocate_kv_cache in aios/engine/pp_runner.py — see exercises/lesson21/README.md, 'What to implement'")

    @torch.inference_mode()
    def forward_step(self, seqs, is_prefill: bool) -> torch.Tensor | None:
        """This rank's part of one step, micro-batch by micro-batch.

        Splits ``seqs`` into ``pp_size`` micro-batches (``split_micro_batches``). For each: stage 0
        embeds the tokens, later stages ``recv_activations`` from ``layout.prev_rank`` (shape
        [micro-batch tokens, hidden]); the stage runs its layers; all but the last stage
        ``send_activations`` to ``layout.next_rank`` without waiting, and go on with the next
        micro-batch. The last stage takes each sequence's last token (prefill) and computes logits.
        Returns the logits [num_seqs, vocab] in sequence order on the last stage's TP rank 0, else None.
        """
        prepare = self.prepare_prefill if is_prefill else self.prepare_decode
        hidden_size, layout = self.config.hf_config.hidden_size, self.layout
        # Hint: keep the send handles and wait on them after the loop: waiting inside it would idle this stage.
        raise NotImplementedError("Lesson 21: implement StageRunner.forward_step in aios/engine/pp_runner.py — see exercises/lesson21/README.md, 'What to implement'")

    def execute(self, seqs, is_prefill: bool, want_logits: bool, control) -> torch.Tensor | None:
        """One step on this rank. The sampling rank samples (or keeps the logits) and sends the result to rank 0.

        Returns, on rank 0, the token ids (int64 [num_seqs]) or the logits (float32 [num_seqs, vocab]); None elsewhere.
        """
        graphs = self.stage_graphs
        if graphs is not None and not is_prefill and graphs.fits(len(seqs)):
            logits = graphs.forward_step(seqs)  # every stage decides alike: same step, same micro-batches
        else:
            logits = self.forward_step(seqs, is_prefill)
        layout = self.layout
        if layout.world_rank == layout.sampler_rank:
            if logits is None or logits.shape[0] != len(seqs):
                rows = None if logits is None else logits.shape[0]
                raise RuntimeError(f"forward_step gave {rows} rows of logits for {len(seqs)} sequences on the "
                                   f"sampling rank {layout.world_rank}: one row per sequence, in order, is expected")
            result = logits if want_logits else torch.tensor(self.sample(logits, seqs), dtype=torch.int64)
            if layout.world_rank == 0:
                return result
            dist.send(result.cpu().contiguous(), dst=0, group=control, tag=_CONTROL_TAG)
            return None
        if layout.world_rank != 0:
            return None
        shape = (len(seqs), self.config.hf_config.vocab_size) if want_logits else (len(seqs),)
        result = torch.empty(shape, dtype=torch.float32 if want_logits else torch.int64)
        dist.recv(result, src=layout.sampler_rank, group=control, tag=_CONTROL_TAG)
        return result


# ---------------------------------------------------------------------------- worker side


def describe_rank(layout: RankLayout) -> str:
    return f"pipeline rank {layout.world_rank} (stage {layout.pp_rank}, tp {layout.tp_rank})"


def serve_pipeline_driver(runner: StageRunner, control) -> None:
    """A worker's loop: run every step rank 0 sends (``"run"`` / ``"logits"``) until ``"exit"``."""
    while True:
        command, args = recv_command(control, src=0)
        if command == "exit":
            return
        seqs, is_prefill = args
        runner.execute(seqs, is_prefill, command == "logits", control)


def run_worker(world_rank: int, config: Config, init_method: str, local_rank: int | None = None) -> None:
    """Body of every rank but 0: join, build this stage, serve the driver; a failure is printed and re-raised."""
    layout = None
    try:
        layout, control = init_pipeline_parallel(world_rank, config, init_method, local_rank)
        runner = StageRunner(config, layout)
        serve_pipeline_driver(runner, control)
    except BaseException as error:
        who = describe_rank(layout) if layout else f"pipeline rank {world_rank}"
        print(f"[aios {who}] stopped: {type(error).__name__}: {error}\n"
              f"  (the driver or another stage is gone, or this rank failed; {PP_README}, 'When a rank fails')",
              file=sys.stderr, flush=True)
        raise
    finally:
        distributed.destroy_tensor_parallel()


def _spawned_worker_main(world_rank: int, config: Config, init_method: str) -> None:
    """A worker started by the engine's own launcher: exits with the driver, never an orphan."""
    from aios.engine.tp_runner import _exit_when_parent_dies

    _exit_when_parent_dies()
    try:
        run_worker(world_rank, config, init_method)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve_as_torchrun_worker(config: Config) -> None:
    """Under torchrun on a rank other than 0: serve the driver, then end the process (exit code 0)."""
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        run_worker(rank, config, "env://", local_rank)
    except BaseException:
        raise SystemExit(1) from None
    raise SystemExit(0)


# ---------------------------------------------------------------------------- driver side


def _shutdown(processes: list, control_box: list, stopping: threading.Event) -> None:
    """Tell every worker to exit, wait for spawned ones (kill the late), leave the groups. Idempotent."""
    if stopping.is_set():
        return
    stopping.set()
    if control_box and dist.is_initialized():
        control, world = control_box[0]
        for rank in range(1, world):
            try:
                send_command("exit", None, rank, control)
            except Exception:  # noqa: BLE001 - a dead rank cannot be told; it is gone anyway
                pass
    for process in processes:
        process.join(timeout=STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
    control_box.clear()
    distributed.destroy_tensor_parallel()


class PipelineRunner:
    """Rank 0's runner: its own StageRunner (stage 0, TP rank 0) and the control of every other rank.

    Same interface as ModelRunner / TensorParallelRunner: ``run``, ``step_logits``, ``shutdown``
    and, forwarded, ``kv_cache``, ``config`` ...
    """

    def __init__(self, config: Config):
        check_pipeline_config(config)
        self.processes: list = []
        self._control_box: list = []
        self._stopping = threading.Event()
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self._control_box, self._stopping)
        try:
            if launched_by_torchrun():
                init_method, local_rank = "env://", int(os.environ.get("LOCAL_RANK", "0"))
            else:
                init_method, local_rank = f"tcp://127.0.0.1:{distributed.free_port()}", None
                self._spawn_workers(config, init_method)
            self.layout, self.control = init_pipeline_parallel(0, config, init_method, local_rank)
            self._control_box.append((self.control, self.layout.world_size))
            self.runner = self._guarded(StageRunner, config, self.layout)
        except BaseException:
            self._stop_after_failure()
            raise

    def _spawn_workers(self, config: Config, init_method: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        world = config.tensor_parallel_size * config.pipeline_parallel_size
        for rank in range(1, world):
            process = context.Process(target=_spawned_worker_main, args=(rank, config, init_method),
                                      name=f"aios-pp-rank{rank}", daemon=True)
            with distributed.same_aios_in_children():
                process.start()
            self.processes.append(process)

    def __getattr__(self, name):
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    def run(self, seqs, is_prefill: bool) -> list[int]:
        """One engine step through every stage; returns the sampled token id of each sequence."""
        return self._call("run", seqs, is_prefill).tolist()

    def step_logits(self, seqs, is_prefill: bool) -> torch.Tensor:
        """One step through every stage without sampling: the full logits [num_seqs, vocab] (float32)."""
        return self._call("logits", seqs, is_prefill)

    def _call(self, command: str, seqs, is_prefill: bool):
        if self._stopping.is_set():
            raise PipelineError("the pipeline-parallel engine is shut down")
        self._raise_if_a_worker_died()
        snapshot = [PipelineStepSequence.of(seq, is_prefill) for seq in seqs]
        for rank in range(1, self.layout.world_size):
            self._guarded(send_command, command, (snapshot, is_prefill), rank, self.control)
        # The driver runs its stage on the real sequences; the sampler (maybe elsewhere) on the snapshot.
        local = seqs if self.layout.sampler_rank == 0 else snapshot
        return self._guarded(self.runner.execute, local, is_prefill, command == "logits", self.control)

    def _guarded(self, function, *args):
        """Run the driver's part; on failure name the rank that died (if we know), shut down, raise."""
        try:
            return function(*args)
        except Exception as error:
            dead = self._dead_worker(wait_s=2.0)
            self._stop_after_failure()
            if dead or isinstance(error, RuntimeError) and not isinstance(error, PipelineError):
                raise PipelineError(
                    f"pipeline rank 0 (the driver): {dead or 'a peer rank failed or closed its connection'}: "
                    f"{type(error).__name__}: {error}; the engine has shut down ({PP_README}, 'When a rank fails')"
                ) from error
            raise

    def _dead_worker(self, wait_s: float = 0.0) -> str | None:
        """'rank 3 (pid 123) was killed by signal 9' for every spawned worker that is gone, else None.

        Waits up to ``wait_s`` for a first death, then a moment for the ranks that fail because of it.
        """
        if not self.processes or not wait([p.sentinel for p in self.processes], timeout=wait_s):
            return None
        ready = wait([p.sentinel for p in self.processes], timeout=0.5)
        gone = []
        for rank, process in enumerate(self.processes, start=1):
            if process.sentinel in ready:
                process.join(timeout=2.0)  # its sentinel closes a moment before it can be reaped
            if process.exitcode is not None:
                code = process.exitcode
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                gone.append(f"rank {rank} (pid {process.pid}) {how}")
        return "; ".join(gone) or None

    def _raise_if_a_worker_died(self) -> None:
        dead = self._dead_worker()
        if dead:
            self._stop_after_failure()
            raise PipelineError(f"pipeline {dead}; the engine has shut down ({PP_README}, 'When a rank fails')")

    def _stop_after_failure(self) -> None:
        """After a failure the survivors may never read "exit": kill the spawned ones, leave the groups."""
        self._control_box.clear()
        for process in self.processes:
            if process.is_alive():
                process.kill()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every rank and leave the groups; safe to call more than once."""
        self._finalizer()


def create_pipeline_runner(config: Config):
    """Rank 0: the PipelineRunner. Any other rank under torchrun: serve rank 0, then exit the process."""
    if dist.is_initialized():
        raise RuntimeError("this process already drives a parallel engine; call its shutdown() before building "
                           "another engine")
    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        check_pipeline_config(config)
        serve_as_torchrun_worker(config)
    return PipelineRunner(config)
