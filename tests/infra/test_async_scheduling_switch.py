"""Lesson 17's switch as plumbing: how ``async_scheduling`` resolves, and the CLI flags that set it."""

import pytest


@pytest.mark.parametrize("value, device, tp, speculative, expected", [
    (None, "cuda", 1, False, True), (None, "cpu", 1, False, False), (True, "cpu", 1, False, True),
    (False, "cuda", 1, False, False), (True, "cuda", 2, False, False), (None, "cuda", 1, True, False),
])
def test_the_switch_resolves_with_its_fallbacks(value, device, tp, speculative, expected):
    """resolve_async_scheduling: None follows the device; tensor parallelism and speculative decoding fall back
    to the synchronous loop."""
    from aios.engine.async_loop import resolve_async_scheduling

    assert resolve_async_scheduling(value, device, tp, speculative) is expected


def test_the_cli_has_the_switch():
    """``aios serve`` and ``aios bench`` take --async-scheduling / --no-async-scheduling (default: the engine's)."""
    from aios.cli import build_parser

    parser = build_parser()
    for command in ("serve", "bench"):
        extra = ["--model", "x"] if command == "serve" else []
        assert parser.parse_args([command, *extra, "--no-async-scheduling"]).async_scheduling is False
        assert parser.parse_args([command, *extra, "--async-scheduling"]).async_scheduling is True
        assert parser.parse_args([command, *extra]).async_scheduling is None
