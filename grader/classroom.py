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
``P * passed // counted`` points, where ``counted`` is the visible and hidden tests that ran
(skipped ones, such as GPU tests on a CPU runner, count for neither) plus files that failed
to import. Full points only when every counted test passes; 0 when none ran.

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
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from grader import board
from grader import curriculum as cur
from grader.cli import grade_lesson
from grader.curriculum import Curriculum, Lesson

RUNNER_ID = "aios"
#: Variables the code under test must not see: GitHub's step files (a test could append a
#: forged ``result=`` to $GITHUB_OUTPUT) and tokens. Names starting with ACTIONS_ go too.
HIDDEN_FROM_TESTS = ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STATE", "GITHUB_STEP_SUMMARY",
                     "GITHUB_TOKEN")
FAILURE_OUTCOMES = ("failed",)
ERROR_OUTCOMES = ("error", "timeout", "crashed", "not run")
MAX_FAILING_NAMES = 5


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
            tests_from, impl = _sources(args, curriculum, stack)
            lessons = choose_lessons(tests_from, args.lessons)
            for path in (args.json_file, args.junit, args.classroom):
                if path:
                    _write(path, "")  # fail on an unwritable path now, not after grading
            github_output = os.environ.get("GITHUB_OUTPUT")
            with _hidden_from_tests():
                report = autograde(tests_from, lessons, impl)
            write_outputs(report, args.json_file, args.junit, args.classroom, github_output)
        except UsageError as exc:
            print(f"autograde: {exc}", file=sys.stderr)
            return 2
    print_summary(report)
    return 0


def _sources(args, curriculum: Curriculum, stack: contextlib.ExitStack) -> tuple[Curriculum, str]:
    """The curriculum whose tests run, and the ``AIOS_IMPL`` value of the tree graded."""
    if not args.bundle:
        return curriculum, _impl_value(args.impl or "learner")
    if args.impl:
        raise UsageError("--impl and --bundle do not go together: with --bundle the graded aios/ is --root's")
    bundle = open_bundle(Path(args.bundle), stack)
    learner = stack.enter_context(tempfile.TemporaryDirectory(prefix="aios-learner-"))
    try:
        tests_from = cur.load(bundle)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--bundle {args.bundle}: unreadable grader/curriculum.toml ({exc})") from exc
    return tests_from, str(copy_learner_tree(curriculum.root, Path(learner)))


def _impl_value(impl: str) -> str:
    """``learner``, ``reference`` or an existing directory holding ``aios/`` (absolute)."""
    if impl in ("learner", "reference"):
        return impl
    path = Path(impl).resolve()
    if not (path / "aios" / "__init__.py").is_file():
        raise UsageError(f"--impl {impl}: no aios/ package in that directory")
    return str(path)


def open_bundle(path: Path, stack: contextlib.ExitStack) -> Path:
    """The bundle's folder: ``path`` itself, or a temporary folder the .tar.gz is unpacked into."""
    if path.is_file():
        target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aios-bundle-")))
        try:
            with tarfile.open(path) as archive:
                archive.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"--bundle {path}: cannot unpack it ({exc})") from exc
        folders = [p for p in target.iterdir() if p.is_dir()]
        path = folders[0] if len(folders) == 1 and not (target / "grader").is_dir() else target
    if not (path / "grader" / "curriculum.toml").is_file():
        raise UsageError(f"--bundle {path}: not an autograder bundle (no grader/curriculum.toml); "
                         "make one with `python -m grader release OUT`")
    return path.resolve()


def copy_learner_tree(student: Path, target: Path) -> Path:
    """Copy ``student/aios`` (and nothing else of the student's checkout) under ``target``."""
    source = student / "aios"
    if not (source / "__init__.py").is_file():
        raise UsageError(f"{student}: no aios/ package to grade (pass the student's checkout with --root)")
    shutil.copytree(source, target / "aios", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


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


def score_lesson(lesson: Lesson, grade: dict) -> dict:
    """One lesson's entry of the report, from ``grade_lesson``'s record."""
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
            "visible": [{"name": t["name"], "outcome": t["outcome"], "message": board.shorten(t["message"] or "")}
                        for t in grade["tests"]["visible"]],
            "hidden": [{"name": t["name"], "outcome": t["outcome"], "message": t["stub"] or t["hint"] or ""}
                       for t in grade["tests"]["hidden"]],
        },
        "notes": grade["notes"],
    }


def autograde(curriculum: Curriculum, lessons: list[Lesson], impl: str) -> dict:
    """Grade ``lessons`` against ``impl`` and return the report (no timings: it is deterministic)."""
    entries = [score_lesson(lesson, grade_lesson(curriculum, lesson, impl)) for lesson in lessons]
    return {
        "version": 1,
        "scoring": "points * passed // counted per lesson (skipped tests not counted)",
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
                  github_output: str | None) -> None:
    """Write every requested output file (and GitHub's step output when set)."""
    if json_file:
        _write(json_file, json.dumps(report, indent=2, sort_keys=True) + "\n")
    if junit:
        _write(junit, junit_xml(report))
    encoded = encode_classroom(classroom_result(report))
    if classroom:
        _write(classroom, encoded + "\n")
    if github_output:
        try:
            with open(github_output, "a", encoding="utf-8") as out:
                out.write(f"result={encoded}\n")
        except OSError as exc:
            raise UsageError(f"cannot append to $GITHUB_OUTPUT ({github_output}): {exc.strerror or exc}") from exc


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
