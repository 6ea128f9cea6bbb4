"""The draft-model proposer: a smaller Qwen3 with the target's tokenizer guesses k tokens, one decode step each.

KV cache: the draft has its own paged KV cache (its own layers and heads) with exactly as
many blocks as the target's, and it is indexed by the *target's* block tables. One
BlockManager serves both: whatever block the target writes a token's K/V into, the draft
writes its own K/V for that token into the same block of its cache. So prefix caching,
preemption and rollback need nothing new for the draft: a block reused from the prefix
cache holds both models' K/V, a released block holds neither that anyone reads.

    target cache   block 7: [K/V of target for tokens 32..47]
    draft cache    block 7: [K/V of draft  for tokens 32..47]      same block table, two caches

The draft must compute every token the target computes. Prefill steps: it runs the same
chunks (``observe``). Speculative steps: it first catches up on the tokens it has not seen
(the newest token, and after a fully accepted proposal the last proposal, which it proposed
but never fed back), which gives its first proposal; then k - 1 decode steps, each feeding
back its previous proposal. ``state`` remembers, per sequence, how many leading tokens have
draft K/V, and for which block table (a preempted sequence gets a new one and starts over).
"""

from __future__ import annotations

import torch

from aios.spec.rejection import DRAFT_SALT, position_noise, sample_from, target_probabilities
from aios.spec.view import SpanView, decode_rows, fits_decode_graphs
from aios.utils.context import using_context


class DraftProposer:
    """Proposes with a draft checkpoint; ``runner`` is a ModelRunner of the draft over a cache like the target's."""

    method = "draft_model"

    def __init__(self, spec, engine_config):
        from aios.config import Config
        from aios.engine.model_runner import ModelRunner

        self.k = spec.num_speculative_tokens
        c = engine_config
        self.config = Config(
            spec.model, max_num_seqs=c.max_num_seqs, max_num_batched_tokens=c.max_num_batched_tokens,
            max_model_len=c.max_model_len, dtype=c.dtype, device=c.device, enforce_eager=c.enforce_eager,
            compile_elementwise=c.compile_elementwise, num_kvcache_blocks=c.num_kvcache_blocks,
            kvcache_block_size=c.kvcache_block_size, enable_prefix_caching=False,
            enable_chunked_prefill=c.enable_chunked_prefill, attention_backend=c.attention_backend,
            fused_layers=c.fused_layers, load_format=c.load_format, async_scheduling=False,
        )
        self.runner = ModelRunner(self.config)
        self.state: dict[int, tuple[list[int], int]] = {}  # seq_id -> (its block table, tokens with draft K/V)
        self.pending: dict[int, int] = {}  # seq_id -> tokens with draft K/V after the last propose()

    # ------------------------------------------------------------------ keeping the draft's cache in step

    def _start(self, seq, view_start: int) -> int:
        """Where the draft's next forward of ``seq`` starts: what it has computed, or the target's start."""
        table, computed = self.state.get(seq.seq_id, (None, 0))
        return computed if table is seq.block_table and computed <= view_start else view_start

    @torch.inference_mode()
    def _forward(self, views: list[SpanView], logits: bool = True) -> torch.Tensor | None:
        """One varlen forward of the draft over ``views`` (K/V written); logits [len(views), V] of their last tokens."""
        runner = self.runner
        num_rows = sum(len(view) - view.num_cached_tokens for view in views)
        if logits and fits_decode_graphs(runner, num_rows):  # a GPU: replay a decode graph (see view.DecodeRow)
            ends = torch.tensor([len(v) - v.num_cached_tokens for v in views], device=runner.device).cumsum(0) - 1
            return runner.run_model(*runner.prepare_decode(decode_rows(views)))[ends]
        input_ids, positions, context = runner.prepare_prefill(views)
        with using_context(context):
            hidden = runner.model(input_ids, positions)
        if not logits:
            return None
        return runner.model.compute_logits(hidden[context.cu_seqlens_q[1:].long() - 1])

    def observe(self, views) -> None:
        """A prefill step of the target ran ``views`` (sequences or lesson 16's chunks): compute the same tokens."""
        spans = []
        for view in views:
            seq = getattr(view, "seq", view)
            spans.append(SpanView(seq, self._start(seq, view.num_cached_tokens), view.token_ids[: len(view)]))
        self._forward(spans, logits=False)
        for span in spans:
            self.state[span.seq_id] = (span.seq.block_table, len(span))

    # ------------------------------------------------------------------ proposing

    def _sample(self, logits: torch.Tensor, views: list[SpanView], need_probs: bool):
        """Each row's draft token (greedy rows: argmax) and, when asked, the distribution q it came from."""
        if not need_probs:
            return logits.argmax(dim=-1), None
        params = [view.sampling_params for view in views]
        probs = target_probabilities(logits, params)
        noise = position_noise(params, [view.num_completion_tokens for view in views], probs.shape[-1],
                               probs.device, salt=DRAFT_SALT)
        return sample_from(probs, noise), probs

    def propose(self, seqs, budgets: list[int]) -> tuple[list[list[int]], torch.Tensor | None]:
        """Up to ``budgets[b]`` draft tokens per sequence (its block table covers ``len(seq) + budgets[b]``).

        Returns (proposals, draft_probs): draft_probs is [B, K, V] with K = max(budgets) (q of every
        proposal; rows past a sequence's proposals are padding), or None when every request is greedy.
        Every sequence runs the catch-up pass, even with a budget of 0: the draft's K/V of its newest
        token must be written in the step that writes the target's.
        """
        # Hint: pass 1: one varlen forward over each sequence's tokens the draft has not computed yet.
        # Hint: then one decode step per further proposal, feeding back the previous proposal.
        raise NotImplementedError("Lesson 19: implement DraftProposer.propose in aios/spec/draft.py — see exercises/lesson19/README.md, 'What to implement'")

    def num_valid_tokens(self, seq, num_final_tokens: int) -> int:
        """After verification: the leading tokens of ``seq`` with draft K/V of *final* tokens (remembered)."""
        valid = min(self.pending.pop(seq.seq_id, 0), num_final_tokens)
        self.state[seq.seq_id] = (seq.block_table, valid)
        return valid

    def forget(self, live_seq_ids) -> None:
        """Drop the state of sequences no longer running."""
        for seq_id in [s for s in self.state if s not in live_seq_ids]:
            del self.state[seq_id]
