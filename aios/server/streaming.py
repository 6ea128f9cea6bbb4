"""Streaming text to the client: incremental detokenization and Server-Sent Events.

A streamed completion is a sequence of SSE events, each one ``data: <json>`` line
followed by a blank line, ending with ``data: [DONE]``::

    data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" Hel",...}]}

    data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"lo",...}]}

    data: [DONE]

The text of each event is what the newest tokens added. Turning tokens into text
one at a time is subtler than decoding each token alone: a byte-level BPE token
can hold half of a UTF-8 character, so its text only exists once the next token
arrives. ``IncrementalDetokenizer`` holds such tokens back until their text is whole.
"""

from __future__ import annotations

import json

REPLACEMENT_CHAR = "\ufffd"  # what decoding gives for bytes that are not (yet) a whole UTF-8 character


def sse_event(data: dict | str) -> str:
    """One Server-Sent Event carrying ``data``: a dict is sent as compact JSON, a str (``"[DONE]"``) as is.

    Returns ``"data: <payload>\\n\\n"``; the payload must hold no newline (JSON escapes them).
    """
    raise NotImplementedError("Lesson 15: implement sse_event in aios/server/streaming.py — see exercises/lesson15/README.md, 'What to implement'")


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces whose concatenation is ``decode(all ids)``.

    Keeps two offsets into ``token_ids``: text of the tokens before ``read_offset`` has
    been emitted; the window from ``prefix_offset`` to ``read_offset`` is decoded again
    each step as context, so that the new tokens' text is read off as the difference of
    two decodes of a short window (not of the whole sequence: that would cost O(n) per token).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def step(self, new_token_ids: list[int]) -> str:
        """Add ``new_token_ids``; return the text they complete ("" while a character is still partial)."""
        # Hint: decode token_ids[prefix_offset:read_offset] and token_ids[prefix_offset:]; the new text is the difference.
        # Hint: a trailing replacement character means a character may be cut in half: wait for more tokens.
        raise NotImplementedError("Lesson 15: implement IncrementalDetokenizer.step in aios/server/streaming.py — see exercises/lesson15/README.md, 'What to implement'")

    def finish(self) -> str:
        """The text of every token not emitted yet, partial characters included (call once, at the end)."""
        raise NotImplementedError("Lesson 15: implement IncrementalDetokenizer.finish in aios/server/streaming.py — see exercises/lesson15/README.md, 'What to implement'")


# ---------------------------------------------------------------- response bodies


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_chunk(request_id: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None) -> dict:
    """One streamed piece of a ``/v1/completions`` answer."""
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def chat_chunk(request_id: str, created: int, model: str, index: int, delta: dict,
               finish_reason: str | None) -> dict:
    """One streamed piece of a ``/v1/chat/completions`` answer (``delta`` holds role and/or content)."""
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(request_id: str, created: int, model: str, object_name: str, usage_dict: dict) -> dict:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {"id": request_id, "object": object_name, "created": created, "model": model, "choices": [],
            "usage": usage_dict}


def completion_response(request_id: str, created: int, model: str, texts: list[str],
                        finish_reasons: list[str], usage_dict: dict) -> dict:
    """The whole ``/v1/completions`` answer: one choice per prompt."""
    choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
               for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage_dict}


def chat_response(request_id: str, created: int, model: str, text: str, finish_reason: str,
                  usage_dict: dict) -> dict:
    """The whole ``/v1/chat/completions`` answer."""
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage_dict}
