"""Lesson hints: the ``### Hint k`` sections under a README's ``## Hints``.

Hints come in layers, from a nudge to nearly the answer (never the solution code).
A test names the hint that addresses its failure with ``@pytest.mark.hint(k)``; a failed
grade shows the hint of the first failing test that names one (hint 1 when none does),
and each ``python -m grader hint N`` reveals the next layer, up to the last.
``.aios/progress.json`` remembers how many layers the learner has seen.
"""

from __future__ import annotations

import re
from pathlib import Path

from grader.curriculum import Curriculum, Lesson
from grader.progress import Progress

HINT_HEADING = re.compile(r"^###\s+Hint\s+(\d+)\b.*$")


def read_hints(readme: Path) -> list[str]:
    """The hint texts in order (an empty list without README or ``## Hints`` section)."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return []
    hints: list[list[str]] = []
    current: list[str] | None = None
    in_section = False
    for line in text.splitlines():
        if line.startswith("# ") or line.startswith("## "):
            in_section = line.startswith("## ") and line[3:].strip().lower() == "hints"
            current = None
        elif not in_section:
            continue
        elif HINT_HEADING.match(line):
            current = []
            hints.append(current)
        elif line.startswith("### "):
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(h).strip() for h in hints]


def lesson_hints(curriculum: Curriculum, lesson: Lesson) -> list[str]:
    """The hints of ``lesson``'s README."""
    return read_hints(curriculum.root / lesson.readme)


def revealed(progress: Progress, lesson: Lesson) -> int:
    """How many hints of the lesson the learner has seen."""
    return progress.hints.get(str(lesson.id), 0)


def hint_counts(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> tuple[int, int]:
    """``(revealed, total)`` hints of the lesson."""
    total = len(lesson_hints(curriculum, lesson))
    return min(revealed(progress, lesson), total), total


def next_hint_advice(lesson: Lesson, revealed_count: int, total: int) -> str:
    """The line telling the learner how to see more hints (or that none are left)."""
    if total == 0:
        return f"lesson {lesson.id} has no hints; read {lesson.readme}"
    if revealed_count >= total:
        return (f"all {total} hints of lesson {lesson.id} are shown (python -m grader hint {lesson.id} "
                f"shows the last again); stuck? python -m grader checkout-reference {lesson.id}")
    return f"python -m grader hint {lesson.id} for the next hint ({revealed_count + 1} of {total})"


def reveal_next(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> tuple[int, int, str | None]:
    """Reveal one more hint: ``(number shown, total, text)``; text None when there are none.

    Once all are revealed, the last one is shown again.
    """
    hints = lesson_hints(curriculum, lesson)
    if not hints:
        return 0, 0, None
    number = min(revealed(progress, lesson) + 1, len(hints))
    progress.hints[str(lesson.id)] = number
    return number, len(hints), hints[number - 1]


def failure_hint(curriculum: Curriculum, progress: Progress, lesson: Lesson,
                 number: int | None = None) -> tuple[int, str] | None:
    """The hint shown after a failed grade: ``(its number, its text)``, None without hints.

    ``number`` is the hint that the first failing test names (``@pytest.mark.hint(k)``, see
    :func:`target`); without one, or when the README has no such hint, it is hint 1. The
    layers up to it count as seen, so ``python -m grader hint N`` goes on with the next one.
    """
    hints = lesson_hints(curriculum, lesson)
    if not hints:
        return None
    shown = number if number and 1 <= number <= len(hints) else 1
    progress.hints[str(lesson.id)] = max(shown, revealed(progress, lesson))
    return shown, hints[shown - 1]


def target(tests: list) -> int | None:
    """The hint number of the first failing test that names one (runner TestResults, in run order)."""
    return next((t.hint for t in tests if not t.ok and t.hint), None)
