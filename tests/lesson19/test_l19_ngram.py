"""Lesson 19: the n-gram (prompt lookup) proposer on its own."""

import pytest

from aios.spec.ngram import propose_ngram


@pytest.mark.hint(1)
def test_proposes_what_followed_the_earlier_occurrence_of_the_ending():
    """The text ends in [3, 4], which occurred earlier followed by 5, 6, 7: those are the proposal (k of them)."""
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 3, 4]
    assert propose_ngram(tokens, k=3, min_n=1, max_n=2) == [5, 6, 7]
    assert propose_ngram(tokens, k=1, min_n=1, max_n=2) == [5]


@pytest.mark.hint(1)
def test_the_longest_matching_ending_wins():
    """[9, 3, 4] occurs earlier (followed by 50) and so does [3, 4] alone, more recently (followed by 60): the 3-gram wins."""
    tokens = [9, 3, 4, 50, 51, 3, 4, 60, 61, 9, 3, 4]
    assert propose_ngram(tokens, k=2, min_n=1, max_n=3) == [50, 51]
    assert propose_ngram(tokens, k=2, min_n=1, max_n=2) == [60, 61], "with n <= 2 the most recent [3, 4] wins"


@pytest.mark.hint(1)
def test_the_most_recent_occurrence_wins():
    """The ending [7] occurred three times before: the proposal follows the latest of them."""
    tokens = [7, 1, 1, 7, 2, 2, 7, 3, 3, 7]
    assert propose_ngram(tokens, k=2, min_n=1, max_n=1) == [3, 3]


@pytest.mark.hint(1)
def test_no_earlier_occurrence_proposes_nothing():
    """An ending that never occurred before (or a too short text, or min_n above every match) gives []."""
    assert propose_ngram([1, 2, 3, 4, 5], k=4, min_n=1, max_n=3) == []
    assert propose_ngram([5], k=4, min_n=1, max_n=3) == []
    assert propose_ngram([], k=4, min_n=1, max_n=3) == []
    assert propose_ngram([1, 2, 9, 2], k=4, min_n=2, max_n=3) == [], "only the 1-gram [2] matches, below min_n"
    assert propose_ngram([1, 2, 9, 2], k=1, min_n=1, max_n=3) == [9]


@pytest.mark.hint(1)
def test_past_the_end_the_proposal_copies_itself():
    """Near the end fewer than k tokens follow the match: the copy goes on from its own tokens (a loop continues)."""
    assert propose_ngram([4, 4], k=5, min_n=1, max_n=2) == [4, 4, 4, 4, 4], "the 1-gram [4] at 0: a loop of period 1"
    assert propose_ngram([1, 2, 1, 2], k=5, min_n=1, max_n=2) == [1, 2, 1, 2, 1], "[1, 2] at 0: period 2"
    assert propose_ngram([8, 8, 8, 8], k=2, min_n=1, max_n=3) == [8, 8]
    assert propose_ngram([1, 2, 9, 2], k=4, min_n=1, max_n=3) == [9, 2, 9, 2], "[2] at 1 is followed by 9, 2, then itself"


@pytest.mark.hint(1)
def test_max_n_longer_than_the_text_is_fine():
    """prompt_lookup_max larger than the text tries only the lengths that fit."""
    assert propose_ngram([3, 5, 3], k=3, min_n=1, max_n=10) == [5, 3, 5]
