"""``python -m grader autograde``: grade lessons for a classroom and report the points.

    python -m grader autograde [--lessons 0,1,2] [--bundle DIR|FILE.tar.gz] [--impl learner|reference|DIR]
                               [--json FILE] [--junit FILE] [--classroom FILE]

Every chosen lesson (default: every ready one) is graded like ``python -m grader grade``
(visible then hidden suite, through grader/runner.py), ignoring locks and without touching
progress.json. Results come from the runner's report file, never from what the code under
test prints.

Where the tests come from:

* without ``--bundle``: this checkout's tests/, grader/hidden/ and curriculum.toml;
* with ``--bundle``: an autograder bundle written by ``python -m grader release`` (a folder
  or its .tar.gz). Its curriculum, conftest.py, visible and hidden suites are used; only the
  ``aios/`` package is taken from the checkout being graded (``--root``, default this one).

Scoring (one rule, everywhere): a lesson worth P points earns
``P * passed // counted`` points. Only ``passed`` is a pass: xfailed, xpassed and any skip
the test's own markers did not declare at collection are failures. ``counted`` is every test
but the excused skips (a GPU test on a machine without CUDA), plus files that failed to
import. Full points only when every counted test passes; 0 when none was counted.

With ``--bundle`` (classroom grading, docs/classroom.md "Trust model"): the bundle is copied
once into a root-only folder before anything runs, and every pytest start gets a fresh,
read-only copy of it as its root and working directory (grader/runner.py, Confinement); the
student's checkout and the original bundle are hidden from the tests' processes, which run in
their own PID, mount and network namespaces (grader/sandbox.py) and are all dead before any
output is written; ``$GITHUB_OUTPUT`` is opened before anything runs and kept out of their
environment; neither folder is ever on the grader's own sys.path.

Public outputs name tests but never carry their docstrings or source; learner-controlled text
(failure messages, output) is cut short and loses every line that is a line of a hidden test.

Outputs: a summary table on stdout; ``--json FILE`` (every lesson and test); ``--junit FILE``
(JUnit XML, one testsuite per lesson); ``--classroom FILE`` and, when ``$GITHUB_OUTPUT`` is
set, ``result=...`` there: the base64 JSON that GitHub Classroom's
``classroom-resources/autograding-grading-reporter`` reads from a runner's ``result`` output.
Exit status: 0 when the lessons were graded (whatever the score), 2 on bad input.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from grader import board, remote, sandbox
from grader import curriculum as cur
from grader.cli import grade_lesson
from grader.curriculum import Curriculum, Lesson
from grader.runner import Confinement, worker_sandbox

RUNNER_ID = "aios"
#: Variables the code under test must not see: GitHub's step files (a test could append a
#: forged ``result=`` to $GITHUB_OUTPUT) and tokens. Names starting with ACTIONS_ go too.
HIDDEN_FROM_TESTS = ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STATE", "GITHUB_STEP_SUMMARY",
                     "GITHUB_TOKEN")
FAILURE_OUTCOMES = ("failed",)
ERROR_OUTCOMES = ("error", "timeout", "crashed", "not run")
MAX_FAILING_NAMES = 5
MAX_LEARNER_TEXT = 500  # characters of learner-controlled text kept per test or note
NOT_ISOLATED = "not isolated: grading this checkout in place — local grading is for feedback; CI grading is for points"


class UsageError(Exception):
    """Bad input on the command line; the message says what to fix."""


def register(subparsers) -> None:
    """Add the ``autograde`` subcommand."""
    parser = subparsers.add_parser("autograde", help="grade lessons for a classroom: points, JUnit, GitHub Classroom")
    parser.add_argument("--lessons", help="comma-separated lesson ids (default: every ready lesson)")
    parser.add_argument("--bundle", help="autograder bundle (folder or .tar.gz from `python -m grader release`)")
    parser.add_argument("--impl", help="without --bundle: learner (default), reference, or a directory holding aios/")
    parser.add_argument("--json", dest="json_file", metavar="FILE", help="write the full result as JSON")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    parser.add_argument("--classroom", metavar="FILE", help="write GitHub Classroom's base64 result")
    parser.set_defaults(handler=cmd_autograde)


def cmd_autograde(args, curriculum: Curriculum) -> int:
    """``autograde``: grade, print the summary, write the requested files."""
    with contextlib.ExitStack() as stack:
        try:
            github_output = _open_github_output(stack)  # before anything is started
            tests_from, impl, confine = _sources(args, curriculum, stack)
            lessons = choose_lessons(tests_from, args.lessons)
            for path in (args.json_file, args.junit, args.classroom):
                if path:
                    _write(path, "")  # fail on an unwritable path now, not after grading
            with _hidden_from_tests():
                report = autograde(tests_from, lessons, impl, confine)
            # Every process the tests started is dead by now (runner: kill_tree after each run).
            write_outputs(report, args.json_file, args.junit, args.classroom, github_output)
        except UsageError as exc:
            print(f"autograde: {exc}", file=sys.stderr)
            return 2
    print_summary(report)
    return 0


def _open_github_output(stack: contextlib.ExitStack):
    """``$GITHUB_OUTPUT`` opened for appending (None when unset), before any test process exists."""
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        return None
    try:
        return stack.enter_context(open(path, "a", encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot append to $GITHUB_OUTPUT ({path}): {exc.strerror or exc}") from exc


def _sources(args, curriculum: Curriculum, stack: contextlib.ExitStack) -> tuple[Curriculum, str, Confinement | None]:
    """The curriculum whose tests run, the ``AIOS_IMPL`` value of the tree graded, and the confinement."""
    if not args.bundle:
        return curriculum, _impl_value(args.impl or "learner"), None
    if args.impl:
        raise UsageError("--impl and --bundle do not go together: with --bundle the graded aios/ is --root's")
    original = Path(args.bundle).resolve()
    _forget_untrusted_paths((original if original.is_dir() else original.parent, curriculum.root), stack)
    bundle = open_bundle(original, stack)
    learner = _private_dir(stack, "aios-learner-")
    try:
        tests_from = cur.load(bundle)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--bundle {args.bundle}: unreadable grader/curriculum.toml ({exc})") from exc
    copies = _private_dir(stack, "aios-runs-")
    hidden = tuple(str(p) for p in (original if original.is_dir() else None, curriculum.root.resolve()) if p)
    confine = Confinement(fresh_root=lambda: fresh_copy(bundle, copies), hidden=hidden)
    return tests_from, str(copy_learner_tree(curriculum.root, learner)), confine


def _forget_untrusted_paths(folders, stack: contextlib.ExitStack) -> None:
    """Drop the working directory and ``folders`` from the grader's own sys.path until ``stack`` closes.

    ``python -m grader`` started in the bundle folder puts that folder first on sys.path; the
    grader package is imported by now, and any later import (rich, a lazily imported module)
    must come from the installed environment, never from a file planted next to the grader.
    """
    untrusted = [Path(f).resolve() for f in folders] + [Path.cwd().resolve()]
    saved = sys.path[:]
    stack.callback(sys.path.__setitem__, slice(None), saved)  # an in-process caller gets its path back
    sys.path[:] = [p for p in sys.path
                   if p and not any(Path(p).resolve().is_relative_to(u) for u in untrusted)]


def _private_dir(stack: contextlib.ExitStack, prefix: str) -> Path:
    """A root-only (0700) temporary folder, removed (read-only copies and all) when ``stack`` closes."""
    path = sandbox.private_dir(prefix)
    stack.callback(_remove_tree, path)
    return path


def _remove_tree(path: Path) -> None:
    """``rm -rf path``, read-only folders included."""
    def retry(function, name, _):
        os.chmod(os.path.dirname(name), 0o700)
        function(name)
    shutil.rmtree(path, onerror=retry)


def fresh_copy(bundle: Path, parent: Path) -> Path:
    """A new read-only copy of the bundle snapshot under ``parent`` (one per pytest start)."""
    target = Path(tempfile.mkdtemp(prefix="run-", dir=parent)) / "bundle"
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".aios"))
    for dirpath, _, filenames in os.walk(target, topdown=False):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR)
    return target


def _impl_value(impl: str) -> str:
    """``learner``, ``reference`` or an existing directory holding ``aios/`` (absolute)."""
    if impl in ("learner", "reference"):
        return impl
    path = Path(impl).resolve()
    if not (path / "aios" / "__init__.py").is_file():
        raise UsageError(f"--impl {impl}: no aios/ package in that directory")
    return str(path)


def open_bundle(path: Path, stack: contextlib.ExitStack) -> Path:
    """A root-only snapshot of the bundle (a folder, or a .tar.gz unpacked), taken before anything runs.

    Grading reads only the snapshot: whatever happens to the original folder later (it may sit
    in the student's writable workspace) changes nothing.
    """
    if not path.is_file() and not (path / "grader" / "curriculum.toml").is_file():
        raise UsageError(f"--bundle {path}: not an autograder bundle (no grader/curriculum.toml); "
                         "make one with `python -m grader release OUT`")
    target = _private_dir(stack, "aios-bundle-")
    if path.is_file():
        try:
            with tarfile.open(path) as archive:
                archive.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"--bundle {path}: cannot unpack it ({exc})") from exc
        folders = [p for p in target.iterdir() if p.is_dir()]
        path = folders[0] if len(folders) == 1 and not (target / "grader").is_dir() else target
    else:
        path = Path(shutil.copytree(path, target / "bundle", symlinks=False,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".aios", ".git")))
    if not (path / "grader" / "curriculum.toml").is_file():
        raise UsageError(f"--bundle {path}: not an autograder bundle (no grader/curriculum.toml); "
                         "make one with `python -m grader release OUT`")
    return path.resolve()


def copy_learner_tree(student: Path, target: Path) -> Path:
    """Copy ``student/aios`` (and nothing else of the student's checkout) under ``target``."""
    source = student / "aios"
    if not (source / "__init__.py").is_file() or source.is_symlink():
        raise UsageError(f"{student}: no aios/ package to grade (pass the student's checkout with --root)")
    shutil.copytree(source, target / "aios", ignore=_caches_and_links)
    return target


def _caches_and_links(folder: str, names: list[str]) -> set[str]:
    """What copying the learner's tree leaves out: caches, and every symbolic link (it could point
    at the bundle or anything else the grader may read)."""
    return {n for n in names if n == "__pycache__" or n.endswith(".pyc") or os.path.islink(os.path.join(folder, n))}


def choose_lessons(curriculum: Curriculum, spec: str | None) -> list[Lesson]:
    """The lessons named by ``--lessons`` (every ready lesson when omitted)."""
    if not spec:
        lessons = curriculum.ready()
        if not lessons:
            raise UsageError("no lesson is ready in the curriculum")
        return lessons
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lesson = curriculum.get(int(part))
        except ValueError:
            raise UsageError(f"--lessons: {part!r} is not a lesson number") from None
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        if not lesson.ready:
            raise UsageError(f"lesson {lesson.id} ({lesson.title}) is coming soon; it cannot be graded yet")
        if lesson not in chosen:
            chosen.append(lesson)
    if not chosen:
        raise UsageError("--lessons names no lesson")
    return sorted(chosen, key=lambda lesson: lesson.id)


@contextlib.contextmanager
def _hidden_from_tests():
    """Remove HIDDEN_FROM_TESTS (and ACTIONS_*) from the environment while tests run."""
    names = [n for n in os.environ if n in HIDDEN_FROM_TESTS or n.startswith("ACTIONS_")]
    saved = {name: os.environ.pop(name) for name in names}
    try:
        yield
    finally:
        os.environ.update(saved)


def lesson_points(points: int, passed: int, counted: int) -> int:
    """The scoring rule: ``points * passed // counted`` (0 when no test ran)."""
    return points * passed // counted if counted else 0


class LeakFilter:
    """Keeps hidden test source out of learner-controlled text.

    ``scrub`` drops every line that is, or contains, a line found only in the hidden tests
    (lines also in the visible tests are public anyway), then cuts the text to MAX_LEARNER_TEXT.
    """

    MIN_CONTAINED = 12  # shorter secret lines are dropped only on an exact match

    def __init__(self, secret_lines: set[str]):
        self.exact = secret_lines
        self.long = [line for line in secret_lines if len(line) >= self.MIN_CONTAINED]

    @classmethod
    def for_curriculum(cls, curriculum: Curriculum) -> "LeakFilter":
        """The lines of every lesson's hidden tests that no visible test file has."""
        def lines(rel: str) -> set[str]:
            folder = curriculum.root / rel
            files = folder.rglob("*.py") if folder.is_dir() else []
            return {line.strip() for f in files for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
                    if line.strip()}
        hidden = set().union(*(lines(lesson.hidden) for lesson in curriculum.lessons))
        visible = set().union(*(lines(lesson.visible) for lesson in curriculum.lessons))
        return cls(hidden - visible)

    def _secret(self, line: str) -> bool:
        text = line.strip()
        return text in self.exact or any(secret in text for secret in self.long)

    def scrub(self, text: str) -> str:
        """``text`` without secret lines, at most MAX_LEARNER_TEXT characters."""
        kept = "\n".join(line for line in (text or "").splitlines() if not self._secret(line))
        return kept if len(kept) <= MAX_LEARNER_TEXT else kept[: MAX_LEARNER_TEXT - 3] + "..."


def score_lesson(lesson: Lesson, grade: dict, leaks: LeakFilter | None = None) -> dict:
    """One lesson's entry of the report, from ``grade_lesson``'s record.

    Learner-controlled text goes through ``leaks`` (a LeakFilter); hidden tests show their name,
    outcome and the stub's text at most, never their docstring.
    """
    scrub = (leaks or LeakFilter(set())).scrub
    passed = grade["visible"]["passed"] + grade["hidden"]["passed"]
    counted = passed + grade["visible"]["failed"] + grade["hidden"]["failed"]
    return {
        "lesson": lesson.id,
        "title": lesson.title,
        "points": lesson.points,
        "score": lesson_points(lesson.points, passed, counted),
        "passed": grade["passed"],
        "tests_passed": passed,
        "tests_counted": counted,
        "visible": grade["visible"],
        "hidden": grade["hidden"],
        "tests": {
            "visible": [{"name": t["name"], "outcome": t["outcome"], "message": board.shorten(scrub(t["message"]))}
                        for t in grade["tests"]["visible"]],
            "hidden": [{"name": t["name"], "outcome": t["outcome"], "message": scrub(t["stub"])}
                       for t in grade["tests"]["hidden"]],
        },
        "notes": [scrub(note) for note in grade["notes"]],
    }


def isolation(confine: Confinement | None, lessons: list[Lesson] = ()) -> str:
    """What the output says about the isolation of the learner's code in this run.

    A confined run starts the learner worker through the sandbox (runner.worker_sandbox) unless
    ``AIOS_WORKER_SANDBOX=0``; lessons whose suites import ``aios`` in the test process itself
    (``grader.remote.DIRECT_LESSONS``, or every lesson with ``AIOS_REMOTE=0``) run the learner's
    code as the grader's user.
    """
    if confine is None:
        return NOT_ISOLATED
    direct = sorted({lesson.id for lesson in lessons if not remote.wanted([lesson.visible, lesson.hidden])})
    if not sandbox.probe().isolated or (worker_sandbox() == "1" and not direct):
        return sandbox.describe()
    where = (f"lessons {', '.join(map(str, direct))} import it in the tests' process" if direct
             else "the learner worker is not sandboxed (AIOS_WORKER_SANDBOX=0)")
    return (f"partly isolated: own PID, mount and network namespaces, but the learner's code runs as the "
            f"grader's user ({where}) — " + sandbox.LOCAL_NOTE)


def autograde(curriculum: Curriculum, lessons: list[Lesson], impl: str, confine: Confinement | None = None) -> dict:
    """Grade ``lessons`` against ``impl`` and return the report (no timings: it is deterministic)."""
    leaks = LeakFilter.for_curriculum(curriculum)
    entries = [score_lesson(lesson, grade_lesson(curriculum, lesson, impl, confine), leaks) for lesson in lessons]
    return {
        "version": 1,
        "isolation": isolation(confine, lessons),
        "scoring": ("points * passed // counted per lesson: only passed counts; xfail, xpass and undeclared "
                    "skips are failures; a GPU test skipped without CUDA is not counted"),
        "lessons": entries,
        "score": sum(e["score"] for e in entries),
        "max_score": sum(e["points"] for e in entries),
    }


def _failing_names(entry: dict) -> list[str]:
    """The lesson's test functions that did not pass (file::name, parameters dropped), visible first."""
    names = [Path(t["name"].split("[", 1)[0]).name for suite in ("visible", "hidden")
             for t in entry["tests"][suite] if t["outcome"] in FAILURE_OUTCOMES + ERROR_OUTCOMES]
    return list(dict.fromkeys(names))


def lesson_message(entry: dict) -> str:
    """One line for a lesson: counts, then the first failing tests."""
    v, h = entry["visible"], entry["hidden"]
    text = (f"{entry['score']}/{entry['points']} points: visible {v['passed']}/{v['total']}, "
            f"hidden {h['passed']}/{h['total']} passed")
    failing = _failing_names(entry)
    if failing:
        more = f" (+{len(failing) - MAX_FAILING_NAMES} more)" if len(failing) > MAX_FAILING_NAMES else ""
        text += "; not passed: " + ", ".join(failing[:MAX_FAILING_NAMES]) + more
    if entry["tests_counted"] == 0:
        text += "; no test ran"
    return text


def classroom_result(report: dict) -> dict:
    """The JSON a GitHub Classroom runner's ``result`` output carries (before base64)."""
    tests = [{
        "name": f"Lesson {e['lesson']}: {e['title']}",
        "status": "pass" if e["passed"] and e["score"] == e["points"] else "fail",
        "score": e["score"],
        "max_score": e["points"],
        "message": lesson_message(e),
        "test_code": f"python -m grader grade {e['lesson']}",
        "filename": "",
        "line_no": 0,
        "duration": 0,
    } for e in report["lessons"]]
    status = "pass" if all(t["status"] == "pass" for t in tests) else "fail"
    return {"version": 1, "status": status, "max_score": report["max_score"], "tests": tests}


def encode_classroom(result: dict) -> str:
    """Base64 of the compact JSON, as the reporter decodes it."""
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _junit_case(suite: ET.Element, lesson: str, kind: str, test: dict) -> None:
    """Append one <testcase>, with <failure>, <error> or <skipped> when it did not pass."""
    case = ET.SubElement(suite, "testcase", classname=f"{lesson}.{kind}", name=test["name"])
    outcome = test["outcome"]
    if outcome in FAILURE_OUTCOMES:
        ET.SubElement(case, "failure", message=test["message"], type=outcome)
    elif outcome in ERROR_OUTCOMES:
        ET.SubElement(case, "error", message=test["message"], type=outcome)
    elif outcome == "skipped":
        ET.SubElement(case, "skipped", message=test["message"])


def junit_xml(report: dict) -> str:
    """JUnit XML: one <testsuite> per lesson with its points as properties."""
    root = ET.Element("testsuites", name="aios")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for entry in report["lessons"]:
        lesson = f"lesson{entry['lesson']:02d}"
        tests = [(kind, t) for kind in ("visible", "hidden") for t in entry["tests"][kind]]
        counts = {
            "tests": len(tests),
            "failures": sum(t["outcome"] in FAILURE_OUTCOMES for _, t in tests),
            "errors": sum(t["outcome"] in ERROR_OUTCOMES for _, t in tests),
            "skipped": sum(t["outcome"] == "skipped" for _, t in tests),
        }
        suite = ET.SubElement(root, "testsuite", name=f"{lesson}: {entry['title']}",
                              **{k: str(v) for k, v in counts.items()})
        props = ET.SubElement(suite, "properties")
        for key in ("score", "points"):
            ET.SubElement(props, "property", name=key, value=str(entry[key]))
        for kind, test in tests:
            _junit_case(suite, lesson, kind, test)
        totals = {k: totals[k] + counts[k] for k in totals}
    root.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _write(path: str, text: str) -> None:
    """Write ``text`` to ``path``, making its folder; a clear UsageError when that fails."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_outputs(report: dict, json_file: str | None, junit: str | None, classroom: str | None,
                  github_output=None) -> None:
    """Write every requested output file, and ``result=`` to GitHub's step output (an open file) when given."""
    if json_file:
        _write(json_file, json.dumps(report, indent=2, sort_keys=True) + "\n")
    if junit:
        _write(junit, junit_xml(report))
    encoded = encode_classroom(classroom_result(report))
    if classroom:
        _write(classroom, encoded + "\n")
    if github_output is not None:
        try:
            github_output.write(f"result={encoded}\n")
            github_output.flush()
        except OSError as exc:
            raise UsageError(f"cannot append to $GITHUB_OUTPUT: {exc.strerror or exc}") from exc


def print_summary(report: dict) -> None:
    """A table of lessons and points."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="AIOS autograde", title_justify="left")
    for name, justify in (("#", "right"), ("Lesson", "left"), ("Visible", "right"), ("Hidden", "right"),
                          ("Points", "right")):
        table.add_column(name, justify=justify)
    for e in report["lessons"]:
        style = "green" if e["score"] == e["points"] else "red" if e["score"] == 0 else "yellow"
        table.add_row(str(e["lesson"]), escape(e["title"]), f"{e['visible']['passed']}/{e['visible']['total']}",
                      f"{e['hidden']['passed']}/{e['hidden']['total']}", f"[{style}]{e['score']}/{e['points']}[/]")
    out = board.console()
    out.print(table)
    out.print(f"total: {report['score']}/{report['max_score']} points")
    out.print(escape(report["isolation"]), soft_wrap=True)
