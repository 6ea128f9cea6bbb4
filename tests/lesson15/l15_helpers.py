"""Test code that lesson 15's tests run on the learner's side (the ``learner_helper`` fixture).

The engine calls its ``step`` from its own thread, so a slowed step has to live where the
engine does.
"""

import time


def slowed(step, delay: float):
    """``step`` made ``delay`` seconds slower a call: a request lasts long enough to be cancelled mid-way."""

    def slow_step():
        time.sleep(delay)
        return step()

    return slow_step
