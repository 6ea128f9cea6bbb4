"""Overlap scheduling (lesson 17): the host prepares step t+1 while the GPU runs step t.

The synchronous loop leaves the GPU idle while the host works::

    host  | schedule t | prepare t | launch t | .... wait .... | postprocess t | schedule t+1 | ...
    GPU   |            idle                   | forward+sample t |          idle              | ...

The overlapped loop launches step t+1 before it reads step t's tokens::

    host  | sched t+1 | pack t+1 | launch t+1 | wait t | resolve t | sched t+2 | pack t+2 | launch t+2 |
    GPU   |  ... forward+sample t ...          | ... forward+sample t+1 ...  (t+2 queued behind)      |

Step t's sampled token ids stay on the device and become step t+1's input ids there (a
scatter into the packed input ids); on the host each such sequence holds a PLACEHOLDER
token in the meantime, so lengths, block tables and positions are already right. Output
processing (the real token in place of the placeholder, EOS / max_tokens checks, freeing
blocks) trails one step behind. A sequence that finishes at step t was scheduled in step
t+1 already: the token step t+1 computed for it is dropped and its blocks freed. One whose
step-t token ends it by length (max_tokens, max_model_len) is known to finish and sits step
t+1 out, so only EOS stops and aborts cost a wasted row.

Not overlapped: tensor and pipeline parallelism (the workers receive host-side sequence
snapshots; a placeholder would reach them) and speculative decoding run the synchronous loop;
see ``resolve_async_scheduling``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aios.engine.block_manager import NO_CONTENT, NO_HASH, compute_block_hash
from aios.engine.sequence import Chunk, Sequence, SequenceStatus
from aios.layers.sampler import greedy_sample, sampling_tensors
from aios.utils.context import Context

#: The host's stand-in for a token the GPU has sampled but the host has not read yet.
#: Never a valid token id: an unreplaced placeholder fails loudly in the embedding.
PLACEHOLDER = -1

#: Where the switch is explained, for the errors about it.
ASYNC_README = "see exercises/lesson17/README.md, 'Turning it on'"


def resolve_async_scheduling(value, device: str, num_ranks: int, speculative: bool) -> bool:
    """The effective ``async_scheduling`` option: True, False or None (None: on for CUDA, off on the CPU).

    num_ranks: tensor_parallel_size x pipeline_parallel_size. Falls back to False (the synchronous loop)
    with more than one rank (tensor or pipeline parallelism) or speculative decoding.
    Raises ValueError for anything but True, False or None.
    """
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"async_scheduling must be True, False or None (None: on for CUDA, off on the CPU), "
                         f"got {value!r} ({ASYNC_README})")
    if num_ranks > 1 or speculative:
        return False
    return str(device).startswith("cuda") if value is None else value


@dataclass
class InFlightStep:
    """A launched step whose sampled tokens the host has not read yet.

    givers:        (sequence, row) for every row whose token extends its sequence (decodes,
                   prefills, chunks that end their prompt); other rows' tokens are dropped.
    device_tokens: [rows] int64 on the device: what step t+1 reads as input ids.
    host_tokens:   [rows] int64 on the host (pinned on a GPU), filled by a non-blocking copy.
    ready:         CUDA event recorded after that copy (None on the CPU: already there).
    """

    givers: list[tuple[Sequence, int]]
    device_tokens: torch.Tensor
    host_tokens: torch.Tensor
    ready: object | None = None

    def token_ids(self) -> list[int]:
        """Wait for the copy (only this step's, not the one launched after it) and read the tokens."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.host_tokens.tolist()


@dataclass
class Pending:
    """One sequence's token in flight: its placeholder's index in ``seq.token_ids`` and its row in the step."""

    seq: Sequence
    index: int
    row: int


def append_placeholders(step: InFlightStep | None) -> dict[int, Pending]:
    """Give every sequence of ``step`` that is still alive a PLACEHOLDER for its token in flight.

    Returns {seq_id: Pending}. A sequence that finished meanwhile (an abort) gets none: its
    token is dropped when the step resolves.
    """
    # Hint: the placeholder goes at the end of token_ids; remember where, and which row of the step holds the token.
    raise NotImplementedError("Lesson 17: implement append_placeholders in aios/engine/async_loop.py — see exercises/lesson17/README.md, 'What to implement'")


def finishes_by_length(seq: Sequence, max_model_len: int) -> bool:
    """Whether ``seq``'s newest token (placeholder or not) ends it by length: max_tokens or max_model_len.

    Such a sequence is known to finish whatever its token turns out to be, so it sits the next step out.
    """
    raise NotImplementedError("Lesson 17: implement finishes_by_length in aios/engine/async_loop.py — see exercises/lesson17/README.md, 'What to implement'")


@dataclass
class PackedStep:
    """A step's metadata on the host, packed into one int64 buffer for a single host-to-device copy.

    buffer: [total] int64, the fields back to back in ``FIELDS`` order; sizes: each field's length.
    block_table_width: columns of the block table; max_seqlen_q / max_seqlen_k: host ints for attention.
    """

    buffer: np.ndarray
    sizes: dict[str, int]
    block_table_width: int
    max_seqlen_q: int
    max_seqlen_k: int

    #: input_ids, positions, slot_mapping: [tokens]; cu_seqlens_q: [rows + 1]; context_lens: [rows];
    #: block_tables: [rows * width] (-1 padded); fix_dst / fix_src: [fixes], where step t+1's input
    #: ids take step t's sampled tokens (input_ids[fix_dst] = previous_tokens[fix_src]).
    FIELDS = ("input_ids", "positions", "slot_mapping", "cu_seqlens_q", "context_lens",
              "block_tables", "fix_dst", "fix_src")


def pack_step(items: list, is_prefill: bool, pending: dict[int, Pending], block_size: int) -> PackedStep:
    """Lay out one step's inputs like lesson 7's prepare_prefill / prepare_decode, in one int64 buffer.

    items: Sequences or Chunks (lesson 16). A prefill row computes tokens [num_cached_tokens, len(item));
    a decode row its newest token. Wherever a row's input is a PLACEHOLDER of ``pending``, the
    input id stays PLACEHOLDER and (flat index, the previous step's row) goes to fix_dst / fix_src.
    """
    # Hint: for each row, the positions it computes are range(start, len(item)); start is len(item) - 1 for a decode.
    # Hint: a pending token's flat index is the row's offset plus (its index - start), if start <= index < len(item).
    raise NotImplementedError("Lesson 17: implement pack_step in aios/engine/async_loop.py — see exercises/lesson17/README.md, 'What to implement'")


def upload(packed: PackedStep, device: torch.device) -> dict[str, torch.Tensor]:
    """One host-to-device copy of the packed buffer (pinned, non-blocking on a GPU), split into device views.

    cu_seqlens_q, context_lens and block_tables come back as int32 (the attention kernels' index type),
    block_tables shaped [rows, width]; the other fields stay int64.
    """
    host = torch.from_numpy(packed.buffer)
    if device.type == "cuda":
        flat = host.pin_memory().to(device, non_blocking=True)
    else:
        flat = host.to(device)
    views = dict(zip(PackedStep.FIELDS, flat.split([packed.sizes[name] for name in PackedStep.FIELDS])))
    for name in ("cu_seqlens_q", "context_lens", "block_tables"):
        views[name] = views[name].to(torch.int32)
    views["block_tables"] = views["block_tables"].view(-1, packed.block_table_width)
    return views


def refresh_block_hash(block_manager, seq: Sequence, index: int) -> None:
    """After ``seq.token_ids[index]`` replaced a placeholder: if that token completed a block the prefix
    cache registered (``may_append`` / ``cache_full_blocks`` ran while the placeholder stood there),
    register the block again under its real content, so it can be found; a placeholder never can."""
    size = block_manager.block_size
    if not block_manager.enable_prefix_caching or (index + 1) % size or index // size >= len(seq.block_table):
        return
    block_index = index // size
    block = block_manager.blocks[seq.block_table[block_index]]
    if block.hash == NO_HASH or PLACEHOLDER not in block.token_ids:
        return
    block_manager._uncache_block(block.block_id)
    parent = block_manager.blocks[seq.block_table[block_index - 1]] if block_index else None
    if parent is not None and parent.hash == NO_HASH:
        return
    tokens = seq.block(block_index)
    block_manager._register_block(block.block_id, compute_block_hash(tokens, parent.hash if parent else NO_HASH),
                                  tokens, parent.content_id if parent else NO_CONTENT)


class AsyncLoop:
    """The overlapped engine loop over an LLMEngine's scheduler, block manager and model runner."""

    def __init__(self, engine):
        self.engine = engine
        self.in_flight: InFlightStep | None = None
        self.pending: dict[int, Pending] = {}
        self.sitting_out: list[Sequence] = []

    # -- the step

    def step(self) -> tuple[list[Sequence], int]:
        """Launch step t+1, then resolve step t.

        Returns (sequences that finished at step t, tokens step t+1 processes: positive when it
        prefills, minus its row count for a decode step, 0 when nothing was launched).
        """
        # Hint: placeholders first (lengths must count the tokens in flight), then schedule and launch the next
        # Hint: step, and only then wait for the previous one's tokens: waiting first is the synchronous loop.
        raise NotImplementedError("Lesson 17: implement AsyncLoop.step in aios/engine/async_loop.py — see exercises/lesson17/README.md, 'What to implement'")

    def sit_out_length_finishers(self) -> None:
        """Take the running sequences whose token in flight ends them by length out of the next schedule."""
        scheduler = self.engine.scheduler
        max_len = self.engine.config.max_model_len
        self.sitting_out = [p.seq for p in self.pending.values()
                            if p.seq.status is SequenceStatus.RUNNING and finishes_by_length(p.seq, max_len)]
        for seq in self.sitting_out:
            scheduler.running.remove(seq)

    def schedule(self) -> tuple[list, bool]:
        """The next batch: (items, is_prefill) from lesson 8's or lesson 16's scheduler.

        A chunked step of decodes only runs as a decode step (CUDA graphs apply).
        """
        scheduler = self.engine.scheduler
        if not self.engine.config.enable_chunked_prefill:
            return scheduler.schedule()
        chunks = scheduler.schedule_chunked()
        return chunks, not all(chunk.is_decode for chunk in chunks)

    def launch_next(self, previous: InFlightStep | None) -> int:
        """Schedule, pack, upload and launch the next step; it becomes ``self.in_flight``. Returns its token count."""
        items, is_prefill = self.schedule()
        if not items:
            return 0
        runner = self.engine.model_runner
        packed = pack_step(items, is_prefill, self.pending, runner.block_size)
        inputs = upload(packed, runner.device)
        if packed.sizes["fix_dst"]:
            inputs["input_ids"][inputs["fix_dst"]] = previous.device_tokens[inputs["fix_src"]]
        context = Context(
            kv_cache=runner.kv_cache, positions=inputs["positions"], is_prefill=is_prefill,
            cu_seqlens_q=inputs["cu_seqlens_q"], context_lens=inputs["context_lens"],
            slot_mapping=inputs["slot_mapping"], block_tables=inputs["block_tables"],
            max_seqlen_q=packed.max_seqlen_q, max_seqlen_k=packed.max_seqlen_k,
        )
        logits = runner.run_model(inputs["input_ids"], inputs["positions"], context)
        tokens = sample_on_device(runner, logits, items)
        givers = []
        for row, item in enumerate(items):
            if isinstance(item, Chunk):
                item.seq.num_computed_tokens = item.end
                if not item.is_last:
                    continue
            givers.append((item.seq if isinstance(item, Chunk) else item, row))
        self.in_flight = start_host_copy(givers, tokens)
        return packed.sizes["input_ids"] if is_prefill else -len(items)

    def resolve(self, step: InFlightStep | None) -> list[Sequence]:
        """Step t's tokens replace their placeholders; finish the sequences that stop. Returns those."""
        if step is None:
            return []
        return resolve_tokens(self.engine, self.pending, step.token_ids())

    # -- after a failed step

    def discard(self) -> None:
        """Forget the step in flight and every placeholder (the server calls this through
        ``forget_failed_step`` before it requeues or fails the running requests)."""
        for waiting in self.pending.values():
            seq = waiting.seq
            if waiting.index < len(seq) and seq.token_ids[waiting.index] == PLACEHOLDER:
                del seq.token_ids[waiting.index]
        for seq in self.sitting_out:
            if seq.status is SequenceStatus.RUNNING and seq not in self.engine.scheduler.running:
                self.engine.scheduler.running.append(seq)
        self.in_flight, self.pending, self.sitting_out = None, {}, []


def resolve_tokens(engine, pending: dict[int, Pending], token_ids: list[int]) -> list[Sequence]:
    """Put each pending sequence's real token (``token_ids[row]``) in place of its placeholder, then
    finish it as lesson 8's postprocess would: EOS (unless ignore_eos) -> "stop", max_tokens or
    max_model_len -> "length". A finished sequence leaves whichever queue holds it (running, or
    waiting when step t+1's schedule preempted it) and its blocks are freed; any token computed
    for it in the step after is dropped. Returns the sequences that finished, in row order.
    """
    # Hint: a sequence with no entry in `pending` finished (was aborted) before its token arrived: drop the token.
    raise NotImplementedError("Lesson 17: implement resolve_tokens in aios/engine/async_loop.py — see exercises/lesson17/README.md, 'What to implement'")


def sample_on_device(runner, logits: torch.Tensor, items: list) -> torch.Tensor:
    """Next token per row, left on the device ([rows] int64): argmax when every row is greedy, else the sampler.

    Nothing here waits for the GPU: ``sampling_tensors`` copies the per-row settings without blocking and
    passes their host copies, from which the sampler decides (top-k / top-p, the candidate count, seeded
    rows). Top-k / top-p are passed only when some row uses them.
    """
    if all(item.sampling_params.is_greedy for item in items):
        return greedy_sample(logits)
    params = [item.sampling_params for item in items]
    tensors = sampling_tensors(params, [item.num_completion_tokens for item in items], logits.device)
    if all(p.top_k <= 0 for p in params):
        tensors["top_ks"] = None
    if all(p.top_p >= 1 for p in params):
        tensors["top_ps"] = None
    return runner.sampler(logits, **tensors)


def start_host_copy(givers: list[tuple[Sequence, int]], tokens: torch.Tensor) -> InFlightStep:
    """Start copying ``tokens`` to the host without waiting: pinned buffer, non-blocking copy, an event after it."""
    if tokens.device.type != "cuda":
        return InFlightStep(givers, tokens, tokens)
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return InFlightStep(givers, tokens, host, ready)
