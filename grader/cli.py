"""``python -m grader``: status, grade, hint and selfcheck.

    python -m grader status [--json]
    python -m grader grade [N] [--json] [--force] [--impl learner|reference|PATH]
    python -m grader hint N
    python -m grader selfcheck [--lessons 1,2]
    python -m grader watch [N]                 (grader/watch.py)
    python -m grader checkout-reference N      (grader/catchup.py; restore-mine N undoes it)
    python -m grader mutants [--lessons 1,6]   (grader/mutants/run.py; maintainers only)

``--root DIR`` (or ``$AIOS_ROOT``) points the grader at another checkout.
Exit status of ``grade``: 0 passed, 1 not passed, 2 refused (locked, coming, unknown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

from grader import board, hints
from grader import curriculum as cur
from grader.curriculum import Lesson
from grader import progress as prog
from grader.runner import Confinement, RunResult, TestResult, cuda_available, run_pytest

STUB_RE = re.compile(r"^NotImplementedError: (Lesson \d+: .*)$", re.M)


def _suite_counts(run: RunResult) -> dict:
    """Pass/total/skip/fail counts of one suite run (``skipped``: excused skips only)."""
    failed = run.total - run.passed - run.excused + len(run.collect_errors)
    return {"passed": run.passed, "total": run.total, "skipped": run.excused, "failed": failed}


def _stub_message(message: str) -> str:
    """The stub's own text when a test failed on a NotImplementedError stub, else ''."""
    match = STUB_RE.search(message or "")
    return match.group(1) if match else ""


def _relative(location: str, root: Path) -> str:
    """``path:line`` relative to the repository when it lies inside it."""
    path, sep, line = location.rpartition(":")
    try:
        return f"{Path(path).resolve().relative_to(root)}{sep}{line}" if path else location
    except ValueError:
        return location


def _visible_entries(run: RunResult, root: Path) -> list[dict]:
    """Visible tests as shown: name, outcome, short message, location."""
    entries = [{"name": t.nodeid, "outcome": t.outcome, "ok": t.ok, "message": t.message,
                "location": _relative(t.location, root)} for t in run.tests]
    entries += [{"name": c.nodeid, "outcome": "error", "ok": False, "message": c.message, "location": ""}
                for c in run.collect_errors]
    return entries


def _short_name(nodeid: str) -> str:
    """``file.py::test`` without the folders (they reveal nothing useful for hidden tests)."""
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest}" if rest else Path(path).name


def _hidden_entries(run: RunResult) -> list[dict]:
    """Hidden tests as shown: name, outcome and one-line hint; never source or assertion text."""
    entries = [{"name": _short_name(t.nodeid), "outcome": t.outcome, "ok": t.ok,
                "hint": t.doc, "stub": _stub_message(t.message)} for t in run.tests]
    entries += [{"name": Path(c.nodeid).name, "outcome": "error", "ok": False,
                 "hint": "this hidden test file could not be imported; make the visible tests pass first",
                 "stub": _stub_message(c.message)} for c in run.collect_errors]
    return entries


def _run_suite(curriculum: cur.Curriculum, lesson: Lesson, suite: str, impl: str, log: Path | None,
               confine: Confinement | None = None) -> RunResult:
    """Run one of the lesson's suites; a missing folder is an empty suite."""
    rel = lesson.visible if suite == "visible" else lesson.hidden
    if not (curriculum.root / rel).exists():
        return RunResult()
    return run_pytest(curriculum.root, [rel], impl=impl, test_timeout=lesson.test_timeout,
                      run_timeout=lesson.timeout, log_path=log, confine=confine)


def _in_benchmarks(nodeid: str, benchmarks: tuple[str, ...]) -> bool:
    """Whether a test id lies in one of the lesson's benchmark files/folders/node ids."""
    return any(nodeid == b or nodeid.startswith(b.rstrip("/") + ("::" if b.endswith(".py") else "/"))
               for b in benchmarks)


def _summarise_benchmark(tests: list[TestResult]) -> dict:
    """``{"status": passed|failed|skipped, "detail": ...}`` for the benchmark tests of a run."""
    if not tests:
        return {"status": "skipped", "detail": "no benchmark test was collected"}
    bad = [t for t in tests if not t.ok]
    if bad:
        first = bad[0]
        return {"status": "failed", "detail": f"{first.name}: {board.shorten(first.message or first.outcome)}"}
    if all(t.outcome == "skipped" for t in tests):
        reason = tests[0].message.removeprefix("Skipped: ").strip() or "skipped"
        return {"status": "skipped", "detail": reason}
    return {"status": "passed", "detail": f"{sum(t.ok for t in tests)}/{len(tests)} passed"}


def benchmark_outcome(curriculum: cur.Curriculum, lesson: Lesson, visible: RunResult, impl: str,
                      confine: Confinement | None = None) -> dict | None:
    """The lesson's GPU benchmark result (None when it has none).

    Benchmarks inside the visible suite already ran with it (the root conftest skips them
    without CUDA). Others run here, and only on a machine with a CUDA GPU.
    """
    if not lesson.benchmarks:
        return None
    ran = [t for t in visible.tests if _in_benchmarks(t.nodeid, lesson.benchmarks)]
    if ran:
        return _summarise_benchmark(ran)
    if not cuda_available():
        return {"status": "skipped", "detail": "needs a CUDA GPU"}
    run = run_pytest(curriculum.root, list(lesson.benchmarks), impl=impl, test_timeout=None,
                     run_timeout=lesson.timeout, confine=confine)
    return _summarise_benchmark(run.tests + run.collect_errors)


def grade_lesson(curriculum: cur.Curriculum, lesson: Lesson, impl: str, confine: Confinement | None = None) -> dict:
    """Run the visible then the hidden suite of ``lesson``; return the grade record.

    ``confine`` (classroom grading) runs every suite confined (grader/runner.py, Confinement).
    """
    logs = curriculum.root / ".aios" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    visible = _run_suite(curriculum, lesson, "visible", impl, logs / f"lesson{lesson.id:02d}-visible.log", confine)
    hidden = _run_suite(curriculum, lesson, "hidden", impl, None, confine)
    notes = list(visible.notes) + [f"hidden suite: {n}" for n in hidden.notes]
    if visible.log_tail:
        notes.append("last lines of the visible run's output:\n" + visible.log_tail)
    total = visible.total + hidden.total
    if total == 0:
        notes.append(f"no tests found in {lesson.visible} or {lesson.hidden}")
    return {
        "lesson": lesson.id,
        "title": lesson.title,
        "impl": impl,
        "passed": visible.ok and hidden.ok and total > 0,
        "graded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(visible.seconds + hidden.seconds, 1),
        "visible": _suite_counts(visible),
        "hidden": _suite_counts(hidden),
        "benchmark": benchmark_outcome(curriculum, lesson, visible, impl, confine),
        "hint_target": hints.target(visible.tests + hidden.tests),
        "tests": {"visible": _visible_entries(visible, curriculum.root), "hidden": _hidden_entries(hidden)},
        "notes": notes,
        "log": str((logs / f"lesson{lesson.id:02d}-visible.log").relative_to(curriculum.root)),
    }


def _stored_grade(grade: dict) -> dict:
    """What progress.json keeps of a grade: counts and outcomes, no messages."""
    keep = {k: grade[k] for k in ("passed", "graded_at", "impl", "visible", "hidden")}
    keep.update({k: grade[k] for k in ("benchmark", "from_reference") if k in grade})
    keep["tests"] = {s: {t["name"]: t["outcome"] for t in grade["tests"][s]} for s in ("visible", "hidden")}
    return keep


def grade_and_record(curriculum: cur.Curriculum, progress: prog.Progress, lesson: Lesson, impl: str) -> dict:
    """Grade ``lesson``; for the learner's tree record it in ``progress`` (saved); add a hint on failure.

    The hint is the one the first failing test names (``@pytest.mark.hint(k)``), else hint 1.
    """
    result = grade_lesson(curriculum, lesson, impl)
    result["recorded"] = impl == "learner"
    if result["recorded"]:
        result["from_reference"] = progress.taken_from_reference(lesson.id)
        result["unlocked"] = prog.record_grade(curriculum, progress, lesson, _stored_grade(result))
    if not result["passed"]:
        shown = hints.failure_hint(curriculum, progress, lesson, result["hint_target"])
        result["hint"] = shown[1] if shown else None
        revealed, total = hints.hint_counts(curriculum, progress, lesson)
        result["hints"] = {"shown": shown[0] if shown else None, "revealed": revealed, "total": total,
                           "readme": f"{lesson.readme}#hints",
                           "next": hints.next_hint_advice(lesson, revealed, total)}
    if result["recorded"] or result.get("hint"):
        prog.save(curriculum.root, progress)
    return result


def cmd_grade(args, curriculum: cur.Curriculum) -> int:
    """``grade [N]``: grade one lesson (the current one when N is omitted)."""
    progress = prog.load(curriculum.root)
    impl = args.impl or "learner"
    if impl not in ("learner", "reference"):
        impl = str(Path(impl).resolve())
    if args.lesson is None:
        lesson = prog.current_lesson(curriculum, progress)
        if lesson is None:
            print("Every ready lesson has passed. Well done!" if curriculum.ready() else "No lesson is ready yet.")
            if not args.json:
                board.print_board(curriculum, progress)
            return 0
    else:
        try:
            lesson = curriculum.get(args.lesson)
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
    if not lesson.ready and not args.force:
        print(f"Lesson {lesson.id} ({lesson.title}) is coming soon; it cannot be graded yet.")
        return 2
    blocker = prog.blocking_prerequisite(curriculum, progress, lesson)
    if blocker is not None and not args.force:
        print(f"Lesson {lesson.id} is locked: finish lesson {blocker} first "
              f"(python -m grader grade {blocker}), or pass --force.")
        return 2
    result = grade_and_record(curriculum, progress, lesson, impl)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        board.print_grade(result)
        if args.lesson is None:
            print()
            board.print_board(curriculum, progress)
    return 0 if result["passed"] else 1


def cmd_status(args, curriculum: cur.Curriculum) -> int:
    """``status``: the progress board."""
    progress = prog.load(curriculum.root)
    if args.json:
        print(json.dumps(board.status_data(curriculum, progress), indent=2))
    else:
        board.print_board(curriculum, progress)
    return 0


def cmd_hint(args, curriculum: cur.Curriculum) -> int:
    """``hint N``: reveal the next hint of lesson N."""
    try:
        lesson = curriculum.get(args.lesson)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    progress = prog.load(curriculum.root)
    number, total, text = hints.reveal_next(curriculum, progress, lesson)
    if text is None:
        print(f"Lesson {lesson.id} has no hints yet ({lesson.readme}).")
        return 0
    prog.save(curriculum.root, progress)
    print(f"Lesson {lesson.id}, hint {number} of {total} (from {lesson.readme}, section 'Hints'):\n")
    print(text)
    print()
    if number == total:
        print("(That was the last hint.)")
    print(hints.next_hint_advice(lesson, number, total))
    return 0


def cmd_selfcheck(args, curriculum: cur.Curriculum) -> int:
    """``selfcheck``: the honesty checks (see grader/selfcheck.py)."""
    from grader import selfcheck

    lessons = [int(x) for x in args.lessons.split(",") if x.strip()] if args.lessons else None
    return selfcheck.run(curriculum, lessons, skip_infra=args.skip_infra)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m grader``."""
    parser = argparse.ArgumentParser(prog="python -m grader", description="AIOS grader")
    parser.add_argument("--root", help="repository root (default: $AIOS_ROOT or this checkout)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="show the progress board")
    status.add_argument("--json", action="store_true")
    grade = sub.add_parser("grade", help="grade a lesson (default: the current one)")
    grade.add_argument("lesson", type=int, nargs="?")
    grade.add_argument("--json", action="store_true")
    grade.add_argument("--force", action="store_true", help="grade even if locked or coming")
    grade.add_argument("--impl", help="learner (default), reference, or a directory holding aios/")
    hint = sub.add_parser("hint", help="reveal the next hint of a lesson")
    hint.add_argument("lesson", type=int)
    check = sub.add_parser("selfcheck", help="check the tests against the reference and the stubs")
    check.add_argument("--lessons", help="comma-separated lesson ids (default: every ready lesson)")
    check.add_argument("--skip-infra", action="store_true", help="do not run tests/infra")
    for module in _command_modules():
        module.register(sub)
    return parser


#: Modules that add their own subcommands: each has ``register(subparsers)``, which adds its
#: parsers and sets ``handler=function(args, curriculum) -> int`` through ``set_defaults``.
COMMAND_MODULES = ("catchup", "watch", "classroom", "release", "compare")
#: Maintainer-only command modules, registered when present. grader/release.py ships
#: COMMAND_MODULES; these never leave the instructor's repository (the mutant catalogue
#: holds solution code), so the student's grader simply has no such subcommand.
MAINTAINER_COMMAND_MODULES = ("mutants.run",)


def _command_modules() -> list:
    """Import the modules listed in ``COMMAND_MODULES`` and the maintainer ones that exist."""
    import importlib
    import importlib.util

    modules = [importlib.import_module(f"grader.{name}") for name in COMMAND_MODULES]
    present = [n for n in MAINTAINER_COMMAND_MODULES if importlib.util.find_spec(f"grader.{n.split('.')[0]}")]
    return modules + [importlib.import_module(f"grader.{name}") for name in present]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    curriculum = cur.load(args.root)
    handlers = {"status": cmd_status, "grade": cmd_grade, "hint": cmd_hint, "selfcheck": cmd_selfcheck}
    handler = getattr(args, "handler", None) or handlers[args.command]
    return handler(args, curriculum)
