"""Speculative decoding in the engine loop (lesson 19): propose -> verify -> accept / roll back.

    schedule()                       the scheduler's decode step (room for the newest token)
      │
    reserve_speculative_slots        block table grows to len(seq) + k        (spec/rollback.py)
      │
    proposer.propose                 n-gram lookup or draft model: d_0 .. d_{k-1}
      │
    one target forward               tokens [newest, d_0 .. d_{k-1}] at positions L-1 .. L-1+k,
      │                              the varlen prefill path over the paged cache (a SpanView)
    greedy_verify / rejection_sample keep d_0 .. d_{n-1}, add the target's token   (spec/rejection.py)
      │
    accept_tokens                    append one by one: EOS, max_tokens, max_model_len stop early
      │
    rollback_speculative_slots       release blocks past len(seq); register full final blocks

Prefill steps (and lesson 16's mixed steps) run as before; a draft model computes the same
tokens beside the target (``observe``). Speculation needs the synchronous, single-process loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aios.spec.config import SpeculativeConfig
from aios.spec.rejection import (ACCEPT_SALT, greedy_verify, position_noise, rejection_sample,
                                 target_probabilities)
from aios.spec.rollback import reserve_speculative_slots, rollback_speculative_slots
from aios.spec.view import SpanView, decode_rows, fits_decode_graphs
from aios.utils.context import using_context


@dataclass
class SpecStats:
    """Acceptance counters since the engine started.

    num_steps:           speculative (verification) steps.
    num_drafts:          sequence-steps that verified at least one proposed token.
    num_draft_tokens:    tokens proposed.
    num_accepted_tokens: proposed tokens the target kept.
    num_emitted_tokens:  tokens verification steps produced (kept proposals + one target token per
                         sequence-step), before EOS / max_tokens cut them.
    """

    num_steps: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Share of proposed tokens kept (0 when nothing was proposed)."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a sequence gains per target forward that verified a proposal: 1 + accepted / drafts."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    def as_dict(self) -> dict:
        return {"num_steps": self.num_steps, "num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens, "num_emitted_tokens": self.num_emitted_tokens,
                "acceptance_rate": self.acceptance_rate, "mean_accepted_length": self.mean_accepted_length}


def make_proposer(spec: SpeculativeConfig, engine_config):
    if spec.method == "ngram":
        from aios.spec.ngram import NgramProposer

        return NgramProposer(spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max)
    from aios.spec.draft import DraftProposer

    return DraftProposer(spec, engine_config)


def make_speculator(engine_config) -> "SpeculativeDecoder | None":
    """The engine's speculative decoder, or None without ``speculative_config`` (build it after the model runner:
    a draft model's KV cache takes the target's block count)."""
    spec = engine_config.speculative_config
    return None if spec is None else SpeculativeDecoder(spec, make_proposer(spec, engine_config))


@torch.inference_mode()
def score_views(model_runner, views: list[SpanView]) -> torch.Tensor:
    """The target's logits at *every* token of ``views`` (not only each one's last): [sum of new tokens, V].

    One varlen pass of lesson 7's prefill path; on a GPU with captured decode graphs (lesson 11),
    when the tokens fit the largest graph, the same tokens as decode rows replaying a graph instead.
    """
    num_rows = sum(len(view) - view.num_cached_tokens for view in views)
    if fits_decode_graphs(model_runner, num_rows):
        return model_runner.run_model(*model_runner.prepare_decode(decode_rows(views)))
    input_ids, positions, context = model_runner.prepare_prefill(views)
    with using_context(context):
        hidden = model_runner.model(input_ids, positions)
    return model_runner.model.compute_logits(hidden)


class SpeculativeDecoder:
    """Runs the engine's steps when ``speculative_config`` is set; ``stats`` counts acceptance."""

    def __init__(self, spec: SpeculativeConfig, proposer):
        self.spec = spec
        self.k = spec.num_speculative_tokens
        self.proposer = proposer
        self.stats = SpecStats()

    # ------------------------------------------------------------------ the step

    def step(self, engine) -> tuple[list, int]:
        """One engine step: a prefill (or lesson 16's mixed) step as usual, a decode step speculatively."""
        scheduler, runner = engine.scheduler, engine.model_runner
        if engine.config.enable_chunked_prefill:
            chunks = scheduler.schedule_chunked()
            if not chunks:
                return [], 0
            if all(chunk.is_decode for chunk in chunks):
                return self.decode_step(engine, [chunk.seq for chunk in chunks])
            token_ids = runner.run(chunks, True)
            self.proposer.observe(chunks)
            return scheduler.postprocess_chunks(chunks, token_ids), sum(chunk.num_tokens for chunk in chunks)
        seqs, is_prefill = scheduler.schedule()
        if not seqs:
            return [], 0
        if not is_prefill:
            return self.decode_step(engine, seqs)
        num_tokens = sum(len(seq) - seq.num_cached_tokens for seq in seqs)
        token_ids = runner.run(seqs, True)
        self.proposer.observe(seqs)
        return scheduler.postprocess(seqs, token_ids), num_tokens

    def decode_step(self, engine, seqs: list) -> tuple[list, int]:
        """Propose, verify in one target forward, keep what the target accepts, roll back the rest.

        Returns (sequences that finished, -len(seqs): a decode step, as lesson 8 counts it).
        """
        block_manager = engine.block_manager
        budgets = [reserve_speculative_slots(block_manager, seq, self.speculation_budget(seq, engine.config))
                   for seq in seqs]
        proposals, draft_probs = self.proposer.propose(seqs, budgets)
        views = [SpanView(seq, len(seq) - 1, seq.token_ids + proposal) for seq, proposal in zip(seqs, proposals)]
        logits = score_views(engine.model_runner, views)
        emitted = self.verify(logits, seqs, proposals, draft_probs)
        self.stats.num_steps += 1
        finished = []
        for seq, proposal, tokens in zip(seqs, proposals, emitted):
            self.record(seq, len(proposal), len(tokens) - 1)
            num_final = len(seq) + len(tokens) - 1  # the newest token and the kept proposals now have K/V
            valid = self.proposer.num_valid_tokens(seq, num_final)
            if self.accept_tokens(engine.scheduler, seq, tokens):
                finished.append(seq)
                continue
            seq.num_computed_tokens = num_final
            rollback_speculative_slots(block_manager, seq, valid)
        self.proposer.forget({seq.seq_id for seq in engine.scheduler.running})
        return finished, -len(seqs)

    # ------------------------------------------------------------------ the parts

    def speculation_budget(self, seq, config) -> int:
        """How many tokens to propose for ``seq``: k, fewer when max_tokens or max_model_len is near.

        A step emits the kept proposals plus one token, so with n proposals ``seq`` may grow by
        n + 1: up to max_tokens completion tokens and max_model_len tokens in all. Never below 0.
        """
        # BEGIN SOLUTION lesson19
        params = seq.sampling_params
        left = min(params.max_tokens - seq.num_completion_tokens, config.max_model_len - len(seq))
        return max(0, min(self.k, left - 1))
        # END SOLUTION

    @staticmethod
    def accept_tokens(scheduler, seq, tokens: list[int]) -> bool:
        """Append the verified ``tokens`` to ``seq`` one at a time with lesson 8's ``postprocess``, stopping as
        soon as it finishes (EOS, max_tokens, max_model_len): no token after the stop is delivered.
        Returns whether ``seq`` finished (then its blocks are already free)."""
        # BEGIN SOLUTION lesson19
        for token in tokens:
            if scheduler.postprocess([seq], [token]):
                return True
        return False
        # END SOLUTION

    def verify(self, logits: torch.Tensor, seqs: list, proposals: list[list[int]],
               draft_probs: torch.Tensor | None) -> list[list[int]]:
        """Each sequence's emitted tokens (kept proposals, then the target's), from the flat logits of
        ``score_views``: sequence b's rows are its newest token and its proposals, in order."""
        device = logits.device
        counts = [len(p) for p in proposals]
        k = max(counts, default=0)
        starts, offset = [], 0
        for count in counts:
            starts.append(offset)
            offset += count + 1
        columns = torch.arange(k + 1)
        index = (torch.tensor(starts).unsqueeze(1) + torch.minimum(columns, torch.tensor(counts).unsqueeze(1)))
        index = index.to(device)
        num_draft = torch.tensor(counts, dtype=torch.int64, device=device)
        draft_tokens = torch.tensor([p + [0] * (k - len(p)) for p in proposals], dtype=torch.int64,
                                    device=device).reshape(len(seqs), k)
        if all(seq.sampling_params.is_greedy for seq in seqs):
            tokens, _ = greedy_verify(logits.argmax(dim=-1)[index], draft_tokens, num_draft)
        else:
            tokens = self._sample_verify(logits, seqs, index, draft_tokens, draft_probs, num_draft)
        return [[t for t in row if t >= 0] for row in tokens.tolist()]

    def _sample_verify(self, logits, seqs, index, draft_tokens, draft_probs, num_draft) -> torch.Tensor:
        """``rejection_sample`` with each request's distributions and its seeded noise (position j of sequence b
        is completion token ``num_completion_tokens + j``: the seed's noise for that index)."""
        batch, width = index.shape
        params = [seq.sampling_params for seq in seqs for _ in range(width)]
        steps = [seq.num_completion_tokens + j for seq in seqs for j in range(width)]
        flat = logits[index.reshape(-1)]
        probs = target_probabilities(flat, params).reshape(batch, width, -1)
        noise = position_noise(params, steps, probs.shape[-1], logits.device).reshape(batch, width, -1)
        k = width - 1
        accept_params = [seq.sampling_params for seq in seqs for _ in range(k)]
        accept_steps = [seq.num_completion_tokens + j for seq in seqs for j in range(k)]
        uniforms = torch.exp(-position_noise(accept_params, accept_steps, 1, logits.device, salt=ACCEPT_SALT))
        uniforms = uniforms.reshape(batch, k)
        if draft_probs is not None:
            draft_probs = draft_probs[:, :k]
        tokens, _ = rejection_sample(probs, draft_tokens, draft_probs, num_draft, uniforms, noise)
        return tokens

    def record(self, seq, num_proposed: int, num_accepted: int) -> None:
        """Count one sequence-step in ``stats`` and in the sequence's own counters (its output reports them)."""
        stats = self.stats
        stats.num_draft_tokens += num_proposed
        stats.num_accepted_tokens += num_accepted
        stats.num_emitted_tokens += num_accepted + 1
        stats.num_drafts += num_proposed > 0
        seq.spec_num_draft_tokens = getattr(seq, "spec_num_draft_tokens", 0) + num_proposed
        seq.spec_num_accepted_tokens = getattr(seq, "spec_num_accepted_tokens", 0) + num_accepted


def request_spec_stats(seq) -> dict:
    """A finished request's own acceptance counts (for its output)."""
    proposed = getattr(seq, "spec_num_draft_tokens", 0)
    accepted = getattr(seq, "spec_num_accepted_tokens", 0)
    return {"num_draft_tokens": proposed, "num_accepted_tokens": accepted,
            "acceptance_rate": accepted / proposed if proposed else 0.0}
