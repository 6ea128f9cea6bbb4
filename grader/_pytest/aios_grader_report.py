"""pytest plugin the grader loads (``-p aios_grader_report --aios-report=FILE``).

It appends one JSON object per line to FILE and flushes after each, so that the
grader can tell which test was running when the process crashed or hung:

* ``{"event": "collected", "tests": [{"nodeid", "doc", "markers", "skip"}]}`` once collection
  is done: ``markers`` are the names of the test's markers and ``skip`` the reason of the skip
  its own ``skip``/``skipif`` markers declare (the root conftest adds one to GPU tests on a
  machine without CUDA), '' when none. The grader accepts a skip only when ``skip`` is set:
  decided here, at collection, before any test body runs;
  ``hint`` is the README hint number of the test's ``hint`` marker (null when none);
* ``{"event": "collect_error", "nodeid", "message"}`` for a file that failed to import;
* ``{"event": "start", "nodeid"}`` before each test;
* ``{"event": "report", "nodeid", "when", "outcome", "message", "location", "xfail"}``
  after each setup/call/teardown phase;
* ``{"event": "finish", "exitstatus"}`` at the end of the session.

Results come from pytest's own reports, never from what the code under test prints.
"""

from __future__ import annotations

import json
import os

from _pytest.skipping import evaluate_skip_marks

_STREAM = None


def pytest_addoption(parser):
    parser.addoption("--aios-report", default=None, help="write the grader's JSON-lines report here")


def _emit(record: dict) -> None:
    """Write one JSON line and push it to disk straight away."""
    if _STREAM is None:
        return
    _STREAM.write(json.dumps(record) + "\n")
    _STREAM.flush()
    os.fsync(_STREAM.fileno())


def pytest_configure(config):
    global _STREAM
    path = config.getoption("--aios-report")
    if path and _STREAM is None:
        _STREAM = open(path, "a", encoding="utf-8")


def _doc(item) -> str:
    """First line of the test function's docstring ('' when it has none)."""
    obj = getattr(item, "function", None) or getattr(item, "obj", None)
    doc = getattr(obj, "__doc__", None) or ""
    lines = [line.strip() for line in doc.strip().splitlines()]
    return lines[0] if lines else ""


def _message(report) -> str:
    """The crash line pytest itself shows for a failure, or the reason of a skip."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    text = str(longrepr).strip().splitlines()
    return text[-1] if text else ""


def _location(report) -> str:
    """``path:line`` of the place the failure surfaced, when pytest knows it."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:
        return ""
    return f"{crash.path}:{crash.lineno}"


def _declared_skip(item) -> str:
    """The reason of the skip the item's own markers declare ('' when none, or when it cannot tell)."""
    try:
        skip = evaluate_skip_marks(item)
    except Exception:  # a skipif condition that raises: no declared skip
        return ""
    return (skip.reason or "skipped") if skip else ""


def _hint(item) -> int | None:
    """The README hint the test names with ``@pytest.mark.hint(k)`` (None when it names none)."""
    marker = item.get_closest_marker("hint")
    try:
        return int(marker.args[0]) if marker and marker.args else None
    except (TypeError, ValueError):
        return None


def pytest_collection_finish(session):
    tests = [{"nodeid": item.nodeid, "doc": _doc(item), "markers": sorted({m.name for m in item.iter_markers()}),
              "skip": _declared_skip(item), "hint": _hint(item)} for item in session.items]
    _emit({"event": "collected", "tests": tests})


def pytest_collectreport(report):
    if report.failed:
        _emit({"event": "collect_error", "nodeid": report.nodeid, "message": _message(report)})


def pytest_runtest_logstart(nodeid, location):
    _emit({"event": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report):
    _emit(
        {
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "message": _message(report) if report.outcome != "passed" else "",
            "location": _location(report),
            "xfail": bool(getattr(report, "wasxfail", False)) or hasattr(report, "wasxfail"),
        }
    )


def pytest_sessionfinish(session, exitstatus):
    _emit({"event": "finish", "exitstatus": int(exitstatus)})
