"""Run pytest suites in a subprocess and read what happened from a report file.

The child pytest loads ``grader/_pytest/aios_grader_report.py``, which writes one
JSON line per event. From that file (never from the tests' printed output) the
runner rebuilds each test's outcome. A per-test limit (pytest-timeout) and a
whole-run limit (the runner kills the process group) keep a hang from stalling
the grader; when the child dies mid-run (segfault, ``os._exit``) the test in
progress is reported as crashed and pytest is started again on the tests left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent / "_pytest"
PLUGIN = "aios_grader_report"
MAX_RESTARTS = 3
GOOD = ("passed", "skipped", "xfailed", "xpassed")
BAD = ("failed", "error", "timeout", "crashed", "not run")


@dataclass
class TestResult:
    """The outcome of one test: one of GOOD or BAD."""

    nodeid: str
    outcome: str = "not run"
    message: str = ""
    location: str = ""
    doc: str = ""
    hint: int | None = None  # the README hint its ``@pytest.mark.hint(k)`` names

    @property
    def ok(self) -> bool:
        """Whether the test did not fail (passed, skipped, xfailed or xpassed)."""
        return self.outcome in GOOD

    @property
    def name(self) -> str:
        """The test's name without its file path."""
        return self.nodeid.split("::", 1)[-1]


@dataclass
class RunResult:
    """All tests of one run, collection errors and what went wrong with the process."""

    tests: list[TestResult] = field(default_factory=list)
    collect_errors: list[TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log_tail: str = ""
    exit_codes: list[int | None] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *outcomes: str) -> int:
        """How many tests ended with one of ``outcomes``."""
        return sum(1 for t in self.tests if t.outcome in outcomes)

    @property
    def total(self) -> int:
        """Number of tests (skipped ones included)."""
        return len(self.tests)

    @property
    def passed(self) -> int:
        """Number of tests that passed."""
        return self.count("passed", "xpassed", "xfailed")

    @property
    def ok(self) -> bool:
        """No failure, error, timeout, crash or collection error (skips are fine)."""
        return not self.collect_errors and all(t.ok for t in self.tests)

    def to_dict(self) -> dict:
        """A JSON-ready form."""
        return asdict(self)


def pytest_timeout_available() -> bool:
    """Whether the pytest-timeout plugin is installed."""
    return importlib.util.find_spec("pytest_timeout") is not None


def _is_timeout(message: str) -> bool:
    """Whether a failure message is pytest-timeout's."""
    return message.startswith("Failed: Timeout") or "pytest-timeout" in message


def _apply_report(result: TestResult, event: dict) -> None:
    """Fold one setup/call/teardown report into ``result``."""
    outcome, when, xfail = event["outcome"], event["when"], event.get("xfail", False)
    if outcome == "failed":
        if when == "call":
            result.outcome = "timeout" if _is_timeout(event["message"]) else "failed"
        elif result.outcome not in ("failed", "timeout"):
            result.outcome = "timeout" if _is_timeout(event["message"]) else "error"
        result.message = result.message or event["message"]
        result.location = result.location or event.get("location", "")
    elif outcome == "skipped" and result.outcome not in BAD[:3]:
        result.outcome = "xfailed" if xfail else "skipped"
        result.message = event["message"]
    elif outcome == "passed" and when == "call":
        result.outcome = "xpassed" if xfail else "passed"
    elif outcome == "passed" and when == "setup" and result.outcome == "not run":
        result.outcome = "running"


def _read_events(path: Path) -> list[dict]:
    """The report file's events; a torn last line (the process died mid-write) is dropped."""
    events = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def _tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log file (for a run that died before any test)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _describe_exit(code: int | None) -> str:
    """Words for a child's exit status."""
    if code is None:
        return "killed after the time limit"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _child_env(impl: str | None) -> dict[str, str]:
    """The environment of the child pytest: the report plugin importable, AIOS_IMPL set."""
    env = dict(os.environ)
    paths = [str(PLUGIN_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if impl is not None:
        env["AIOS_IMPL"] = impl
    return env


def _spawn(cmd: list[str], cwd: Path, env: dict, log, timeout: float) -> int | None:
    """Run ``cmd`` in its own process group; kill the group after ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout=max(timeout, 0.1))
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        # The child runs in its own session, so Ctrl-C never reaches it: stop it here.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if isinstance(stop, KeyboardInterrupt):
            raise
        return None


def _command(root: Path, paths: list[str], report: Path, test_timeout: float | None,
             extra_args: list[str], deselect: list[str]) -> list[str]:
    """The child pytest's command line."""
    cmd = [sys.executable, "-m", "pytest", *paths, "-p", PLUGIN, f"--aios-report={report}",
           "-p", "no:cacheprovider", "-q", "--tb=short", f"--rootdir={root}"]
    if test_timeout and pytest_timeout_available():
        cmd += [f"--timeout={test_timeout}", "--timeout-method=signal"]
    return cmd + list(extra_args) + [f"--deselect={nodeid}" for nodeid in deselect]


def _mark_dead(tests: dict[str, TestResult], running: list[str], code: int | None) -> None:
    """The tests in progress when the child died (or was killed) get the blame."""
    what = _describe_exit(code)
    for nodeid in running:
        tests[nodeid].outcome = "timeout" if code is None else "crashed"
        tests[nodeid].message = f"the test process was {what}" if code is None else f"the test process died ({what})"


def run_pytest(
    root: Path,
    paths: list[str],
    *,
    impl: str | None = None,
    test_timeout: float | None = 120,
    run_timeout: float = 600,
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
) -> RunResult:
    """Run pytest on ``paths`` (relative to ``root``) and return each test's outcome.

    After a crash pytest is started again without the tests already done, at most
    MAX_RESTARTS times, all within ``run_timeout`` seconds.
    """
    result = RunResult()
    started = time.monotonic()
    order: list[str] = []
    tests: dict[str, TestResult] = {}
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aios-grade-") as tmp:
        log_file = Path(log_path) if log_path else Path(tmp) / "log.txt"
        with open(log_file, "w") as log:
            for attempt in range(MAX_RESTARTS + 1):
                report = Path(tmp) / f"report-{attempt}.jsonl"
                cmd = _command(root, paths, report, test_timeout, extra_args or [], done)
                code = _spawn(cmd, root, _child_env(impl), log, run_timeout - (time.monotonic() - started))
                result.exit_codes.append(code)
                events = _read_events(report)
                running = _fold(events, order, tests, result)
                if any(e["event"] == "finish" for e in events) and code is not None:
                    break
                _mark_dead(tests, running, code)
                what = _describe_exit(code)
                if not order and not running:
                    result.notes.append(f"pytest stopped before any test ran ({what})")
                    log.flush()
                    result.log_tail = _tail(log_file)
                    break
                if code is None:
                    result.notes.append(f"the whole run went past its {run_timeout:.0f} s limit")
                    break
                done = [n for n in order if tests[n].outcome != "not run"]
                if len(done) == len(order) or time.monotonic() - started > run_timeout - 1:
                    break
                result.notes.append(f"pytest died ({what}); restarted on the {len(order) - len(done)} tests left")
    for test in tests.values():
        if test.outcome == "running":
            test.outcome = "crashed"
        if test.outcome == "not run" and not test.message:
            test.message = "not run: the test process stopped before reaching it"
    result.tests = [tests[n] for n in order]
    result.seconds = time.monotonic() - started
    return result


def _fold(events: list[dict], order: list[str], tests: dict[str, TestResult], result: RunResult) -> list[str]:
    """Merge one attempt's events; return the tests that started but never finished."""
    running: dict[str, bool] = {}
    for event in events:
        kind = event["event"]
        if kind == "collected":
            for entry in event["tests"]:
                if entry["nodeid"] not in tests:
                    order.append(entry["nodeid"])
                    tests[entry["nodeid"]] = TestResult(entry["nodeid"], doc=entry.get("doc", ""),
                                                        hint=entry.get("hint"))
        elif kind == "collect_error":
            if all(c.nodeid != event["nodeid"] for c in result.collect_errors):
                result.collect_errors.append(TestResult(event["nodeid"], "error", event["message"]))
        elif kind == "start":
            running[event["nodeid"]] = True
            tests.setdefault(event["nodeid"], TestResult(event["nodeid"]))
            if event["nodeid"] not in order:
                order.append(event["nodeid"])
        elif kind == "report":
            test = tests.setdefault(event["nodeid"], TestResult(event["nodeid"]))
            _apply_report(test, event)
            if event["when"] == "teardown":
                running.pop(event["nodeid"], None)
    return list(running)


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU in this process (False when torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
