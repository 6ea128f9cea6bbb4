"""Lesson 17: the overlapped loop generates exactly what the synchronous one does, one step later on the host."""

import pytest

HELPERS = __file__.rsplit("/", 1)[0] + "/l17_helpers.py"


def same_as_sync(pair, served, prompts, params, **options):
    """Both loops on the same requests: the results, and the overlapped engine (for more checks)."""
    sync, overlapped = pair(**options)
    expected = served(sync, prompts, params)
    got = served(overlapped, prompts, params)
    for i, (want, have) in enumerate(zip(expected, got)):
        assert have == want, (f"request {i}: the overlapped loop gave {have}, the synchronous one {want}: "
                              "placeholders filled from the wrong row, or a stop check on the wrong token?")
    return overlapped


@pytest.mark.hint(4)
@pytest.mark.parametrize("chunked", [False, True], ids=["prefill-first", "chunked"])
@pytest.mark.parametrize("prefix_caching", [False, True], ids=["no-cache", "prefix-cache"])
def test_same_tokens_as_the_synchronous_loop(pair, served, prompts, greedy, idle, chunked, prefix_caching):
    """Greedy requests of mixed lengths (max_tokens 1 to 20): token for token what async_scheduling=False gives."""
    options = {"enable_chunked_prefill": chunked, "enable_prefix_caching": prefix_caching}
    if chunked:
        options.update(max_num_batched_tokens=16, max_num_seqs=4)
    batch = prompts(6, seed=1)
    params = [greedy(n) for n in (1, 7, 20, 2, 12, 5)]
    idle(same_as_sync(pair, served, batch, params, **options))


@pytest.mark.hint(5)
def test_stop_tokens_and_ignore_eos(pair, served, prompts, greedy, stop_ids, idle):
    """With end-of-sequence ids the model really produces, stops happen mid-way; ignore_eos requests run on."""
    batch = prompts(6, seed=2)
    sync, overlapped = pair()
    stops = stop_ids(sync, batch, greedy(24))
    for llm in (sync, overlapped):
        llm.scheduler.eos_token_ids = set(stops)
    try:
        params = [greedy(24, ignore_eos=i % 3 == 0) for i in range(len(batch))]
        same_as_sync(pair, served, batch, params)
        reasons = [r for _, r in served(sync, batch, params)]
        assert "stop" in reasons and "length" in reasons, "the workload should stop some requests early"
    finally:
        for llm in (sync, overlapped):
            llm.scheduler.eos_token_ids = set(llm.eos_token_ids)
    idle(overlapped)


@pytest.mark.hint(3)
def test_preemption_under_a_tight_kv_budget(pair, served, prompts, greedy, idle):
    """A KV cache too small for every request at once: sequences are preempted and recomputed, tokens unchanged."""
    batch = prompts(6, seed=3, lengths=(10, 30))
    overlapped = same_as_sync(pair, served, batch, [greedy(24)] * 6, num_kvcache_blocks=14)
    assert overlapped.scheduler.num_preemptions > 0, "the test needs preemptions to mean something"
    idle(overlapped)


@pytest.mark.hint(3)
def test_chunked_prefill_with_preemption_and_prefix_caching(pair, served, prompts, greedy, idle):
    """Chunks, preemption and prefix caching together (prompts repeating a prefix), tokens unchanged."""
    base = prompts(1, seed=4, lengths=(24, 24))[0]
    batch = [base + p for p in prompts(5, seed=5, lengths=(2, 20))]
    overlapped = same_as_sync(pair, served, batch, [greedy(n) for n in (16, 3, 22, 9, 14)], num_kvcache_blocks=16,
                              enable_chunked_prefill=True, max_num_batched_tokens=12, max_num_seqs=4)
    idle(overlapped)


@pytest.mark.hint(4)
def test_seeded_sampling_is_the_same(pair, served, prompts):
    """Seeded sampling (temperature, top-k, top-p) draws the same tokens in both loops."""
    from aios import SamplingParams

    params = [SamplingParams(temperature=0.9, top_k=k, top_p=p, seed=s, max_tokens=10, ignore_eos=True)
              for s, (k, p) in enumerate([(-1, 1.0), (20, 1.0), (-1, 0.8), (5, 0.9)])]
    same_as_sync(pair, served, prompts(4, seed=6), params)


@pytest.mark.hint(4)
def test_tokens_reach_the_host_one_step_later(make_llm, random_prompt, greedy, finished, idle):
    """The overlapped loop: a step launches the next batch and returns the previous one's results, so a new
    request has no token after the first step (its prefill is in flight) and one after the second."""
    llm = make_llm(async_scheduling=True)
    seq = llm.add_request(random_prompt(9, seed=7), greedy(3))
    llm.step()
    assert seq.num_completion_tokens == 0, "after one step the prefill's token is still in flight"
    llm.step()
    assert seq.num_completion_tokens == 1
    steps = finished(llm, 20)
    assert seq.num_completion_tokens == 3
    assert [s.seq_id for f, _ in steps for s in f] == [seq.seq_id]
    idle(llm)


@pytest.mark.hint(1)
def test_sequences_finishing_by_length_sit_the_next_step_out(make_llm, prompts, greedy, finished, idle):
    """Requests of max_tokens=1 finish with their prefill's token: no decode step is ever launched for them."""
    llm = make_llm(async_scheduling=True)
    seqs = [llm.add_request(p, greedy(1)) for p in prompts(3, seed=8)]
    steps = finished(llm, 20)
    assert all(n >= 0 for _, n in steps), (f"a decode step ran (step results {steps}): a sequence whose token in "
                                           "flight ends it by length must sit the next step out")
    assert all(seq.num_completion_tokens == 1 and seq.finish_reason == "length" for seq in seqs)
    idle(llm)


@pytest.mark.hint(4)
def test_the_next_step_is_launched_before_the_previous_tokens_are_read(make_llm, prompts, greedy, learner_helper):
    """Overlap itself: in every step, the forward of step t+1 starts before the host waits for step t's tokens."""
    llm = make_llm(async_scheduling=True)
    log = learner_helper(HELPERS).step_log(llm, prompts(3, seed=9), 6)
    calls = [call for step in log for call in step]
    assert calls.count("wait") >= 5, f"step t's tokens must be read through InFlightStep.token_ids(): {log}"
    for step in log[1:-1]:
        assert step == ["launch", "wait"], (f"each step must launch the next batch, then wait for the previous "
                                            f"tokens; the calls of each step were {log}")


@pytest.mark.hint(5)
def test_abort_mid_generation(pair, served, make_llm, prompts, greedy, idle):
    """An aborted request keeps the tokens it had when aborted (a prefix of the full answer) and gets no more;
    its token in flight is dropped and its blocks freed."""
    batch = prompts(3, seed=10)
    full = served(make_llm(async_scheduling=False), batch, greedy(16))
    llm = make_llm(async_scheduling=True)
    seqs = [llm.add_request(p, greedy(16)) for p in batch]
    for _ in range(5):
        llm.step()
    assert llm.abort(seqs[1].seq_id)
    kept = list(seqs[1].token_ids)
    for _ in range(200):
        if llm.is_finished():
            break
        llm.step()
        assert seqs[1].token_ids == kept, "a token reached a request after it was aborted"
    assert seqs[1].finish_reason == "abort"
    assert seqs[1].completion_token_ids == full[1][0][: seqs[1].num_completion_tokens]
    assert [s.completion_token_ids for s in (seqs[0], seqs[2])] == [full[0][0], full[2][0]]
    idle(llm)


@pytest.mark.hint(5)
def test_a_finished_sequence_never_changes(make_llm, prompts, greedy, stop_ids):
    """Once a step returns a sequence as finished, its tokens never change again, and no placeholder is ever seen
    between steps."""
    from aios.engine.async_loop import PLACEHOLDER

    llm = make_llm(async_scheduling=True, num_kvcache_blocks=20)
    batch = prompts(6, seed=11)
    stops = stop_ids(make_llm(async_scheduling=False), batch, greedy(20))
    llm.scheduler.eos_token_ids = set(stops)
    try:
        seqs = [llm.add_request(p, greedy(20, ignore_eos=False)) for p in batch]
        done = {}
        for _ in range(300):
            if llm.is_finished():
                break
            finished_now, _ = llm.step()
            for seq in finished_now:
                done[seq.seq_id] = list(seq.token_ids)
            for seq in seqs:
                assert PLACEHOLDER not in seq.token_ids, "a placeholder is visible after step() returned"
                if seq.seq_id in done:
                    assert seq.token_ids == done[seq.seq_id], "a finished sequence got another token"
        assert len(done) == len(seqs)
    finally:
        llm.scheduler.eos_token_ids = set(llm.eos_token_ids)


@pytest.mark.hint(5)
def test_resolve_finishes_a_sequence_that_was_preempted_meanwhile(make_llm, random_prompt, greedy):
    """resolve_tokens: a sequence preempted while its token was in flight (so it waits, with a placeholder) and whose
    token is EOS finishes and leaves the waiting queue; one whose token is not EOS gets the token and stays."""
    from aios.engine.async_loop import PLACEHOLDER, Pending, resolve_tokens

    llm = make_llm(async_scheduling=True)
    eos = min(llm.eos_token_ids)
    stopping = llm.add_request(random_prompt(6, seed=12), greedy(8, ignore_eos=False))
    going_on = llm.add_request(random_prompt(5, seed=13), greedy(8, ignore_eos=False))
    pending = {}
    for row, seq in enumerate((stopping, going_on)):
        seq.append_token(PLACEHOLDER)
        pending[seq.seq_id] = Pending(seq, len(seq) - 1, row)
    finished = resolve_tokens(llm, pending, [eos, 42])
    assert [seq.seq_id for seq in finished] == [stopping.seq_id]
    assert stopping.finish_reason == "stop" and stopping.token_ids[-1] == eos
    assert going_on.token_ids[-1] == 42 and not going_on.is_finished
    assert [seq.seq_id for seq in llm.scheduler.waiting] == [going_on.seq_id], (
        "a finished sequence must leave whichever queue holds it, waiting included")
    assert llm.abort(going_on.seq_id)
    assert llm.is_finished()
