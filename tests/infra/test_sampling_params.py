"""SamplingParams validation: bad settings fail at construction with a message naming the field."""

import pytest

from aios import SamplingParams


def test_defaults_are_valid_and_sampled():
    """The defaults sample at temperature 1 with no top-k/top-p limit and no seed."""
    params = SamplingParams()
    assert (params.temperature, params.top_k, params.top_p, params.seed) == (1.0, -1, 1.0, None)
    assert not params.is_greedy and SamplingParams(temperature=0).is_greedy


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0.0, top_k=0, top_p=1.0, seed=0),
        dict(temperature=0.7, top_k=50, top_p=0.9, seed=2**64 - 1, max_tokens=1, ignore_eos=True),
        dict(temperature=2, top_k=-1, top_p=1),
    ],
)
def test_valid_settings_are_accepted(options):
    """Boundary values that are allowed construct without error."""
    SamplingParams(**options)


@pytest.mark.parametrize(
    "options,field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature="1"), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=3.0), "max_tokens"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=True), "seed"),
        (dict(ignore_eos="yes"), "ignore_eos"),
    ],
)
def test_invalid_settings_name_the_field(options, field):
    """Each invalid setting raises ValueError whose message names the offending field and value."""
    with pytest.raises(ValueError, match=field):
        SamplingParams(**options)


def test_all_problems_are_reported_at_once():
    """Several bad fields are listed in one error, not one per attempt."""
    with pytest.raises(ValueError) as error:
        SamplingParams(temperature=-1, top_p=2, max_tokens=0)
    message = str(error.value)
    assert "temperature" in message and "top_p" in message and "max_tokens" in message
