"""Continuous batching: decide, every step, which sequences run and whether the step is prefill or decode.

Prefill first: while waiting requests fit (sequence count, token budget, free KV
blocks) admit them and run a prefill step. Otherwise run one decode step over
every running sequence; when the cache is full, preempt the newest running
sequence (free its blocks, send it back to the front of the queue, recompute later).

Chunked prefill (lesson 16, ``schedule_chunked``): every step spends at most
``max_num_batched_tokens`` tokens. Running decodes go first (one token each), prompts
already being prefilled get the next chunk, then waiting requests are admitted with
whatever is left; a long prompt is split over as many steps as its chunks need.
"""

from collections import deque

from aios.config import Config
from aios.engine.block_manager import BlockManager
from aios.engine.sequence import Chunk, Sequence, SequenceStatus


class Scheduler:
    def __init__(self, config: Config, block_manager: BlockManager, eos_token_ids: set[int]):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = config.max_model_len
        self.block_manager = block_manager
        self.eos_token_ids = set(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue ``seq`` behind every waiting sequence of the same or a more urgent (lower) priority.

        With every priority at its default 0 this is ``waiting.append``: arrival order.
        """
        priority = getattr(seq, "priority", 0)
        position = len(self.waiting)
        while position and getattr(self.waiting[position - 1], "priority", 0) > priority:
            position -= 1
        self.waiting.insert(position, seq)

    def requeue_running(self) -> None:
        """Preempt every running sequence, keeping their order at the front of the waiting queue."""
        while self.running:
            self.preempt(self.running.pop())

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> tuple[list[Sequence], bool]:
        """Pick the next batch. Returns (sequences, is_prefill).

        Prefill first: admit waiting sequences in queue order (arrival order, or priority: see ``add``;
        they become RUNNING and get their blocks) while the running count stays <= max_num_seqs, the prefill's tokens
        <= max_num_batched_tokens and the blocks can be allocated; stop at the first one that
        does not fit (no overtaking). If nobody was admitted, decode: every running sequence
        gets room for one more token, preempting the newest running sequences while blocks
        run short. Returns ([], False) when nothing can run.
        """
        # BEGIN SOLUTION lesson8
        # Hint: admit from the front of `waiting` until a limit is hit; stop at the first one that does not fit.
        scheduled, num_tokens = [], 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if num_tokens + len(seq) > self.max_num_batched_tokens or not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            num_tokens += len(seq) - seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(self.waiting.popleft())
            scheduled.append(seq)
        if scheduled:
            return scheduled, True
        # Hint: decode: every running sequence needs room for one more token; make room by preempting the newest.
        while self.running:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.may_append(seq)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled, False
        # END SOLUTION

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and put it back at the front of the waiting queue."""
        # BEGIN SOLUTION lesson8
        seq.status = SequenceStatus.WAITING
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        # END SOLUTION

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """Append each new token; finish sequences that hit EOS, max_tokens or max_model_len.

        Returns the sequences that finished this step (their blocks are already freed).
        """
        # BEGIN SOLUTION lesson8
        finished = []
        for seq, token_id in zip(seqs, token_ids):
            seq.append_token(token_id)
            params = seq.sampling_params
            if not params.ignore_eos and token_id in self.eos_token_ids:
                seq.finish_reason = "stop"
            elif seq.num_completion_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
                seq.finish_reason = "length"
            else:
                continue
            seq.status = SequenceStatus.FINISHED
            self.block_manager.deallocate(seq)
            self.running.remove(seq)
            finished.append(seq)
        return finished
        # END SOLUTION

    # ------------------------------------------------------------------ chunked prefill (lesson 16)

    def schedule_chunked(self) -> list[Chunk]:
        """Pick the next step's chunks within the token budget, decodes first.

        1. Decodes: every running sequence with one token left to compute (its newest) gets a
           chunk of one, oldest first, with room for that token, preempting the newest running
           sequences while blocks run short (as ``schedule`` does).
        2. Prefills in progress: the running sequences with more tokens left get the next chunk,
           ``min(tokens left, budget left)``, oldest first.
        3. Admissions: while budget is left and running < max_num_seqs, admit from the front of
           ``waiting`` (``allocate_chunked``; it starts at its cached prefix) and give it its first
           chunk; stop at the first one whose blocks cannot be allocated (no overtaking).

        Every prefill chunk registers the blocks it fills (``cache_full_blocks``). The chunks'
        tokens add up to at most ``max_num_batched_tokens`` (Config keeps max_num_seqs <= the
        budget, so the decodes always fit). Returns [] when nothing can run.
        """
        # BEGIN SOLUTION lesson16
        # Hint: a sequence's tokens left to compute are len(seq) - seq.num_computed_tokens; a decode has exactly one.
        budget, chunks = self.max_num_batched_tokens, []
        for seq in [s for s in self.running if len(s) - s.num_computed_tokens == 1]:
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted below to make room for an older one
            while not self.block_manager.can_append(seq):
                victim = self.running.pop()
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.may_append(seq)
                chunks.append(Chunk(seq, 1))
                budget -= 1
        # Hint: then the prompts already started, then new ones: a prefill chunk takes what the budget has left.
        for seq in self.running:
            left = len(seq) - seq.num_computed_tokens
            if left > 1 and budget > 0:
                chunks.append(self._prefill_chunk(seq, min(left, budget)))
                budget -= chunks[-1].num_tokens
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate_chunked(seq)
            seq.num_computed_tokens = seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(self.waiting.popleft())
            chunks.append(self._prefill_chunk(seq, min(len(seq) - seq.num_computed_tokens, budget)))
            budget -= chunks[-1].num_tokens
        return chunks
        # END SOLUTION

    def _prefill_chunk(self, seq: Sequence, num_tokens: int) -> Chunk:
        """The chunk of ``num_tokens`` tokens after ``seq``'s computed ones; its full blocks become findable."""
        self.block_manager.cache_full_blocks(seq, seq.num_computed_tokens + num_tokens)
        return Chunk(seq, num_tokens)

    def postprocess_chunks(self, chunks: list[Chunk], token_ids: list[int]) -> list[Sequence]:
        """After a chunked step: record each chunk as computed, then append and finish as ``postprocess`` does.

        ``token_ids`` has one sampled token per chunk; only a chunk that reached the end of its
        sequence (``is_last``) keeps it, the others' were sampled from an unfinished prompt.
        Returns the sequences that finished this step.
        """
        # BEGIN SOLUTION lesson16
        done, new_tokens = [], []
        for chunk, token_id in zip(chunks, token_ids):
            chunk.seq.num_computed_tokens = chunk.end
            if chunk.is_last:
                done.append(chunk.seq)
                new_tokens.append(token_id)
        return self.postprocess(done, new_tokens)
        # END SOLUTION

    def abort(self, seq_id: int) -> Sequence | None:
        """Remove the sequence ``seq_id`` from the waiting or running queue and free its KV blocks.

        The sequence ends FINISHED with finish_reason "abort". Returns it, or None when no
        waiting or running sequence has that id (it finished already, or never existed).
        """
        # BEGIN SOLUTION lesson15
        # Hint: look in both queues; only a running sequence holds blocks, but deallocating is safe either way.
        for queue in (self.waiting, self.running):
            seq = next((s for s in queue if s.seq_id == seq_id), None)
            if seq is not None:
                queue.remove(seq)
                self.block_manager.deallocate(seq)
                seq.status = SequenceStatus.FINISHED
                seq.finish_reason = "abort"
                return seq
        return None
        # END SOLUTION
