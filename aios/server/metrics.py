"""Prometheus metrics of the server, served at ``GET /metrics``.

Each server has its own registry (several servers can live in one process, as in
the tests). Names follow Prometheus' conventions: counters end in ``_total``,
durations are in seconds.

    aios_http_requests_total{endpoint,status}     HTTP requests answered
    aios_requests_finished_total{finish_reason}   generations ended: stop, length, abort, error
    aios_prompt_tokens_total                      prompt tokens admitted
    aios_generation_tokens_total                  tokens generated
    aios_time_to_first_token_seconds              histogram: request arrival -> first token
    aios_inter_token_latency_seconds              histogram: gap between two tokens of one request
    aios_e2e_request_latency_seconds              histogram: request arrival -> last token
    aios_num_requests_running / _waiting          scheduler queues, read at scrape time
    aios_kv_cache_usage_ratio                     share of KV-cache blocks in use
    aios_engine_steps_total, aios_engine_errors_total
    aios_spec_decode_*                            speculative decoding (lesson 19), only when it is on:
                                                  draft_tokens, accepted_tokens, acceptance_rate,
                                                  mean_accepted_length (the engine's totals)
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)


class ServerMetrics:
    """The server's counters, histograms and gauges, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, async_engine=None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("aios_http_requests", "HTTP requests answered, by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.requests_finished = Counter("aios_requests_finished", "Generation requests ended, by finish reason",
                                         ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("aios_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("aios_generation_tokens", "Tokens generated", registry=r)
        self.time_to_first_token = Histogram("aios_time_to_first_token_seconds",
                                             "Time from a request's arrival to its first token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("aios_inter_token_latency_seconds",
                                             "Time between two consecutive tokens of one request",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("aios_e2e_request_latency_seconds",
                                     "Time from a request's arrival to its last token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("aios_num_requests_running", "Sequences in the running queue", registry=r)
        self.waiting = Gauge("aios_num_requests_waiting", "Sequences in the waiting queue", registry=r)
        self.kv_cache_usage = Gauge("aios_kv_cache_usage_ratio", "Share of KV-cache blocks in use (0 to 1)",
                                    registry=r)
        self.engine_steps = Gauge("aios_engine_steps", "Engine steps run so far", registry=r)
        self.engine_errors = Gauge("aios_engine_errors", "Engine steps that raised so far", registry=r)
        if async_engine is not None:
            self.watch(async_engine)

    def watch(self, async_engine) -> None:
        """Read the gauges from ``async_engine`` at every scrape (len() of a deque is safe across threads)."""
        scheduler = async_engine.engine.scheduler
        blocks = async_engine.engine.block_manager
        self.running.set_function(lambda: len(scheduler.running))
        self.waiting.set_function(lambda: len(scheduler.waiting))
        self.kv_cache_usage.set_function(lambda: 1.0 - blocks.num_free_blocks / blocks.num_blocks)
        self.engine_steps.set_function(lambda: async_engine.num_steps)
        self.engine_errors.set_function(lambda: async_engine.num_errors)
        stats = getattr(async_engine.engine, "speculative_stats", None)
        if stats is not None and stats() is not None:
            self.watch_speculation(stats)

    def watch_speculation(self, stats) -> None:
        """Lesson 19: gauges of the engine's acceptance counters, read from ``stats()`` at every scrape."""
        fields = {"draft_tokens": ("num_draft_tokens", "Tokens proposed by speculative decoding"),
                  "accepted_tokens": ("num_accepted_tokens", "Proposed tokens the target accepted"),
                  "acceptance_rate": ("acceptance_rate", "Share of proposed tokens accepted (0 to 1)"),
                  "mean_accepted_length": ("mean_accepted_length",
                                           "Tokens per verification step and sequence: 1 + accepted / drafts")}
        for name, (key, text) in fields.items():
            gauge = Gauge(f"aios_spec_decode_{name}", text, registry=self.registry)
            gauge.set_function(lambda key=key: (stats() or {}).get(key, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Times one generation request and reports it to ServerMetrics when it ends."""

    def __init__(self, metrics: ServerMetrics, arrival: float, prompt_tokens: int):
        self.metrics = metrics
        self.arrival = arrival
        self.last_token_time: float | None = None
        metrics.prompt_tokens.inc(prompt_tokens)

    def tokens(self, count: int, now: float) -> None:
        """``count`` tokens arrived at time ``now``."""
        if count <= 0:
            return
        if self.last_token_time is None:
            self.metrics.time_to_first_token.observe(now - self.arrival)
        else:
            self.metrics.inter_token_latency.observe((now - self.last_token_time) / count)
        self.last_token_time = now
        self.metrics.generation_tokens.inc(count)

    def finish(self, reason: str, now: float) -> None:
        self.metrics.requests_finished.labels(finish_reason=reason).inc()
        if reason in ("stop", "length"):
            self.metrics.e2e_latency.observe(now - self.arrival)
