"""Lesson 19 plumbing: the server's /metrics gauges of speculative decoding, the CLI option, the benchmark table."""

from types import SimpleNamespace

import pytest


def test_metrics_report_acceptance_only_when_speculation_is_on():
    """ServerMetrics reads aios_spec_decode_* from the engine's speculative_stats(); none without speculation."""
    pytest.importorskip("prometheus_client")
    from aios.server.metrics import ServerMetrics

    stats = {"num_draft_tokens": 12, "num_accepted_tokens": 9, "acceptance_rate": 0.75, "mean_accepted_length": 3.25}

    def async_engine(spec):
        engine = SimpleNamespace(scheduler=SimpleNamespace(running=[], waiting=[]),
                                 block_manager=SimpleNamespace(num_free_blocks=4, num_blocks=8),
                                 speculative_stats=lambda: spec)
        return SimpleNamespace(engine=engine, num_steps=3, num_errors=0)

    text = ServerMetrics(async_engine(stats)).render().decode()
    assert "aios_spec_decode_acceptance_rate 0.75" in text
    assert "aios_spec_decode_accepted_tokens 9.0" in text
    assert "aios_spec_decode_mean_accepted_length 3.25" in text
    assert "aios_spec_decode" not in ServerMetrics(async_engine(None)).render().decode()


def test_cli_takes_a_speculative_config():
    """`aios serve --speculative-config JSON` and `aios bench --speculative-config JSON` parse a JSON object."""
    from aios.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    assert args.speculative_config == {"method": "ngram", "num_speculative_tokens": 3}
    args = parser.parse_args(["serve", "--speculative-config", '{"model": "d", "num_speculative_tokens": 2}'])
    assert args.speculative_config["model"] == "d"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--speculative-config", "[1, 2]"])


def test_benchmark_table_puts_acceptance_beside_speed_up():
    """aios.bench.speculative: each row's speed-up is over the plain row of its workload and batch size."""
    from aios.bench.speculative import add_speedups, summary

    rows = [{"workload": "w", "method": "none", "batch": 1, "tokens_per_s": 100.0},
            {"workload": "w", "method": "ngram", "k": 4, "batch": 1, "tokens_per_s": 250.0,
             "acceptance_rate": 0.8, "mean_accepted_length": 4.2}]
    add_speedups(rows)
    assert rows[1]["speedup"] == 2.5
    table = summary({"rows": rows})
    assert "2.50" in table and "0.80" in table and "4.20" in table
