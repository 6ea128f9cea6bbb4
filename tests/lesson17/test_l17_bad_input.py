"""Lesson 17: the async_scheduling switch: what it accepts, what it refuses clearly, and when it falls back."""

import re

import pytest

README = r"exercises/lesson17/README\.md, 'Turning it on'"


def serves_with_overlap(make_llm, random_prompt, greedy, finished, idle):
    """The overlapped engine serves a request to its end (so a test of the switch also needs lesson 17's code)."""
    llm = make_llm(async_scheduling=True)
    seq = llm.add_request(random_prompt(7, seed=40), greedy(3))
    finished(llm, 50)
    assert seq.num_completion_tokens == 3
    idle(llm)


@pytest.mark.hint(6)
@pytest.mark.parametrize("value", ["yes", 1, 0, "auto"])
def test_a_value_other_than_true_false_or_none_is_refused(make_llm, random_prompt, greedy, finished, idle, value):
    """async_scheduling must be True, False or None: anything else is a ValueError naming it and the README section;
    True serves."""
    with pytest.raises(ValueError, match="async_scheduling") as error:
        make_llm(async_scheduling=value)
    assert re.search(README, str(error.value)), "the error should point to the README section"
    serves_with_overlap(make_llm, random_prompt, greedy, finished, idle)


@pytest.mark.hint(6)
def test_none_means_on_for_cuda_and_off_on_the_cpu(make_llm, random_prompt, greedy, finished, idle):
    """The default (None) resolves to False on the CPU, and the engine then runs the synchronous loop;
    True builds the overlapped loop, which serves."""
    llm = make_llm(async_scheduling=None)
    assert llm.config.async_scheduling is False
    assert llm.async_loop is None
    assert make_llm(async_scheduling=True).async_loop is not None
    serves_with_overlap(make_llm, random_prompt, greedy, finished, idle)
