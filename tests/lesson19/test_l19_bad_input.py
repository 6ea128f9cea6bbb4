"""Lesson 19: speculative configurations the engine cannot work with are refused clearly."""

import re

import pytest

README = r"exercises/lesson19/README\.md, 'Configuring speculation'"


def refused(make_llm, spec, match, error=ValueError, **options):
    with pytest.raises(error, match=match) as caught:
        make_llm(speculative_config=spec, **options)
    assert re.search(README, str(caught.value)), "the error should point to the README section"


def serves(make_llm, spec, **options):
    """An engine with this (valid) speculative_config proposes, and generates the plain engine's greedy tokens."""
    from aios import SamplingParams

    prompt = [[5, 6, 7, 8] * 6]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = make_llm(num_kvcache_blocks=256).generate(prompt, params, use_tqdm=False)[0]["token_ids"]
    llm = make_llm(speculative_config=spec, **options)
    assert llm.generate(prompt, params, use_tqdm=False)[0]["token_ids"] == expected
    assert llm.speculative_stats()["num_draft_tokens"] > 0


@pytest.mark.hint(5)
@pytest.mark.parametrize("k", [0, -2, 1.5, None, True])
def test_fewer_than_one_speculative_token_is_refused(make_llm, k):
    """num_speculative_tokens must be an integer >= 1."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": k}, "num_speculative_tokens")
    serves(make_llm, {"method": "ngram", "num_speculative_tokens": 1})


@pytest.mark.hint(5)
def test_an_unknown_method_or_key_is_refused(make_llm):
    """method must be 'ngram' or a draft model; unknown keys and the wrong kind of value are named."""
    refused(make_llm, {"method": "eagle", "num_speculative_tokens": 2}, "method")
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "lookahead": 3}, "lookahead")
    refused(make_llm, "ngram", "dict")
    refused(make_llm, {"num_speculative_tokens": 2}, "method")
    serves(make_llm, {"method": "ngram", "num_speculative_tokens": 2})


@pytest.mark.hint(5)
def test_bad_lookup_sizes_are_refused(make_llm):
    """prompt_lookup_min >= 1 and prompt_lookup_max >= prompt_lookup_min; they belong to n-gram lookup only."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 0}, "prompt_lookup_min")
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3,
                       "prompt_lookup_max": 2}, "prompt_lookup_max")
    serves(make_llm, {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 2, "prompt_lookup_max": 2})


@pytest.mark.hint(6)
def test_a_missing_draft_folder_is_refused(make_llm, tmp_path, tiny_model_dir):
    """A draft path that does not exist is a FileNotFoundError naming it."""
    refused(make_llm, {"model": str(tmp_path / "nowhere"), "num_speculative_tokens": 2}, "nowhere",
            error=FileNotFoundError)
    serves(make_llm, {"model": str(tiny_model_dir), "num_speculative_tokens": 2})


@pytest.mark.hint(6)
def test_a_draft_with_another_vocabulary_or_tokenizer_is_refused(make_llm, draft_dir):
    """The draft must share the target's vocabulary size and its tokenizer."""
    from aios.fixtures import cached_model

    other_vocab = cached_model("tiny", seed=3, vocab_size=640)
    refused(make_llm, {"model": str(other_vocab), "num_speculative_tokens": 2}, "vocab_size")
    other_tokenizer = cached_model("small", seed=3, vocab_size=512, num_hidden_layers=1)
    refused(make_llm, {"model": str(other_tokenizer), "num_speculative_tokens": 2}, "tokenizer")
    serves(make_llm, {"model": str(draft_dir), "num_speculative_tokens": 3})


@pytest.mark.hint(5)
def test_tensor_parallelism_is_refused(make_llm):
    """Speculation runs in one process: tensor_parallel_size > 1 is refused before any worker starts."""
    refused(make_llm, {"method": "ngram", "num_speculative_tokens": 2}, "tensor_parallel_size",
            tensor_parallel_size=2)
    serves(make_llm, {"method": "ngram", "num_speculative_tokens": 2}, tensor_parallel_size=1)
