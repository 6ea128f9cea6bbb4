"""Lesson 15 mutants: request checking, SSE framing, incremental detokenization, the engine thread's hand-off,
abort, and the benchmark's summary.

Every ``find`` lies inside a lesson-15 solution region (the server around them changes often).
"""

from grader.mutants import Mutant

PROTOCOL = "aios/server/protocol.py"
STREAMING = "aios/server/streaming.py"
ASYNC_ENGINE = "aios/server/async_engine.py"
BENCH = "aios/server/bench.py"
SCHEDULER = "aios/engine/scheduler.py"

MUTANTS = [
    Mutant(15, "sse-single-newline", STREAMING,
           find='    return f"data: {payload}\\n\\n"\n',
           replace='    return f"data: {payload}\\n"\n',
           bug="an SSE event ends with one newline instead of a blank line, so the client sees one endless event"),
    Mutant(15, "sse-done-as-json-string", STREAMING,
           find="    payload = data if isinstance(data, str) else json.dumps(",
           replace="    payload = json.dumps(data) if isinstance(data, str) else json.dumps(",
           bug='the end marker is JSON-encoded: the stream ends with data: "[DONE]" instead of data: [DONE]'),
    Mutant(15, "detok-emits-partial-utf8", STREAMING,
           find="        if full_text.endswith(REPLACEMENT_CHAR):\n            return \"\"\n",
           replace="",
           bug="the detokenizer emits text that ends in half a UTF-8 character (a replacement character) "
               "instead of holding the token back"),
    Mutant(15, "detok-window-never-slides", STREAMING,
           find="        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)\n",
           replace="        self.read_offset = len(self.token_ids)\n",
           bug="prefix_offset never moves: every step decodes the whole sequence again (O(n) per token)"),
    Mutant(15, "detok-finish-holds-partial", STREAMING,
           find="    def finish(self) -> str:\n"
                "        \"\"\"The text of every token not emitted yet, partial characters included (call once, at the end).\"\"\"\n"
                "        # BEGIN SOLUTION lesson15\n",
           replace="    def finish(self) -> str:\n"
                   "        \"\"\"The text of every token not emitted yet, partial characters included (call once, at the end).\"\"\"\n"
                   "        # BEGIN SOLUTION lesson15\n"
                   "        return self.step([])\n",
           bug="finish() is step([]): held-back tokens whose character never completes are dropped from the end "
               "of the text"),
    Mutant(15, "detok-finish-repeats", STREAMING,
           find="        self.prefix_offset = self.read_offset = len(self.token_ids)\n        return full_text[len(prefix_text) :]\n",
           replace="        return full_text[len(prefix_text) :]\n",
           bug="finish() leaves the offsets where they were, so a second call returns the same tail again"),
    Mutant(15, "put-not-threadsafe", ASYNC_ENGINE,
           find="            self.loop.call_soon_threadsafe(self.queue.put_nowait, output)\n",
           replace="            self.queue.put_nowait(output)\n",
           bug="the engine thread puts into the asyncio.Queue directly: the event loop is not woken up and the "
               "handler sees the tokens late (asyncio objects are not thread-safe)"),
    Mutant(15, "dispatch-drops-last-tokens", ASYNC_ENGINE,
           find="            stream.num_sent += len(new_token_ids)\n"
                "            stream.put(RequestOutput(new_token_ids, seq.finish_reason if seq.is_finished else None))\n",
           replace="            stream.num_sent += len(new_token_ids)\n"
                   "            if seq.is_finished:\n"
                   "                new_token_ids = []  # the request is over: just say why\n"
                   "            stream.put(RequestOutput(new_token_ids, seq.finish_reason if seq.is_finished else None))\n",
           bug="the step that finishes a request sends only the finish reason, not the tokens it generated: the "
               "last chunk of text is dropped"),
    Mutant(15, "dispatch-resends-tokens", ASYNC_ENGINE,
           find="            stream.num_sent += len(new_token_ids)\n",
           replace="",
           bug="num_sent never advances, so every step sends all the completion tokens again"),
    Mutant(15, "dispatch-keeps-finished-streams", ASYNC_ENGINE,
           find="            if seq.is_finished:\n                del self._streams[seq_id]\n",
           replace="",
           bug="finished requests stay in _streams: every later step sends them another final output"),
    Mutant(15, "abort-leaks-blocks", SCHEDULER,
           find="                queue.remove(seq)\n                self.block_manager.deallocate(seq)\n",
           replace="                queue.remove(seq)\n",
           bug="an aborted running sequence is removed from the queue but its KV blocks are never freed"),
    Mutant(15, "abort-running-only", SCHEDULER,
           find="        for queue in (self.waiting, self.running):\n",
           replace="        for queue in (self.running,):\n",
           bug="abort looks only in the running queue: a request cancelled while waiting is still prefilled later"),
    Mutant(15, "abort-finish-reason-stop", SCHEDULER,
           find="                seq.finish_reason = \"abort\"\n",
           replace="                seq.finish_reason = \"stop\"\n",
           bug="an aborted sequence reports finish_reason 'stop'"),
    Mutant(15, "default-max-tokens-ignores-room", PROTOCOL,
           find="    if max_tokens is None:\n        max_tokens = min(room, max_tokens_limit)\n",
           replace="    if max_tokens is None:\n        max_tokens = max_tokens_limit\n",
           bug="without max_tokens (and no server default) the request asks for the server's limit, not for what "
               "still fits after the prompt: long prompts are refused"),
    Mutant(15, "context-check-off-by-one", PROTOCOL,
           find="    if prompt_len + max_tokens > max_model_len:\n",
           replace="    if prompt_len + max_tokens >= max_model_len:\n",
           bug="a request that exactly fills the context (prompt + max_tokens == max_model_len) is refused"),
    Mutant(15, "null-fields-not-defaulted", PROTOCOL,
           find="    values = {name: value for name, value in sampling.items() if value is not None}\n",
           replace="    values = dict(sampling)\n",
           bug="a field sent as null is checked as a value (and refused) instead of meaning 'use the default'"),
    Mutant(15, "range-error-names-no-field", PROTOCOL,
           find="        raise bad_request(message, param=param) from None\n",
           replace="        raise bad_request(message) from None\n",
           bug="SamplingParams' ValueError becomes a 400 without 'param': the client is not told which field "
               "is out of range"),
    Mutant(15, "summarize-counts-failed", BENCH,
           find="    done = [r for r in records if r.ok]\n",
           replace="    done = list(records)\n",
           bug="failed requests count as completed in the benchmark summary (and in its token totals)"),
    Mutant(15, "summarize-tpot-off-by-one", BENCH,
           find="        \"tpot\": [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done\n"
                "                 if r.ttft is not None and r.output_tokens > 1],\n",
           replace="        \"tpot\": [(r.latency - r.ttft) / r.output_tokens for r in done\n"
                   "                 if r.ttft is not None and r.output_tokens > 0],\n",
           bug="TPOT divides the time after the first token by all output tokens instead of the n - 1 that "
               "came after it"),
]
