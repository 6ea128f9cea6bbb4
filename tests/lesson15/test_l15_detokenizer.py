"""Lesson 15: incremental detokenization — streamed pieces add up to the whole text."""

import pytest
from transformers import AutoTokenizer

from aios.server.streaming import IncrementalDetokenizer

TEXTS = ["Hello, world! The cat sat on the mat.", "naïve café — 日本語 ✓ 🙂 done", "a\nb\tc  d"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.hint(4)
@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_decode(tokenizer, text):
    """Feeding tokens one at a time, the pieces plus finish() equal decode(all tokens)."""
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.step([token]) for token in ids]
    pieces.append(detok.finish())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.hint(4)
def test_never_emits_half_a_character(tokenizer):
    """A multi-byte character split over several tokens is held back until it is whole (no '\\ufffd' in pieces)."""
    text = "日本語🙂"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text), "the tiny tokenizer should split these characters into byte tokens"
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.step([token]) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + detok.finish() == text


@pytest.mark.hint(4)
def test_several_tokens_per_step(tokenizer):
    """step() accepts any number of new tokens at once (a step can bring more than one)."""
    ids = tokenizer.encode(TEXTS[1])
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.step(ids[i:i + 3]) for i in range(0, len(ids), 3)]
    assert "".join(pieces) + detok.finish() == TEXTS[1]
