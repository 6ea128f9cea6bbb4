"""``aios bench-serve``: a load generator for any OpenAI-compatible server.

It sends ``num_prompts`` streaming requests (at most ``max_concurrency`` at once,
arriving as a Poisson process of ``request_rate`` per second, or all at once),
times every token as it arrives, and reports what a user of the server feels:

    TTFT  time to first token     request sent -> first text arrives (queueing + prefill)
    TPOT  time per output token   (latency - TTFT) / (output tokens - 1), per request (decode speed)
    ITL   inter-token latency     the gap between two consecutive text chunks
    E2E   end-to-end latency      request sent -> last token

and what the operator pays for: request throughput and output tokens per second
over the whole run. Only the standard OpenAI protocol is used (plus ``ignore_eos``,
which vLLM and SGLang accept too), so the same numbers can be taken of other engines.

Prompts are random words (``input_len`` words, roughly that many tokens), or exactly
``input_len`` random token ids when a tokenizer folder is given.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field

WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact be have do say get make go know take see come think "
         "look want give use find tell ask seem feel try leave call good new first last long great little own "
         "other old right big high different small large next early young important few public bad same able "
         "to of in for on with at by from up about into over after river stone cloud engine paper garden light "
         "music window story orange silver market winter bridge forest letter signal planet").split()


@dataclass
class RequestRecord:
    """What happened to one request; times are seconds since the request was sent.

    ttft:        time of the first chunk with text (None if none came).
    chunk_times: arrival time of every chunk with text.
    latency:     time of the last byte of the answer.
    output_tokens: from the server's usage when it reports it, else the number of text chunks.
    """

    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    latency: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class BenchConfig:
    base_url: str
    model: str
    endpoint: str = "completions"  # or "chat"
    num_prompts: int = 100
    max_concurrency: int = 32
    request_rate: float = math.inf
    input_len: int = 128
    output_len: int = 128
    duration: float = 600.0  # seconds after which no new request is sent
    request_timeout: float = 300.0
    api_key: str | None = None
    ignore_eos: bool = True
    seed: int = 0
    tokenizer: str | None = None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the two nearest ranks; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(records: list[RequestRecord], duration: float) -> dict:
    """Aggregate the records of a run that took ``duration`` seconds.

    Returns a dict with: completed, failed, duration_s, request_throughput (completed requests / s),
    output_throughput (output tokens / s), total_token_throughput ((prompt + output tokens) / s),
    total_input_tokens, total_output_tokens, and for each of ttft, tpot, itl, e2e (in milliseconds):
    ``<name>_mean_ms``, ``<name>_p50_ms``, ``<name>_p90_ms``, ``<name>_p99_ms``.

    Only successful requests count. TPOT is per request: (latency - ttft) / (output_tokens - 1),
    for requests with more than one output token. ITL pools the gaps between consecutive chunks
    of every request.
    """
    # BEGIN SOLUTION lesson15
    done = [r for r in records if r.ok]
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    samples = {
        "ttft": [r.ttft for r in done if r.ttft is not None],
        "tpot": [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done
                 if r.ttft is not None and r.output_tokens > 1],
        "itl": [later - earlier for r in done for earlier, later in zip(r.chunk_times, r.chunk_times[1:])],
        "e2e": [r.latency for r in done],
    }
    summary = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration if duration > 0 else math.nan,
        "output_throughput": output_tokens / duration if duration > 0 else math.nan,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration > 0 else math.nan,
    }
    for name, values in samples.items():
        milliseconds = [v * 1000 for v in values]
        summary[f"{name}_mean_ms"] = sum(milliseconds) / len(milliseconds) if milliseconds else math.nan
        for q in (50, 90, 99):
            summary[f"{name}_p{q}_ms"] = percentile(milliseconds, q)
    return summary
    # END SOLUTION


# ---------------------------------------------------------------- prompts


def make_prompts(config: BenchConfig) -> list[str | list[int]]:
    """``num_prompts`` random prompts: words, or exact token-id lists when ``config.tokenizer`` is set."""
    rng = random.Random(config.seed)
    if config.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        usable = [i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)]
        return [[rng.choice(usable) for _ in range(config.input_len)] for _ in range(config.num_prompts)]
    return [" ".join(rng.choice(WORDS) for _ in range(config.input_len)) for _ in range(config.num_prompts)]


def request_body(config: BenchConfig, prompt: str | list[int]) -> dict:
    body = {"model": config.model, "max_tokens": config.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.endpoint == "chat":
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = prompt
    return body


# ---------------------------------------------------------------- one request


def chunk_text(data: dict, endpoint: str) -> str:
    """The text a streamed chunk carries (completions: choices[].text; chat: choices[].delta.content)."""
    pieces = []
    for choice in data.get("choices") or []:
        if endpoint == "chat":
            pieces.append((choice.get("delta") or {}).get("content") or "")
        else:
            pieces.append(choice.get("text") or "")
    return "".join(pieces)


async def send_request(client, config: BenchConfig, prompt: str | list[int]) -> RequestRecord:
    """Send one streaming request and time its chunks."""
    path = "/v1/chat/completions" if config.endpoint == "chat" else "/v1/completions"
    record = RequestRecord(ok=False, prompt_tokens=len(prompt) if isinstance(prompt, list) else 0)
    start = time.perf_counter()
    usage = None
    try:
        async with client.stream("POST", path, json=request_body(config, prompt),
                                 timeout=config.request_timeout) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {body[:300]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    record.error = str(data["error"])
                    return record
                now = time.perf_counter() - start
                if chunk_text(data, config.endpoint):
                    record.ttft = now if record.ttft is None else record.ttft
                    record.chunk_times.append(now)
                usage = data.get("usage") or usage
        record.latency = time.perf_counter() - start
        if usage:
            record.output_tokens = usage.get("completion_tokens", 0)
            record.prompt_tokens = usage.get("prompt_tokens", record.prompt_tokens)
        else:
            record.output_tokens = len(record.chunk_times)
        record.ok = True
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, not a crash
        record.error = f"{type(exc).__name__}: {exc}"
    return record


# ---------------------------------------------------------------- the run


async def run_benchmark(config: BenchConfig, progress: bool = True) -> tuple[dict, list[RequestRecord]]:
    """Run the load test; returns (summary, records). Bounded by num_prompts, duration and request_timeout."""
    import httpx
    from tqdm.auto import tqdm

    prompts = make_prompts(config)
    rng = random.Random(config.seed + 1)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
    gate = asyncio.Semaphore(config.max_concurrency)
    records: list[RequestRecord] = []
    bar = tqdm(total=len(prompts), desc="bench-serve", unit="req", disable=not progress, dynamic_ncols=True)

    async with httpx.AsyncClient(base_url=config.base_url.rstrip("/"), headers=headers, limits=limits,
                                 timeout=config.request_timeout) as client:

        async def one(prompt):
            async with gate:
                record = await send_request(client, config, prompt)
            records.append(record)
            bar.update(1)

        start = time.perf_counter()
        tasks = []
        for prompt in prompts:
            if time.perf_counter() - start > config.duration:
                break
            tasks.append(asyncio.ensure_future(one(prompt)))
            if math.isfinite(config.request_rate) and config.request_rate > 0:
                await asyncio.sleep(rng.expovariate(config.request_rate))
        hard_limit = max(0.0, config.duration - (time.perf_counter() - start)) + config.request_timeout
        done, pending = await asyncio.wait(tasks, timeout=hard_limit) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
    bar.close()
    records.extend(RequestRecord(ok=False, error="cancelled at the time limit") for _ in pending)
    summary = summarize(records, duration)
    summary.update({"num_prompts": len(prompts), "sent": len(tasks), "max_concurrency": config.max_concurrency,
                    "request_rate": config.request_rate, "input_len": config.input_len,
                    "output_len": config.output_len, "endpoint": config.endpoint, "model": config.model,
                    "base_url": config.base_url})
    return summary, records


def format_summary(summary: dict) -> str:
    """A plain-text table of the summary (what ``aios bench-serve`` prints)."""
    lines = [
        f"{'requests completed / failed':<34}{summary['completed']} / {summary['failed']}",
        f"{'duration (s)':<34}{summary['duration_s']:.2f}",
        f"{'request throughput (req/s)':<34}{summary['request_throughput']:.2f}",
        f"{'output throughput (tok/s)':<34}{summary['output_throughput']:.1f}",
        f"{'total throughput (tok/s)':<34}{summary['total_token_throughput']:.1f}",
        f"{'input / output tokens':<34}{summary['total_input_tokens']} / {summary['total_output_tokens']}",
        f"{'':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}   (ms)",
    ]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E latency")):
        values = [summary[f"{name}_{k}_ms"] for k in ("mean", "p50", "p90", "p99")]
        lines.append(f"{label:<14}" + "".join(f"{v:>10.2f}" for v in values))
    return "\n".join(lines)


def result_json(summary: dict, records: list[RequestRecord], with_records: bool = False) -> str:
    data = {"summary": summary}
    if with_records:
        data["requests"] = [asdict(r) for r in records]
    return json.dumps(data, indent=2, default=str, allow_nan=True)
