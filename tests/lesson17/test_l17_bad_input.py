"""Lesson 17: the async_scheduling switch: what it accepts, what it refuses clearly, and when it falls back."""

import re

import pytest

README = r"exercises/lesson17/README\.md, 'Turning it on'"


@pytest.mark.hint(6)
@pytest.mark.parametrize("value", ["yes", 1, 0, "auto"])
def test_a_value_other_than_true_false_or_none_is_refused(make_llm, value):
    """async_scheduling must be True, False or None: anything else is a ValueError naming it and the README section."""
    with pytest.raises(ValueError, match="async_scheduling") as error:
        make_llm(async_scheduling=value)
    assert re.search(README, str(error.value)), "the error should point to the README section"


@pytest.mark.hint(6)
def test_none_means_on_for_cuda_and_off_on_the_cpu(make_llm):
    """The default (None) resolves to False on the CPU, and the engine then runs the synchronous loop."""
    llm = make_llm(async_scheduling=None)
    assert llm.config.async_scheduling is False
    assert llm.async_loop is None
    assert make_llm(async_scheduling=True).async_loop is not None


@pytest.mark.hint(6)
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
