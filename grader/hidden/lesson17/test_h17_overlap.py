"""Lesson 17 hidden tests: the overlapped loop against the synchronous one in the corners the visible tests skip."""

from pathlib import Path

import pytest

HELPERS = str(Path(__file__).resolve().parents[3] / "tests" / "lesson17" / "l17_helpers.py")


def both(pair, served, prompts, params, **options):
    sync, overlapped = pair(**options)
    expected, got = served(sync, prompts, params), served(overlapped, prompts, params)
    assert got == expected, "the overlapped loop's answers differ from the synchronous loop's"
    return overlapped


def test_max_model_len_stops(pair, served, prompts, greedy, idle):
    """Requests that run into max_model_len stop there ("length") exactly as in the synchronous loop."""
    batch = prompts(4, seed=30, lengths=(20, 38))
    overlapped = both(pair, served, batch, [greedy(30)] * 4, max_model_len=40)
    idle(overlapped)


def test_a_prompt_one_short_of_max_model_len_never_decodes(make_llm, random_prompt, greedy, finished, idle):
    """A prompt of max_model_len - 1 tokens gets one token from its prefill and sits every decode out."""
    llm = make_llm(async_scheduling=True, max_model_len=32)
    seq = llm.add_request(random_prompt(31, seed=31), greedy(10))
    steps = finished(llm, 10)
    assert all(n >= 0 for _, n in steps), f"a decode step was launched: {steps}"
    assert seq.num_completion_tokens == 1 and seq.finish_reason == "length"
    idle(llm)


def test_chunks_of_one_block_with_preemption(pair, served, prompts, greedy, idle):
    """Chunked prefill at a budget of one block (8 tokens), a tight cache and prefix caching: same answers."""
    base = prompts(1, seed=32, lengths=(17, 17))[0]
    batch = [base + p for p in prompts(5, seed=33, lengths=(1, 8))]
    overlapped = both(pair, served, batch, [greedy(n) for n in (24, 1, 30, 20, 26)], num_kvcache_blocks=9,
                      enable_chunked_prefill=True, max_num_batched_tokens=8, max_num_seqs=4)
    assert overlapped.scheduler.num_preemptions > 0
    idle(overlapped)


def test_prefix_cache_finds_blocks_that_decoding_completed(pair, served, random_prompt, greedy):
    """A block completed by a decode (registered while its last token was a placeholder) is found by content
    afterwards: a prompt repeating prompt + answer hits the same cached prefix as with the synchronous loop."""
    cached = []
    prompt = random_prompt(10, seed=34)
    for llm in pair():
        answer = served(llm, [prompt], [greedy(20)])[0][0]
        follow_up = llm.add_request(prompt + answer[:18] + [7], greedy(2))
        llm.step()
        cached.append(follow_up.num_cached_tokens)
        served(llm, [], [])
        while not llm.is_finished():
            llm.step()
    assert cached[0] == 24, f"the synchronous loop should reuse three blocks, got {cached[0]} tokens"
    assert cached[1] == cached[0], (f"the overlapped loop reused {cached[1]} cached tokens, the synchronous one "
                                    f"{cached[0]}: a block must not stay registered under a placeholder")


def test_a_failed_step_is_forgotten(make_llm, pair, served, prompts, greedy, learner_helper, idle):
    """A step that raises: forget_failed_step drops the step in flight and its placeholders; requeued requests are
    recomputed and answer as the synchronous loop does."""
    batch = prompts(4, seed=35)
    sync, llm = pair()
    expected = served(sync, batch, greedy(10))
    seqs = [llm.add_request(p, greedy(10)) for p in batch]
    for _ in range(4):
        llm.step()
    assert learner_helper(HELPERS).fail_one_step(llm) == "injected failure"
    llm.forget_failed_step()
    llm.requeue_running()
    assert all(-1 not in seq.token_ids for seq in seqs), "a placeholder survived the failed step"
    for _ in range(300):
        if llm.is_finished():
            break
        llm.step()
    assert [(s.completion_token_ids, s.finish_reason) for s in seqs] == expected
    idle(llm)


def test_pack_step_with_chunks():
    """pack_step takes lesson 16's Chunks: rows start at the chunk's start, the fix-up lands in the last chunk."""
    from aios import SamplingParams
    from aios.engine.async_loop import InFlightStep, PackedStep, append_placeholders, pack_step
    from aios.engine.sequence import Chunk, Sequence
    import torch

    seq = Sequence(list(range(1, 11)), SamplingParams(temperature=0.0), 4)
    other = Sequence([20, 21, 22], SamplingParams(temperature=0.0), 4)
    pending = append_placeholders(InFlightStep([(seq, 3)], torch.zeros(4, dtype=torch.long),
                                               torch.zeros(4, dtype=torch.long)))
    seq.block_table, other.block_table = [4, 1, 6], [2]
    seq.num_computed_tokens, other.num_computed_tokens = 6, 0
    packed = pack_step([Chunk(other, 2), Chunk(seq, 5)], True, pending, 4)
    values = packed.buffer.tolist()
    fields, at = {}, 0
    for name in PackedStep.FIELDS:
        fields[name] = values[at: at + packed.sizes[name]]
        at += packed.sizes[name]
    assert fields["positions"] == [0, 1, 6, 7, 8, 9, 10]
    assert fields["slot_mapping"] == [8, 9, 6, 7, 24, 25, 26]
    assert fields["cu_seqlens_q"] == [0, 2, 7] and fields["context_lens"] == [2, 11]
    assert (fields["fix_dst"], fields["fix_src"]) == ([6], [3])


@pytest.mark.parametrize("options", [
    {"enable_prefix_caching": False, "num_kvcache_blocks": 18, "max_model_len": 48},
    {"num_kvcache_blocks": 20, "enable_chunked_prefill": True, "max_num_batched_tokens": 8, "max_num_seqs": 3},
], ids=["no-cache-short-context", "chunked-budget-8"])
def test_overlap_state_machine_other_limits(pair, prompts, greedy, stop_ids, options):
    """The visible state machine with other limits: no prefix cache and max_model_len 48; a budget of one block."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "tests" / "lesson17" / "test_l17_state_machine.py"
    spec = importlib.util.spec_from_file_location("l17_state_machine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_overlap_state_machine(pair, prompts, greedy, stop_ids, options)
