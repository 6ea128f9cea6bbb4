"""Lesson 17: a Hypothesis state machine adds, steps and aborts requests on the overlapped engine and checks that
a sequence finished at step t never receives a token of step t+1, and that every answer is the synchronous one."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

OPTIONS = [
    {"num_kvcache_blocks": 24},
    {"num_kvcache_blocks": 24, "enable_chunked_prefill": True, "max_num_batched_tokens": 10, "max_num_seqs": 4},
]


@pytest.mark.hint(5)
@pytest.mark.parametrize("options", OPTIONS, ids=["prefill-first", "chunked"])
def test_overlap_state_machine(pair, prompts, greedy, stop_ids, options):
    """Random adds, steps and aborts (tight KV cache, prefix caching, stop ids): finished sequences never change,
    nothing exceeds max_tokens, aborted answers are prefixes and all others equal the synchronous loop's."""
    from aios.engine.async_loop import PLACEHOLDER

    sync, llm = pair(**options)
    stops = stop_ids(sync, prompts(4, seed=20), greedy(16))
    for engine in (sync, llm):
        engine.scheduler.eos_token_ids = set(stops)

    class Overlap(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.seqs, self.done, self.aborted = [], {}, set()

        @rule(length=st.integers(1, 30), max_tokens=st.integers(1, 16), ignore_eos=st.booleans(),
              seed=st.integers(0, 10**6))
        def add(self, length, max_tokens, ignore_eos, seed):
            prompt = prompts(1, seed=seed, lengths=(length, length))[0]
            self.seqs.append((prompt, greedy(max_tokens, ignore_eos=ignore_eos),
                              llm.add_request(prompt, greedy(max_tokens, ignore_eos=ignore_eos))))

        @precondition(lambda self: self.seqs)
        @rule(steps=st.integers(1, 4))
        def step(self, steps):
            for _ in range(steps):
                if llm.is_finished():
                    return
                finished, _ = llm.step()
                for seq in finished:
                    assert seq.seq_id not in self.done, "a sequence was returned finished twice"
                    self.done[seq.seq_id] = list(seq.token_ids)

        @precondition(lambda self: self.seqs)
        @rule(data=st.data())
        def abort(self, data):
            _, _, seq = data.draw(st.sampled_from(self.seqs))
            if llm.abort(seq.seq_id):
                self.aborted.add(seq.seq_id)
                self.done[seq.seq_id] = list(seq.token_ids)

        @invariant()
        def finished_sequences_never_change(self):
            for _, params, seq in self.seqs:
                tokens = seq.token_ids
                assert PLACEHOLDER not in tokens, "a placeholder is visible between steps"
                assert len(tokens) - seq.num_prompt_tokens <= params.max_tokens, "more tokens than max_tokens"
                if seq.seq_id in self.done:
                    assert tokens == self.done[seq.seq_id], "a finished sequence received a token after it finished"

        def teardown(self):
            for _ in range(2000):
                if llm.is_finished():
                    break
                llm.step()
            assert llm.is_finished(), "the engine did not finish"
            assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks, "blocks were left allocated"
            if not self.seqs:
                return
            expected = sync.generate([p for p, _, _ in self.seqs], [sp for _, sp, _ in self.seqs], use_tqdm=False)
            for (_, _, seq), want in zip(self.seqs, expected):
                if seq.seq_id in self.aborted:
                    assert seq.completion_token_ids == want["token_ids"][: seq.num_completion_tokens]
                else:
                    assert (seq.completion_token_ids, seq.finish_reason) == (want["token_ids"], want["finish_reason"])

    try:
        run_state_machine_as_test(Overlap, settings=settings(
            max_examples=8, stateful_step_count=14, deadline=None, derandomize=True,
            suppress_health_check=list(HealthCheck)))
    finally:
        for engine in (sync, llm):
            engine.scheduler.eos_token_ids = set(engine.eos_token_ids)
