"""Lesson hints: the ``### Hint k`` sections under a README's ``## Hints``."""

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


def first_hint(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> str | None:
    """Hint 1 (marked as seen), shown after a failed grade."""
    hints = lesson_hints(curriculum, lesson)
    if not hints:
        return None
    progress.hints[str(lesson.id)] = max(1, revealed(progress, lesson))
    return hints[0]
