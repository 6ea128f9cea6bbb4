"""What the learner sees: the progress board and the result of a grade."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grader import hints as hint_layers
from grader import progress as prog
from grader import testcount
from grader.curriculum import Curriculum, Lesson

STATE_STYLE = {"passed": "green", "unlocked": "yellow", "locked": "dim", "coming": "dim italic"}
OUTCOME_STYLE = {"passed": "green", "skipped": "cyan"}  # any other outcome is a failure: red
MAX_MESSAGE_LINES = 3
MAX_MESSAGE_CHARS = 300


def console() -> Console:
    """A console on the current stdout (no syntax highlighting; 100 columns when not a terminal)."""
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=max(out.width, 100))


def _counts(root: Path, grade: dict | None, suite: str, collected: dict[str, int], path: str) -> dict:
    """``{"passed", "total"}`` for one suite: from the last grade, else pytest's collected count."""
    if grade and suite in grade:
        return {"passed": grade[suite]["passed"], "total": grade[suite]["total"]}
    return {"passed": 0, "total": collected.get(path, 0 if not testcount.suite_exists(root, path) else None)}


def _ungraded_suites(curriculum: Curriculum, progress: prog.Progress, states: tuple[str, ...]) -> list[str]:
    """The suites of lessons never graded whose state is one of ``states``."""
    return [suite for lesson in curriculum.lessons
            if progress.grade(lesson.id) is None and prog.state(curriculum, progress, lesson) in states
            for suite in (lesson.visible, lesson.hidden)]


def _total(counts: dict) -> str:
    """``passed/total``, with ``?`` for a total not counted yet (a locked lesson)."""
    return f"{counts['passed']}/{'?' if counts['total'] is None else counts['total']}"


def benchmark_text(lesson: Lesson, grade: dict | None) -> str:
    """The GPU benchmark cell: none, not run yet, passed, failed, or skipped with its reason."""
    if not lesson.benchmarks:
        return "none"
    if grade is None:
        return "not run yet"
    result = grade.get("benchmark")
    if not result:
        return "not recorded (grade again)"
    if result["status"] == "passed":
        return "passed"
    return f"{result['status']}: {result.get('detail', '')}".rstrip(": ")


def next_steps(curriculum: Curriculum, progress: prog.Progress, lesson: Lesson | None) -> dict | None:
    """What to do next for the current lesson: its README and the commands to grade and get hints."""
    if lesson is None:
        return None
    revealed, total = hint_layers.hint_counts(curriculum, progress, lesson)
    return {
        "lesson": lesson.id,
        "title": lesson.title,
        "readme": lesson.readme,
        "grade": f"python -m grader grade {lesson.id}",
        "watch": f"python -m grader watch {lesson.id}",
        "hint": f"python -m grader hint {lesson.id}",
        "hints_revealed": revealed,
        "hints_total": total,
        "hints_left": total - revealed,
        "catch_up": f"python -m grader checkout-reference {lesson.id}",
    }


def status_data(curriculum: Curriculum, progress: prog.Progress) -> dict:
    """The board as JSON-ready data (schema in the README of the grader); fields are only ever added."""
    current = prog.current_lesson(curriculum, progress)
    # Open lessons are counted now (seconds, once); locked ones only show a count kept from before.
    collected = testcount.collected_counts(curriculum.root, _ungraded_suites(curriculum, progress, ("unlocked",)))
    collected.update(testcount.collected_counts(curriculum.root, _ungraded_suites(curriculum, progress, ("locked",)),
                                                collect=False))
    rows = []
    for lesson in curriculum.lessons:
        grade = progress.grade(lesson.id)
        revealed, total = hint_layers.hint_counts(curriculum, progress, lesson)
        rows.append(
            {
                "lesson": lesson.id,
                "title": lesson.title,
                "state": prog.state(curriculum, progress, lesson),
                "visible": _counts(curriculum.root, grade, "visible", collected, lesson.visible),
                "hidden": _counts(curriculum.root, grade, "hidden", collected, lesson.hidden),
                "points": lesson.points,
                "graded": grade is not None,
                "from_reference": progress.shown_from_reference(lesson.id),
                "by_force": prog.by_force(curriculum, progress, lesson),
                "open_before": prog.open_prerequisites(curriculum, progress, lesson),
                "benchmark": (grade or {}).get("benchmark"),
                "benchmark_text": benchmark_text(lesson, grade),
                "hints": {"revealed": revealed, "total": total},
            }
        )
    return {"lessons": rows, "current": current.id if current else None,
            "next": next_steps(curriculum, progress, current)}


def _open_text(lessons: list[int]) -> str:
    """``lesson 3 still open`` or ``lessons 1-4 still open`` (the earlier lessons a forced one skipped)."""
    if len(lessons) == 1:
        return f"lesson {lessons[0]} still open"
    span = f"{lessons[0]}-{lessons[-1]}" if lessons == list(range(lessons[0], lessons[-1] + 1)) else ", ".join(map(str, lessons))
    return f"lessons {span} still open"


def print_board(curriculum: Curriculum, progress: prog.Progress) -> None:
    """Print the progress board as a table."""
    data = status_data(curriculum, progress)
    table = Table(title="AIOS progress", title_justify="left")
    for name, justify in (("#", "right"), ("Lesson", "left"), ("State", "left"), ("Visible", "right"),
                          ("Hidden", "right"), ("GPU benchmark", "left")):
        table.add_column(name, justify=justify)
    for row in data["lessons"]:
        state = row["state"]
        shown = "coming soon" if state == "coming" else state
        reference = " [magenta](from reference)[/]" if row["from_reference"] else ""
        if row["by_force"]:
            reference += " [red](by force)[/]"
        marker = " <" if row["lesson"] == data["current"] else ""
        table.add_row(
            str(row["lesson"]),
            escape(row["title"]),
            f"[{STATE_STYLE[state]}]{shown}[/]{reference}{marker}",
            "-" if state == "coming" else _total(row["visible"]),
            "-" if state == "coming" else _total(row["hidden"]),
            "-" if state == "coming" else escape(row["benchmark_text"]),
        )
    out = console()
    out.print(table)
    for row in data["lessons"]:
        if row["by_force"]:
            out.print(f"[red]lesson {row['lesson']} {row['state']} by force[/] (grade --force): "
                      f"{_open_text(row['open_before'])}")
    earned = sum(r["points"] for r in data["lessons"] if r["state"] == "passed")
    possible = sum(r["points"] for r in data["lessons"])
    tail = f"current lesson: {data['current']}" if data["current"] is not None else "no open lesson left"
    out.print(f"points: {earned}/{possible}   {tail}")
    _print_next_steps(out, data["next"])


def _print_next_steps(out: Console, steps: dict | None) -> None:
    """The "what to do next" block under the board."""
    if steps is None:
        out.print("\nNothing left to do: every ready lesson has passed.")
        return
    hints_line = (f"{steps['hint']}   ({steps['hints_left']} of {steps['hints_total']} hints left)"
                  if steps["hints_total"] else "(this lesson has no hints)")
    lines = [
        ("lesson", f"{steps['lesson']}: {steps['title']}"),
        ("read", steps["readme"]),
        ("grade", f"{steps['grade']}   (or re-grade on every save: {steps['watch']})"),
        ("hint", hints_line),
        ("stuck", f"{steps['catch_up']}   (take the reference code; python -m grader restore-mine "
                  f"{steps['lesson']} puts yours back)"),
    ]
    out.print("\n[bold]What to do next[/]")
    for label, text in lines:
        out.print(f"  {label:7}", end="")
        out.print(text, markup=False, soft_wrap=True)


def shorten(message: str) -> str:
    """The first few non-empty lines of a failure message, capped in length."""
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    text = "\n".join(lines[:MAX_MESSAGE_LINES])
    if len(lines) > MAX_MESSAGE_LINES:
        text += "\n..."
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def _indent(text: str, prefix: str = "      ") -> str:
    """Indent every line of ``text``."""
    return "\n".join(prefix + line for line in text.splitlines())


def print_grade(result: dict) -> None:
    """Print a grade: visible tests with short messages, hidden ones with name and hint only."""
    out = console()
    out.print(f"[bold]Lesson {result['lesson']}: {escape(result['title'])}[/]  ({escape(result['impl'])})")
    for suite in ("visible", "hidden"):
        counts = result[suite]
        out.print(f"\n[bold]{suite} tests[/]: {counts['passed']}/{counts['total']} passed"
                  + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))
        for test in result["tests"][suite]:
            _print_test(out, suite, test)
    if any(not t["ok"] for t in result["tests"]["visible"]) and result.get("log"):
        out.print(f"\nfull output of the visible tests: {result['log']}", markup=False, soft_wrap=True)
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if result.get("benchmark"):
        bench = result["benchmark"]
        out.print(f"\nGPU benchmark: {bench['status']}" + (f": {bench['detail']}" if bench.get("detail") else ""),
                  markup=False, soft_wrap=True)
    verdict = "[green]PASSED[/]" if result["passed"] else "[red]NOT PASSED[/]"
    reference = " (with the reference code of checkout-reference)" if result.get("from_reference") else ""
    out.print(f"\nLesson {result['lesson']}: {verdict}{reference}")
    if result.get("unlocked"):
        out.print("Unlocked: " + ", ".join(f"lesson {i}" for i in result["unlocked"]))
    if result.get("hint"):
        _print_failure_hint(out, result)
    if not result.get("recorded", True):
        out.print(f"(progress not recorded: graded against {result['impl']})", markup=False)


def _print_failure_hint(out: Console, result: dict) -> None:
    """The failing test's hint (else hint 1) after a failed grade, where the hints live, and how to see the next."""
    layers = result.get("hints") or {}
    total = layers.get("total")
    out.print(f"\n[bold]Hint {layers.get('shown') or 1}[/]" + (f" of {total}" if total else "")
              + (f" (from {layers['readme']})" if layers.get("readme") else ""), soft_wrap=True)
    out.print(result["hint"], markup=False)
    if layers.get("next"):
        out.print("\n" + layers["next"], markup=False, soft_wrap=True)


def _print_test(out: Console, suite: str, test: dict) -> None:
    """One line (plus a short message for visible failures) for a test."""
    outcome = test["outcome"]
    style = OUTCOME_STYLE.get(outcome, "red")
    out.print(f"  [{style}]{outcome.upper():8}[/] ", end="")
    out.print(test["name"], markup=False)
    if test.get("ok"):
        if outcome == "skipped" and suite == "visible" and test.get("message"):
            out.print(_indent("skipped: " + shorten(test["message"])), markup=False, soft_wrap=True)
        return
    lines = []
    if suite == "hidden":
        lines += ["hint: " + test["hint"]] if test.get("hint") else []
        lines += [test["stub"]] if test.get("stub") else []
    else:
        lines += [shorten(test["message"])] if test.get("message") else []
        lines += ["at " + test["location"]] if test.get("location") else []
    for line in lines:
        out.print(_indent(line), markup=False, soft_wrap=True)
