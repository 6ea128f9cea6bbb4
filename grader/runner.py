"""Run pytest suites in a subprocess and read what happened from a report file.

The child pytest loads ``grader/_pytest/aios_grader_report.py``, which writes one
JSON line per event. From that file (never from the tests' printed output) the
runner rebuilds each test's outcome. A per-test limit (pytest-timeout) and a
whole-run limit (the runner kills the process group) keep a hang from stalling
the grader; when the child dies mid-run (segfault, ``os._exit``) the test in
progress is reported as crashed and pytest is started again on the tests left.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grader import remote as remote_mode
from grader import sandbox

PLUGIN_DIR = Path(__file__).resolve().parent / "_pytest"
PLUGIN = "aios_grader_report"
MAX_RESTARTS = 3
#: The pytest plugins a confined run names with ``-p`` (plugin auto-loading is off there, so
#: nothing the submission installed is loaded); those not installed are left out.
NAMED_PLUGINS = ("pytest_timeout", "_hypothesis_pytestplugin", "pytest_benchmark.plugin", "anyio.pytest_plugin")
#: ``python -I -B -c BOOT PLUGIN_DIR ARGS...``: pytest with only the report plugin's folder added to
#: the isolated sys.path (the rootdir conftest then adds the tests' root and the graded aios/).
BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); import pytest; sys.exit(pytest.main(sys.argv[1:]))"


@dataclass(frozen=True)
class Confinement:
    """How classroom grading starts each child pytest (grader/classroom.py, grader/sandbox.py).

    Every start (restarts after a crash too) gets a new copy of the tests' tree from
    ``fresh_root()`` as its root and working directory, so nothing a run writes there reaches
    the next one. pytest runs as ``python -I -B`` with plugin auto-loading off and the plugins
    it needs named, inside ``sandbox.spawn`` (own PID, mount and network namespaces, the
    ``hidden`` folders covered, limits), and its whole process tree is killed when it ends.
    """

    fresh_root: Callable[[], Path]
    hidden: tuple[str, ...] = ()
#: Outcomes that are a test's failure. A test is ok only when it passed, or when it was skipped
#: by a skip its own markers declared at collection (see TestResult.excused): a skip the code
#: under test raised, an xfail or an xpass is never a pass.
BAD = ("failed", "error", "timeout", "crashed", "not run")


@dataclass
class TestResult:
    """The outcome of one test: passed, skipped, xfailed, xpassed or one of BAD."""

    nodeid: str
    outcome: str = "not run"
    message: str = ""
    location: str = ""
    doc: str = ""
    hint: int | None = None  # the README hint its ``@pytest.mark.hint(k)`` names
    markers: list[str] = field(default_factory=list)
    declared_skip: str = ""  # the skip its markers declared at collection ('' when none)

    @property
    def excused(self) -> bool:
        """Skipped, and its own markers said so at collection (a GPU test on a machine without CUDA)."""
        return self.outcome == "skipped" and bool(self.declared_skip)

    @property
    def ok(self) -> bool:
        """Passed, or an excused skip; anything else (xfail, xpass, another skip) counts as a failure."""
        return self.outcome == "passed" or self.excused

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
        """Number of tests that passed (xfailed and xpassed do not)."""
        return self.count("passed")

    @property
    def excused(self) -> int:
        """Number of excused skips (see TestResult.excused): they count neither way."""
        return sum(t.excused for t in self.tests)

    @property
    def ok(self) -> bool:
        """Every test ok (passed or an excused skip) and no collection error."""
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
    elif outcome == "skipped" and result.outcome not in ("failed", "error", "timeout"):
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


def _spawn_confined(cmd: list[str], cwd: Path, env: dict, log, timeout: float, hidden: tuple[str, ...]) -> int | None:
    """Run ``cmd`` in the sandbox (as this user); kill its whole tree when it ends or times out."""
    proc = sandbox.spawn(cmd, cwd=cwd, env=env, hidden=hidden, as_learner=False, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        return proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        return None
    finally:
        sandbox.kill_tree(proc)


def worker_sandbox() -> str:
    """``AIOS_WORKER_SANDBOX`` for a confined run: "1" (the learner worker runs as the sandbox's
    user) unless the grader was started with ``AIOS_WORKER_SANDBOX=0`` (the explicit off switch)."""
    return "0" if os.environ.get("AIOS_WORKER_SANDBOX") == "0" else "1"


def _confined_prefix(root: Path) -> list[str]:
    """``python -I -B -c BOOT PLUGIN_DIR -p PLUGIN...``: the start of a confined child's command."""
    plugin_dir = root / "grader" / "_pytest"
    cmd = [sys.executable, "-I", "-B", "-c", BOOT, str(plugin_dir if plugin_dir.is_dir() else PLUGIN_DIR)]
    for name in NAMED_PLUGINS:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            cmd += ["-p", name]
    return cmd


def _command(root: Path, paths: list[str], report: Path, test_timeout: float | None,
             extra_args: list[str], deselect: list[str], confined: bool = False) -> list[str]:
    """The child pytest's command line."""
    start = _confined_prefix(root) if confined else [sys.executable, "-m", "pytest"]
    cmd = [*start, *paths, "-p", PLUGIN, f"--aios-report={report}",
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
    confine: Confinement | None = None,
    remote: bool | None = None,
) -> RunResult:
    """Run pytest on ``paths`` (relative to ``root``) and return each test's outcome.

    After a crash pytest is started again without the tests already done, at most
    MAX_RESTARTS times, all within ``run_timeout`` seconds. With ``confine`` every start runs
    confined (see Confinement) on a fresh copy of the tree instead of ``root``. With
    ``remote`` (default: ``grader.remote.wanted(paths)``) the tests import ``aios`` only
    through a learner worker process (grader/remote/, the trust split).
    """
    result = RunResult()
    started = time.monotonic()
    order: list[str] = []
    tests: dict[str, TestResult] = {}
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aios-grade-") as tmp:
        remote = remote_mode.wanted(paths) if remote is None else remote
        mode_env = remote_mode.child_env(paths, Path(tmp)) if remote else {"AIOS_REMOTE": "0"}
        log_file = Path(log_path) if log_path else Path(tmp) / "log.txt"
        with open(log_file, "w") as log:
            for attempt in range(MAX_RESTARTS + 1):
                report = Path(tmp) / f"report-{attempt}.jsonl"
                run_root = confine.fresh_root() if confine else root
                cmd = _command(run_root, paths, report, test_timeout, extra_args or [], done, confine is not None)
                left = run_timeout - (time.monotonic() - started)
                if confine:
                    env = _child_env(impl) | mode_env | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                                                         "AIOS_WORKER_SANDBOX": worker_sandbox()}
                    code = _spawn_confined(cmd, run_root, env, log, left, confine.hidden)
                else:
                    code = _spawn(cmd, root, _child_env(impl) | mode_env, log, left)
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
                                                        markers=entry.get("markers", []),
                                                        declared_skip=entry.get("skip", ""),
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


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False when torch is missing).

    Asked of a separate ``python -I``: the grader never imports torch itself, so a ``torch/``
    planted where the grader was started from cannot run inside it.
    """
    probe = "import torch; print(torch.cuda.is_available())"
    try:
        out = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd="/", timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip().endswith("True")
