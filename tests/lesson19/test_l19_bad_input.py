"""Lesson 19: speculative configurations the engine cannot work with are refused clearly."""

import re

import pytest

README = r"exercises/lesson19/README\.md, 'Configuring speculation'"


def refused(make_llm, spec, match, error=ValueError, **options):
    with pytest.raises(error, match=match) as caught:
        make_llm(speculative_config=spec, **options)
    assert re.search(README, str(caught.value)), "the error should point to the README section"


@pytest.mark.hint(5)
@pytest.mark.parametrize("k", [0, -2, 1.5, None, True])
def test_fewer_than_one_speculative_token_is_refused(make_llm, k):
    """num_speculative_tokens must be an integer >= 1."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": k}, "num_speculative_tokens")


@pytest.mark.hint(5)
def test_an_unknown_method_or_key_is_refused(make_llm):
    """method must be 'ngram' or a draft model; unknown keys and the wrong kind of value are named."""
    refused(make_llm, {"method": "eagle", "num_speculative_tokens": 2}, "method")
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "lookahead": 3}, "lookahead")
    refused(make_llm, "ngram", "dict")
    refused(make_llm, {"num_speculative_tokens": 2}, "method")


@pytest.mark.hint(5)
def test_bad_lookup_sizes_are_refused(make_llm):
    """prompt_lookup_min >= 1 and prompt_lookup_max >= prompt_lookup_min; they belong to n-gram lookup only."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 0}, "prompt_lookup_min")
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3,
                       "prompt_lookup_max": 2}, "prompt_lookup_max")


@pytest.mark.hint(6)
def test_a_missing_draft_folder_is_refused(make_llm, tmp_path):
    """A draft path that does not exist is a FileNotFoundError naming it."""
    refused(make_llm, {"model": str(tmp_path / "nowhere"), "num_speculative_tokens": 2}, "nowhere",
            error=FileNotFoundError)


@pytest.mark.hint(6)
def test_a_draft_with_another_vocabulary_or_tokenizer_is_refused(make_llm):
    """The draft must share the target's vocabulary size and its tokenizer."""
    from aios.fixtures import cached_model

    other_vocab = cached_model("tiny", seed=3, vocab_size=640)
    refused(make_llm, {"model": str(other_vocab), "num_speculative_tokens": 2}, "vocab_size")
    other_tokenizer = cached_model("small", seed=3, vocab_size=512, num_hidden_layers=1)
    refused(make_llm, {"model": str(other_tokenizer), "num_speculative_tokens": 2}, "tokenizer")


@pytest.mark.hint(5)
def test_tensor_parallelism_is_refused(make_llm):
    """Speculation runs in one process: tensor_parallel_size > 1 is refused before any worker starts."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2}, "tensor_parallel_size",
            tensor_parallel_size=2)
