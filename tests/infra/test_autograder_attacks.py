"""Classroom grading attacked the way a dishonest student would (issue 13): every attack lives
only in the submitted ``aios/`` and is graded through the real CI layout —

    cd $GITHUB_WORKSPACE/.aios-autograder
    python -m grader --root $GITHUB_WORKSPACE autograde --bundle . --lessons ... --json ... --junit ...

with ``$GITHUB_OUTPUT`` set — and must earn exactly what its honest part earns: the stubs'
score, or the score of the same tree with the attack taken out. The attacker knows the CI
layout, so the paths of the output files and of the bundle are written into the attack.

To keep the file fast, lesson 1 is graded on two of its hidden test files only (KEPT; its
visible suite is left out of the bundle): every run, honest or not, uses the same trimmed bundle.

Patching pytest or forging the report from inside the tests' process is stopped by the trust
split (grader/remote/: the learner's code runs in a worker process, as the sandbox's
unprivileged user when grading as root); delegating lesson 1 to transformers by the worker's
refusal of Hugging Face's model code outside lessons 0 and 2.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader import cli

REPO = Path(__file__).resolve().parents[2]
BUNDLE_DIR = ".aios-autograder"
#: The lesson 1 test files the trimmed bundle keeps (the hidden RMSNorm and MLP ones).
KEPT = {"tests/lesson01": (), "grader/hidden/lesson01": ("test_l01_hidden_norm.py", "test_l01_hidden_mlp.py")}
STUB_CALL = "raise NotImplementedError("
#: Each attack is one full autograde (~35 s on an idle 2-core machine): CI's test run grades this
#: fixed sample, one per line of defence (worker, bundle, scoring, leak filter); ``nox -s attacks``
#: (AIOS_ATTACKS=all) runs every attack.
CI_SAMPLE = {"test_patching_pytest_reports_earns_nothing", "test_poisoning_the_bundles_conftest_earns_nothing_now_or_at_a_regrade",
             "test_xfailing_stubs_earn_nothing", "test_hidden_tests_do_not_leak_verbatim",
             "test_public_outputs_never_carry_hidden_docstrings"}



@dataclass
class Graded:
    """One autograde run in the CI layout and everything it left behind."""

    workspace: Path
    code: int
    log: str  # the grader's stdout and stderr: the public Actions log
    report: dict
    junit: str
    github_output: str

    @property
    def scores(self) -> dict[int, int]:
        """``{lesson: points earned}``."""
        return {entry["lesson"]: entry["score"] for entry in self.report["lessons"]}

    def public_text(self) -> str:
        """Everything a student can read after the run: the log, the artifact files, the step output."""
        return "\n".join((self.log, json.dumps(self.report), self.junit, self.github_output))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """This repository released once: ``student/`` (stubbed) and ``autograder/``."""
    out = tmp_path_factory.mktemp("attacks") / "release"
    assert cli.main(["--root", str(REPO), "release", str(out)]) == 0
    return out


def workspace(release: Path, base: Path) -> Path:
    """A fresh student checkout with the bundle fetched into it, as the classroom workflow leaves it."""
    ws = base / "work" / "student"
    shutil.copytree(release / "student", ws)
    shutil.copytree(release / "autograder", ws / BUNDLE_DIR)
    for folder, keep in KEPT.items():
        for test in (ws / BUNDLE_DIR / folder).glob("test_*.py"):
            if test.name not in keep:
                test.unlink()
        if not keep:
            shutil.rmtree(ws / BUNDLE_DIR / folder)
    return ws


def paths(ws: Path) -> dict[str, str]:
    """What an attacker knows of the CI layout (the placeholders of the attack sources)."""
    temp = ws.parent.parent / "runner-temp"
    return {"JSON": str(temp / "aios-grade.json"), "JUNIT": str(temp / "aios-junit.xml"),
            "GITHUB_OUTPUT": str(temp / "github_output"), "BUNDLE": str(ws / BUNDLE_DIR),
            "MARKER": str(temp / "attack-marker")}


def add_attack(ws: Path, source: str) -> None:
    """Append ``source`` (placeholders filled in) to the student's ``aios/__init__.py``."""
    text = textwrap.dedent(source)
    for key, value in paths(ws).items():
        text = text.replace(f"@{key}@", value)
    with open(ws / "aios" / "__init__.py", "a", encoding="utf-8") as init:
        init.write("\n" + text)


def replace_stubs(ws: Path, replacement: str) -> None:
    """Make every stub of the student's tree run ``replacement(message)`` instead of raising."""
    for file in (ws / "aios").rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        if STUB_CALL in text:
            file.write_text(text.replace(STUB_CALL, replacement + "("), encoding="utf-8")


def run_autograde(ws: Path, lessons: str, python: str = sys.executable) -> Graded:
    """``python -m grader --root WS autograde --bundle .`` from the bundle folder, as the workflow runs it."""
    where = paths(ws)
    temp = Path(where["JSON"]).parent
    temp.mkdir(parents=True, exist_ok=True)
    Path(where["GITHUB_OUTPUT"]).write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "AIOS_IMPL", "AIOS_ROOT")}
    env.update(GITHUB_OUTPUT=where["GITHUB_OUTPUT"], RUNNER_TEMP=str(temp), GITHUB_WORKSPACE=str(ws))
    proc = subprocess.run([python, "-m", "grader", "--root", str(ws), "autograde", "--bundle", ".",
                           "--lessons", lessons, "--json", where["JSON"], "--junit", where["JUNIT"]],
                          cwd=ws / BUNDLE_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Graded(ws, proc.returncode, proc.stdout + proc.stderr, json.loads(Path(where["JSON"]).read_text()),
                  Path(where["JUNIT"]).read_text(), Path(where["GITHUB_OUTPUT"]).read_text())


def grade(release: Path, base: Path, lessons: str, attack: str = "", stubs: str = "", edit=None) -> Graded:
    """Grade a fresh workspace after applying the attack to its ``aios/``."""
    ws = workspace(release, base)
    if edit:
        edit(ws)
    if stubs:
        replace_stubs(ws, stubs)
    if attack:
        add_attack(ws, attack)
    return run_autograde(ws, lessons)


@pytest.fixture(scope="module")
def stubbed(release, tmp_path_factory) -> Graded:
    """The untouched stubs graded on lesson 1."""
    return grade(release, tmp_path_factory.mktemp("stubbed"), "1")


@pytest.fixture(scope="module")
def honest(stubbed) -> dict[int, int]:
    """The untouched stubs' points: what most attacks may earn."""
    assert stubbed.scores == {1: 0}, stubbed.report
    return stubbed.scores


def secret_lines(bundle: Path) -> set[str]:
    """Lines of the bundle's hidden tests that no visible test has (long enough to be telling)."""
    def lines(folder: Path) -> set[str]:
        return {line.strip() for f in folder.rglob("*.py") for line in f.read_text().splitlines() if line.strip()}
    hidden = lines(bundle / "grader" / "hidden")
    visible = lines(bundle / "tests")
    return {line for line in hidden - visible if len(line) >= 20}


def live_processes(name: str) -> list[int]:
    """PIDs whose command name is ``name``."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


# ---------------------------------------------------------------------------- the attacks

REPORT_PATCH = """
    import _pytest.reports as _reports

    _original = _reports.TestReport.from_item_and_call.__func__

    def _always_passed(cls, item, call):
        report = _original(cls, item, call)
        report.outcome, report.longrepr = "passed", None
        return report

    _reports.TestReport.from_item_and_call = classmethod(_always_passed)
"""


def test_patching_pytest_reports_earns_nothing(release, honest, tmp_path):
    assert grade(release, tmp_path, "1", REPORT_PATCH).scores == {1: honest[1]}


def test_patching_pytest_reports_earns_nothing_in_lesson_15(release, tmp_path):
    """Lesson 15 (a server, an engine loop, learner exceptions read for attributes) goes through the
    worker too: the report patch earns what the stubs earn there, nothing, though every test ran."""
    graded = grade(release, tmp_path, "15", REPORT_PATCH)
    (entry,) = graded.report["lessons"]
    outcomes = [t["outcome"] for kind in ("visible", "hidden") for t in entry["tests"][kind]]
    assert len(outcomes) > 40 and "passed" not in outcomes
    assert graded.scores == {15: 0}


ATEXIT_FORGERY = """
    import atexit as _atexit

    def _forge_report():
        import json
        args = open("/proc/self/cmdline", "rb").read().decode().split("\\0")
        path = next(a.split("=", 1)[1] for a in args if a.startswith("--aios-report="))
        events = [json.loads(line) for line in open(path)]
        ids = [t["nodeid"] for e in events if e["event"] == "collected" for t in e["tests"]]
        with open(path, "a") as report:
            for nodeid in ids:
                for when in ("setup", "call", "teardown"):
                    report.write(json.dumps({"event": "report", "nodeid": nodeid, "when": when, "outcome": "passed",
                                             "message": "", "location": "", "xfail": False}) + "\\n")
            report.write(json.dumps({"event": "finish", "exitstatus": 0}) + "\\n")

    _atexit.register(_forge_report)
"""


def test_appending_passes_to_the_report_file_earns_nothing(release, honest, tmp_path):
    assert grade(release, tmp_path, "1", ATEXIT_FORGERY).scores == {1: honest[1]}


DAEMON = """
    import os as _os

    def _rewrite_later():
        import json, time
        with open("/proc/self/comm", "w") as comm:
            comm.write("aios-daemon")
        for _ in range(3000):
            try:
                text = open("@JSON@").read()
            except OSError:
                text = ""
            if '"score"' in text:
                time.sleep(0.5)  # let the grader finish writing, then overwrite it all
                report = json.loads(text)
                for lesson in report["lessons"]:
                    lesson["score"] = lesson["points"]
                report["score"] = report["max_score"]
                open("@JSON@", "w").write(json.dumps(report))
                open("@JUNIT@", "w").write("<testsuites forged='1'/>")
                open("@GITHUB_OUTPUT@", "a").write("result=FORGED\\n")
                return
            time.sleep(0.1)

    if not _os.environ.get("AIOS_ATTACK_DAEMON"):
        _os.environ["AIOS_ATTACK_DAEMON"] = "1"
        if _os.fork() == 0:
            _os.setsid()
            if _os.fork() == 0:
                try:
                    _rewrite_later()
                finally:
                    _os._exit(0)
            _os._exit(0)
"""


def test_a_daemon_cannot_rewrite_the_results(release, honest, tmp_path):
    graded = grade(release, tmp_path, "1", DAEMON)
    assert live_processes("aios-daemon") == []  # all dead before the results were written
    assert graded.scores == {1: honest[1]}
    assert re.fullmatch(r"result=[A-Za-z0-9+/=]+\n", graded.github_output)
    assert Path(paths(graded.workspace)["JUNIT"]).read_text() == graded.junit and "forged" not in graded.junit


CONFTEST_POISON = """
    import pathlib as _pathlib

    _HOOK = '''

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome, report.longrepr = "passed", None
'''
    for _conftest in (_pathlib.Path.cwd() / "conftest.py", _pathlib.Path("@BUNDLE@") / "conftest.py"):
        try:
            if "pytest_runtest_makereport" not in _conftest.read_text():
                with open(_conftest, "a") as _file:
                    _file.write(_HOOK)
        except OSError:
            pass
"""


def test_poisoning_the_bundles_conftest_earns_nothing_now_or_at_a_regrade(release, honest, tmp_path):
    first = grade(release, tmp_path, "1", CONFTEST_POISON)
    assert first.scores == {1: honest[1]}
    bundle_conftest = first.workspace / BUNDLE_DIR / "conftest.py"
    assert bundle_conftest.read_bytes() == (release / "autograder" / "conftest.py").read_bytes()
    assert "makereport" not in "".join(p.read_text() for p in (first.workspace / BUNDLE_DIR).rglob("conftest.py"))
    again = run_autograde(first.workspace, "1")  # the instructor re-grades in the same folder
    assert again.scores == {1: honest[1]}


PLANTED_TORCH = """
    import pathlib as _pathlib

    _SHIM = '''
import os, sys
with open("@MARKER@", "a") as marker:
    marker.write(f"{os.getpid()} imported the planted torch\\\\n")
if "grader.classroom" in sys.modules:
    sys.modules["grader.classroom"].lesson_points = lambda points, passed, counted: points
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
del sys.modules["torch"]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
import torch
'''
    for _base in (_pathlib.Path.cwd(), _pathlib.Path("@BUNDLE@")):
        try:
            (_base / "torch").mkdir(exist_ok=True)
            (_base / "torch" / "__init__.py").write_text(_SHIM)
            for _bench in _base.glob("tests/lesson*/test_*bench*.py"):
                _bench.unlink()
        except OSError:
            pass
"""


def test_a_planted_torch_never_reaches_the_grader(release, honest, tmp_path):
    graded = grade(release, tmp_path, "1", PLANTED_TORCH)
    assert graded.scores == {1: honest[1]}
    assert not (graded.workspace / BUNDLE_DIR / "torch").exists()
    assert sorted((graded.workspace / BUNDLE_DIR / "tests").rglob("test_*bench*.py"))  # none deleted
    assert not Path(paths(graded.workspace)["MARKER"]).exists()


PLUGIN = """
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome, report.longrepr = "passed", None
"""


def test_an_installed_pytest_plugin_is_never_loaded(release, honest, tmp_path):
    """The student's requirements-dev.txt names a plugin; suppose it got installed anyway."""
    ws = workspace(release, tmp_path)
    with open(ws / "requirements-dev.txt", "a") as requirements:
        requirements.write("aios-always-pass==1.0\n")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "aios_always_pass.py").write_text(PLUGIN)
    dist = site / "aios_always_pass-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aios-always-pass\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\naios_always_pass = aios_always_pass\n")
    assert run_autograde(ws, "1", python=str(python)).scores == {1: honest[1]}


def test_xfailing_stubs_earn_nothing(release, honest, tmp_path):
    graded = grade(release, tmp_path, "1", stubs='raise __import__("pytest").xfail')
    assert graded.scores == {1: honest[1]} and graded.report["lessons"][0]["tests_passed"] == 0


HONEST_RMS_NORM = '''
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)
'''


def write_rms_norm(ws: Path) -> None:
    """The one honest piece: lesson 1's rms_norm, written out."""
    file = ws / "aios" / "layers" / "layernorm.py"
    lines = file.read_text().splitlines(keepends=True)
    stub = next(i for i, line in enumerate(lines) if STUB_CALL in line and "rms_norm in" in line)
    lines[stub: stub + 1] = [textwrap.indent(textwrap.dedent(HONEST_RMS_NORM).strip() + "\n", "    ")]
    file.write_text("".join(lines))


def test_skipping_stubs_earn_only_the_honest_part(release, tmp_path):
    honest_part = grade(release, tmp_path / "honest", "1", edit=write_rms_norm)
    assert 0 < honest_part.report["lessons"][0]["tests_passed"] < honest_part.report["lessons"][0]["tests_counted"]
    skipping = grade(release, tmp_path / "skips", "1", stubs='raise __import__("pytest").skip', edit=write_rms_norm)
    assert skipping.scores == honest_part.scores
    assert skipping.report["lessons"][0]["tests_counted"] == honest_part.report["lessons"][0]["tests_counted"]


TRANSFORMERS_RMS_NORM = '''
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    norm = Qwen3RMSNorm(x.shape[-1], eps=eps).to(x.device)
    norm.weight.data = weight.clone()
    return norm(x)
'''


def test_delegating_to_transformers_earns_nothing(release, honest, tmp_path):
    def delegate(ws: Path) -> None:
        file = ws / "aios" / "layers" / "layernorm.py"
        lines = file.read_text().splitlines(keepends=True)
        stub = next(i for i, line in enumerate(lines) if STUB_CALL in line and "rms_norm in" in line)
        lines[stub: stub + 1] = [textwrap.indent(textwrap.dedent(TRANSFORMERS_RMS_NORM).strip() + "\n", "    ")]
        file.write_text("".join(lines))

    assert grade(release, tmp_path, "1", edit=delegate).scores == {1: honest[1]}


LEAK = """
    def _hidden_sources():
        import glob, inspect, os
        files = set(glob.glob("@BUNDLE@/grader/hidden/**/*.py", recursive=True))
        files |= set(glob.glob(os.getcwd() + "/grader/hidden/**/*.py", recursive=True))
        files |= set(glob.glob(f"/proc/{os.getppid()}/cwd/grader/hidden/**/*.py", recursive=True))
        files |= {frame.filename for frame in inspect.stack() if "hidden" in frame.filename}
        text = ""
        for name in sorted(files):
            try:
                text += open(name).read()
            except OSError:
                pass
        return text

    def _leak(message):
        import os
        source = _hidden_sources()
        for target in (f"/proc/{os.getppid()}/fd/1", "/proc/1/fd/1"):
            try:
                with open(target, "w") as out:
                    out.write(source)
            except OSError:
                pass
        return NotImplementedError(message + " " + _encode(source))
"""
VERBATIM = LEAK + """
    def _encode(source):
        return " ; ".join(line.strip() for line in source.splitlines() if line.strip())
"""
ENCODED = LEAK + """
    def _encode(source):
        import base64
        return "B64:" + base64.b64encode(source.encode()).decode()
"""


def leaked_lines(graded: Graded, secrets: set[str]) -> set[str]:
    """The secret lines found in the public outputs, verbatim or in a ``B64:`` payload."""
    text = graded.public_text()
    for payload in re.findall(r"B64:([A-Za-z0-9+/=]+)", text):
        try:
            text += "\n" + base64.b64decode(payload + "=" * (-len(payload) % 4)).decode(errors="replace")
        except (binascii.Error, ValueError):
            continue
    return {line for line in secrets if line in text}


def test_hidden_tests_do_not_leak_verbatim(release, honest, tmp_path):
    graded = grade(release, tmp_path, "1", VERBATIM, stubs='raise __import__("aios")._leak')
    assert graded.scores == {1: honest[1]}
    assert leaked_lines(graded, secret_lines(graded.workspace / BUNDLE_DIR)) == set()


def test_hidden_tests_do_not_leak_encoded(release, honest, tmp_path):
    graded = grade(release, tmp_path, "1", ENCODED, stubs='raise __import__("aios")._leak')
    assert leaked_lines(graded, secret_lines(graded.workspace / BUNDLE_DIR)) == set()


def test_public_outputs_never_carry_hidden_docstrings(release, stubbed):
    graded = stubbed
    hidden = graded.workspace / BUNDLE_DIR / "grader" / "hidden" / "lesson01"
    docstrings = set(re.findall(r'^\s+"""(.{12,}?)(?:"""|$)', "\n".join(f.read_text() for f in hidden.rglob("*.py")), re.M))
    assert docstrings and not [d for d in docstrings if d in graded.public_text()]
    assert "isolat" in graded.log  # the run says what isolation was in force


def _skip_outside_the_ci_sample() -> None:
    """Mark every attack outside CI_SAMPLE as skipped at collection, unless AIOS_ATTACKS=all."""
    if os.environ.get("AIOS_ATTACKS") == "all":
        return
    skip = pytest.mark.skip(reason="outside CI's attack sample: nox -s attacks (AIOS_ATTACKS=all) runs every attack")
    for name, test in list(globals().items()):
        if name.startswith("test_") and callable(test) and name not in CI_SAMPLE:
            globals()[name] = skip(test)


_skip_outside_the_ci_sample()
