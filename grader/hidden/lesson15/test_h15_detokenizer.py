"""Lesson 15 (hidden): incremental detokenization on arbitrary token sequences."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from aios.server.streaming import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def stream_pieces(tokenizer, ids, chunk_sizes):
    detok = IncrementalDetokenizer(tokenizer)
    pieces, i, k = [], 0, 0
    while i < len(ids):
        size = chunk_sizes[k % len(chunk_sizes)]
        pieces.append(detok.step(ids[i:i + size]))
        i, k = i + size, k + 1
    return pieces, detok.finish(), detok


@pytest.mark.hint(4)
def test_random_token_sequences_reassemble(tokenizer):
    """Any token ids (byte tokens, special tokens, invalid UTF-8) in any chunking: pieces + finish() == decode(ids)."""

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(ids=st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=40),
           chunk_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=5))
    def check(ids, chunk_sizes):
        pieces, rest, _ = stream_pieces(tokenizer, ids, chunk_sizes)
        assert "".join(pieces) + rest == tokenizer.decode(ids, skip_special_tokens=True)

    check()


@pytest.mark.hint(4)
def test_pieces_never_end_in_a_partial_character(tokenizer):
    """No piece returned by step() ends with the replacement character of a half-received UTF-8 sequence."""
    ids = tokenizer.encode("Ünïcödé ✓ ✓ 🙂 日本 and ascii")
    pieces, rest, _ = stream_pieces(tokenizer, ids, [1])
    assert all(not piece.endswith("\ufffd") for piece in pieces)
    assert "".join(pieces) + rest == "Ünïcödé ✓ ✓ 🙂 日本 and ascii"


@pytest.mark.hint(4)
def test_special_tokens_are_skipped(tokenizer):
    """The end-of-sequence token adds no text (skip_special_tokens)."""
    ids = tokenizer.encode("done") + [tokenizer.eos_token_id]
    pieces, rest, _ = stream_pieces(tokenizer, ids, [1])
    assert "".join(pieces) + rest == "done"


@pytest.mark.hint(4)
def test_decode_window_stays_short(tokenizer):
    """On plain ASCII text the re-decoded window stays a few tokens long (not the whole sequence)."""
    ids = tokenizer.encode("the cat sat on the mat " * 20)
    detok = IncrementalDetokenizer(tokenizer)
    for token_id in ids:  # step() only: finish() moves both offsets to the end anyway
        detok.step([token_id])
    assert detok.read_offset == len(ids)
    assert detok.read_offset - detok.prefix_offset <= 4
    assert detok.prefix_offset > len(ids) // 2


@pytest.mark.hint(4)
def test_finish_twice_gives_nothing_more(tokenizer):
    """finish() emits the held-back tail once; a second call returns ''."""
    ids = tokenizer.encode("ab🙂")[:-1]  # cut the emoji: its bytes never complete
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.step([t]) for t in ids)
    tail = detok.finish()
    assert text + tail == tokenizer.decode(ids)
    assert tail.endswith("\ufffd")
    assert detok.finish() == ""
