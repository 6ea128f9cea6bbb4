"""Lesson 16: token budgets the engine cannot work with are refused clearly; the ones it can are served."""

import re

import pytest

README = r"exercises/lesson16/README\.md, 'The token budget'"


def serves_a_prompt_longer_than_the_budget(make_llm, greedy, random_prompt, idle, finished, **options):
    """A chunked engine with these options serves a prompt longer than its budget and ends idle."""
    llm = make_llm(**options)
    seq = llm.add_request(random_prompt(40, seed=4), greedy(3))
    finished(llm, 200)
    assert seq.num_completion_tokens == 3
    idle(llm)


@pytest.mark.hint(5)
@pytest.mark.parametrize("budget", [0, -5])
def test_a_budget_below_one_token_is_refused(make_llm, greedy, random_prompt, idle, finished, budget):
    """max_num_batched_tokens < 1 is a ValueError naming the option and the README section; a budget of 4 works."""
    with pytest.raises(ValueError, match="max_num_batched_tokens") as error:
        make_llm(max_num_batched_tokens=budget, max_num_seqs=1)
    assert re.search(README, str(error.value)), "the error should point to the README section"
    serves_a_prompt_longer_than_the_budget(make_llm, greedy, random_prompt, idle, finished, max_num_batched_tokens=4, max_num_seqs=2)


@pytest.mark.hint(5)
def test_without_chunking_the_budget_must_hold_the_longest_prompt(make_llm, greedy, random_prompt, idle, finished):
    """Chunking off, a budget below max_model_len is refused, pointing to enable_chunked_prefill; chunking on, it is served."""
    with pytest.raises(ValueError, match="enable_chunked_prefill=True") as error:
        make_llm(enable_chunked_prefill=False, max_num_batched_tokens=32, max_model_len=128)
    assert re.search(README, str(error.value)), "the error should point to the README section"
    serves_a_prompt_longer_than_the_budget(make_llm, greedy, random_prompt, idle, finished, max_num_batched_tokens=32,
                                           max_num_seqs=4)


@pytest.mark.hint(5)
def test_with_chunking_every_running_sequence_must_fit_the_budget(make_llm, greedy, random_prompt, idle, finished):
    """Chunking on, max_num_seqs above the budget is refused (a step could not decode them all); equal is fine."""
    with pytest.raises(ValueError, match="max_num_seqs") as error:
        make_llm(max_num_batched_tokens=8, max_num_seqs=9)
    assert re.search(README, str(error.value))
    serves_a_prompt_longer_than_the_budget(make_llm, greedy, random_prompt, idle, finished, max_num_batched_tokens=8,
                                           max_num_seqs=8)
