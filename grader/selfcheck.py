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

from rich.table import Table

from grader import board, stubgen
from grader.curriculum import Curriculum, Lesson, derived_symbols
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


def run_many(root: Path, paths: list[str], impl: str, timeout: int) -> list[TestResult]:
    """Run every existing path (batched) and return all tests and collection errors."""
    existing = [p for p in paths if (root / p).exists()]
    results: list[TestResult] = []
    for group in batches(root, existing):
        run: RunResult = run_pytest(root, group, impl=impl, test_timeout=None, run_timeout=timeout)
        results.extend(run.tests)
        results.extend(run.collect_errors)
        for note in run.notes:
            results.extend(TestResult(f"{path} (run)", "error", note) for path in group)
    return results


def under(results: list[TestResult], prefix: str) -> list[TestResult]:
    """The results whose node id lies under ``prefix`` (run notes on it included)."""
    prefix = prefix.rstrip("/")
    return [r for r in results if r.nodeid.startswith((prefix + "/", prefix + " ")) or r.nodeid == prefix]


def static_checks(curriculum: Curriculum, lessons: list[Lesson]) -> list[str]:
    """Marker, drift and curriculum checks; returns the defects found."""
    root = curriculum.root
    defects = []
    try:
        expected = stubgen.generate(root / "solutions" / "aios")
        drift = stubgen.diff_trees(expected, stubgen.read_tree(root / "aios"))
        if drift:
            defects.append("aios/ differs from `python -m grader.stubgen` output:\n  " + "\n  ".join(drift[:20]))
        marked = derived_symbols(root)
    except stubgen.MarkerError as exc:
        return [f"solution markers: {exc}"]
    known = {lesson.id for lesson in curriculum.lessons}
    for lesson_id in sorted(set(marked) - known):
        defects.append(f"solution regions name lesson {lesson_id}, which the curriculum does not have")
    for lesson in lessons:
        if lesson.symbols is not None and sorted(lesson.symbols) != sorted(marked.get(lesson.id, [])):
            defects.append(f"lesson {lesson.id}: curriculum symbols {sorted(lesson.symbols)} "
                           f"!= markers {sorted(marked.get(lesson.id, []))}")
    return defects


def stubbed_results(curriculum: Curriculum, lesson: Lesson, tmp: Path) -> list[TestResult]:
    """Lesson N's tests against a tree where only lesson N is stubbed."""
    files = stubgen.generate(curriculum.root / "solutions" / "aios", only=lesson.id)
    parent = tmp / f"lesson{lesson.id:02d}"
    stubgen.write_tree(files, parent)
    return run_many(curriculum.root, [lesson.visible, lesson.hidden], str(parent), lesson.timeout * 2)


def run(curriculum: Curriculum, only: list[int] | None = None, skip_infra: bool = False) -> int:
    """Run all checks, print the table, return the exit status."""
    started = time.monotonic()
    lessons = [l for l in curriculum.ready() if only is None or l.id in only]
    out = board.console()
    defects = static_checks(curriculum, lessons)
    marked = derived_symbols(curriculum.root) if not any(d.startswith("solution markers") for d in defects) else {}
    paths = [p for l in lessons for p in (l.visible, l.hidden)] + ([] if skip_infra else [INFRA])
    out.print(f"selfcheck: reference run over {len(paths)} suites ...")
    reference = run_many(curriculum.root, paths, "reference", RUN_TIMEOUT)
    table = Table(title="selfcheck", title_justify="left")
    for name in ("Lesson", "Reference pass/total", "Stubbed fail/total", "Verdict"):
        table.add_column(name)
    good = bad = 0
    with tempfile.TemporaryDirectory(prefix="aios-selfcheck-") as tmp:
        for lesson in lessons:
            ref = under(reference, lesson.visible) + under(reference, lesson.hidden)
            problems = [f"reference: {r.nodeid}: {r.outcome}: {board.shorten(r.message)}" for r in ref if not r.ok]
            stub_cell = "n/a (no regions)"
            if not ref:
                problems.append("no tests")
            if marked.get(lesson.id) and ref:
                out.print(f"selfcheck: lesson {lesson.id} with only its regions stubbed ...")
                stubbed = stubbed_results(curriculum, lesson, Path(tmp))
                ran = [r for r in stubbed if r.outcome != "skipped"]
                failing = [r for r in ran if not r.ok]
                stub_cell = f"{len(failing)}/{len(ran)}"
                problems += [f"stubbed: {r.nodeid} passed without lesson {lesson.id}'s code" for r in ran if r.ok]
                good += len(failing)
            good += sum(1 for r in ref if r.ok)
            bad += len(problems)
            passed = sum(1 for r in ref if r.outcome == "passed")
            verdict = "[green]ok[/]" if not problems else f"[red]{len(problems)} defect(s)[/]"
            table.add_row(f"{lesson.id} {lesson.title}", f"{passed}/{len(ref)}", stub_cell, verdict)
            defects += [f"lesson {lesson.id}: {p}" for p in problems]
    if not skip_infra:
        infra = under(reference, INFRA)
        problems = [f"infra: {r.nodeid}: {r.outcome}: {board.shorten(r.message)}" for r in infra if not r.ok]
        if not infra:
            problems.append("infra: no tests")
        good += sum(1 for r in infra if r.ok)
        bad += len(problems)
        passed = sum(1 for r in infra if r.outcome == "passed")
        table.add_row("infra", f"{passed}/{len(infra)}", "-",
                      "[green]ok[/]" if not problems else f"[red]{len(problems)} defect(s)[/]")
        defects += problems
    out.print(table)
    static = [d for d in defects if not d.startswith(("lesson ", "infra: "))]
    bad += len(static)
    for defect in defects:
        out.print(f"[red]DEFECT[/] ", end="")
        out.print(defect, markup=False)
    out.print(f"selfcheck took {time.monotonic() - started:.0f} s")
    print(f"selfcheck: {good} passed, {bad} failed")
    return 1 if defects else 0
