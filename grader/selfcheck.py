"""``python -m grader selfcheck``: are the tests honest?

1. Every visible and hidden test of every ready lesson passes against the reference
   (``AIOS_IMPL=reference``), and so does ``tests/infra``. One pytest run covers them all
   (split only where two test files would import under the same module name).
2. For each ready lesson N, a tree with only lesson N stubbed (``stubgen --only N``) makes
   every test of lesson N that runs fail or error: a test that still passes checks nothing
   of lesson N and is listed as a defect.
3. ``aios/`` is what ``python -m grader.stubgen`` generates, the markers are well formed,
   and each lesson's symbols in curriculum.toml (when listed) match the markers.

Prints one row per lesson and exits non-zero on any defect.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from grader import board, remote, stubgen
from grader.curriculum import DEFAULT_TEST_TIMEOUT, Curriculum, Lesson, derived_symbols
from grader.runner import RunResult, TestResult, run_pytest

INFRA = "tests/infra"
RUN_TIMEOUT = 1800


def module_name(test_file: Path) -> str:
    """The module name pytest's default import mode gives a test file."""
    parts = [test_file.stem]
    folder = test_file.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def batches(root: Path, paths: list[str]) -> list[list[str]]:
    """Group suite paths so that no two test files in a group share a module name."""
    groups: list[tuple[list[str], set[str]]] = []
    for rel in paths:
        names = {module_name(f) for f in (root / rel).rglob("*.py")} if (root / rel).is_dir() else set()
        for group, seen in groups:
            if not names & seen:
                group.append(rel)
                seen |= names
                break
        else:
            groups.append(([rel], set(names)))
    return [group for group, _ in groups]


def run_many(root: Path, paths: list[str], impl: str, timeout: int, test_timeout: int) -> list[TestResult]:
    """Run every existing path (batched) and return all tests and collection errors."""
    existing = [p for p in paths if (root / p).exists()]
    results: list[TestResult] = []
    # Suites through the learner worker and suites run as is never share a pytest run.
    split = [[p for p in existing if remote.wanted([p]) == flag] for flag in (True, False)]
    for group in [group for part in split for group in batches(root, part)]:
        run: RunResult = run_pytest(root, group, impl=impl, test_timeout=test_timeout, run_timeout=timeout)
        results.extend(run.tests)
        results.extend(run.collect_errors)
        for note in run.notes:
            results.extend(TestResult(f"{path} (run)", "error", note) for path in group)
    return results


def under(results: list[TestResult], prefix: str) -> list[TestResult]:
    """The results whose node id lies under ``prefix`` (run notes on it included)."""
    prefix = prefix.rstrip("/")
    return [r for r in results if r.nodeid.startswith((prefix + "/", prefix + " ")) or r.nodeid == prefix]


def static_checks(curriculum: Curriculum, lessons: list[Lesson]) -> tuple[list[str], dict[int, list[str]]]:
    """Marker, drift and curriculum checks: ``(defects, symbols per lesson from the markers)``."""
    root = curriculum.root
    defects = []
    try:
        expected = stubgen.generate(root / "solutions" / "aios")
        marked = derived_symbols(root)
    except stubgen.MarkerError as exc:
        return [f"solution markers: {exc}"], {}
    drift = stubgen.diff_trees(expected, stubgen.read_tree(root / "aios"))
    if drift:
        more = [f"... and {len(drift) - 20} more lines"] if len(drift) > 20 else []
        defects.append("aios/ differs from `python -m grader.stubgen` output (run it to regenerate):\n  "
                       + "\n  ".join(drift[:20] + more))
    known = {lesson.id for lesson in curriculum.lessons}
    for lesson_id in sorted(set(marked) - known):
        defects.append(f"solution regions name lesson {lesson_id}, which the curriculum does not have")
    for lesson in lessons:
        if lesson.symbols is not None and sorted(lesson.symbols) != sorted(marked.get(lesson.id, [])):
            defects.append(f"curriculum symbols of lesson {lesson.id} {sorted(lesson.symbols)} "
                           f"!= markers {sorted(marked.get(lesson.id, []))}")
    return defects, marked


def stubbed_results(curriculum: Curriculum, lesson: Lesson, tmp: Path) -> list[TestResult]:
    """Lesson N's tests against a tree where only lesson N is stubbed."""
    files = stubgen.generate(curriculum.root / "solutions" / "aios", only=lesson.id)
    parent = tmp / f"lesson{lesson.id:02d}"
    stubgen.write_tree(files, parent)
    return run_many(curriculum.root, [lesson.visible, lesson.hidden], str(parent), lesson.timeout * 2,
                    lesson.test_timeout)


def reference_problems(results: list[TestResult]) -> list[str]:
    """Tests that are not ok against the reference: not passed and not an excused skip (runner.TestResult.ok)."""
    return [f"reference: {r.nodeid}: {r.outcome}: {board.shorten(r.message)}" for r in results if not r.ok]


class Report:
    """The table rows, the defects and the pass/fail tally of a selfcheck."""

    def __init__(self) -> None:
        self.table = Table(title="selfcheck", title_justify="left")
        for name in ("Lesson", "Reference pass/total", "Stubbed fail/total", "Verdict"):
            self.table.add_column(name)
        self.defects: list[str] = []
        self.good = 0

    def row(self, label: str, ref: list[TestResult], stub_cell: str, problems: list[str], prefix: str) -> None:
        """Add one row and its defects."""
        passed = sum(1 for r in ref if r.outcome == "passed")
        verdict = "[green]ok[/]" if not problems else f"[red]{len(problems)} defect(s)[/]"
        self.table.add_row(escape(label), f"{passed}/{len(ref)}", stub_cell, verdict)
        self.good += sum(1 for r in ref if r.ok)
        self.defects += [f"{prefix}: {p}" for p in problems]


def check_lesson(curriculum: Curriculum, lesson: Lesson, reference: list[TestResult], marked: dict,
                 tmp: Path, report: Report) -> None:
    """Reference results of one lesson, then its tests against the lesson-stubbed tree."""
    ref = under(reference, lesson.visible) + under(reference, lesson.hidden)
    problems = reference_problems(ref) + ([] if ref else ["no tests"])
    problems += [f"hidden test {r.nodeid} has no docstring (its first line is the hint the grader shows)"
                 for r in under(reference, lesson.hidden) if not r.doc and "::" in r.nodeid]
    stub_cell = "n/a (no regions)"
    if marked.get(lesson.id) and ref:
        board.console().print(f"selfcheck: lesson {lesson.id} with only its regions stubbed ...")
        ran = [r for r in stubbed_results(curriculum, lesson, tmp) if r.outcome != "skipped"]
        failing = [r for r in ran if not r.ok]
        stub_cell = f"{len(failing)}/{len(ran)}"
        problems += [f"stubbed: {r.nodeid} passed without lesson {lesson.id}'s code" for r in ran if r.ok]
        report.good += len(failing)
    report.row(f"{lesson.id} {lesson.title}", ref, stub_cell, problems, f"lesson {lesson.id}")


def mutant_summary(root: Path) -> str:
    """The mutant catalogue's size and recorded kill rate (grader/mutants); no mutant is run here."""
    try:
        from grader.mutants import summary_line
    except ImportError:  # the student repository has no catalogue
        return "mutant catalogue: not in this repository"
    try:
        return summary_line(root)
    except Exception as exc:  # a catalogue being edited must not break the honesty checks
        return f"mutant catalogue: cannot be loaded: {exc}"


def run(curriculum: Curriculum, only: list[int] | None = None, skip_infra: bool = False) -> int:
    """Run all checks, print the table, return the exit status."""
    started = time.monotonic()
    lessons = [l for l in curriculum.ready() if only is None or l.id in only]
    out = board.console()
    static, marked = static_checks(curriculum, lessons)
    paths = [p for l in lessons for p in (l.visible, l.hidden)] + ([] if skip_infra else [INFRA])
    out.print(f"selfcheck: reference run over {len(paths)} suites ...")
    test_timeout = max([l.test_timeout for l in lessons] + [DEFAULT_TEST_TIMEOUT])
    reference = run_many(curriculum.root, paths, "reference", RUN_TIMEOUT, test_timeout)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="aios-selfcheck-") as tmp:
        for lesson in lessons:
            check_lesson(curriculum, lesson, reference, marked, Path(tmp), report)
    if not skip_infra:
        infra = under(reference, INFRA)
        report.row("infra", infra, "-", reference_problems(infra) + ([] if infra else ["no tests"]), "infra")
    out.print(report.table)
    defects = static + report.defects
    for defect in defects:
        out.print("[red]DEFECT[/] ", end="")
        out.print(defect, markup=False, soft_wrap=True)
    out.print(mutant_summary(curriculum.root), markup=False)
    out.print(f"selfcheck took {time.monotonic() - started:.0f} s")
    print(f"selfcheck: {report.good} passed, {len(defects)} failed")
    return 1 if defects else 0
