"""The learner's progress, kept in ``<root>/.aios/progress.json`` (gitignored).

Layout::

    {"version": 1,
     "lessons": {"1": {"passed": true, "graded_at": "...", "impl": "learner",
                       "visible": {"passed": 7, "total": 7, "skipped": 0},
                       "hidden":  {"passed": 3, "total": 3, "skipped": 0},
                       "tests": {"tests/lesson01/test_x.py::test_y": "passed", ...}}},
     "unlocked": [0, 1, 2],
     "hints": {"1": 2},
     "reference": {"3": {"taken_at": "...", "files": {"aios/x.py": "<sha256 written>"}}}}

``reference`` lists the lessons whose code was taken from the reference engine with
``python -m grader checkout-reference N`` (see grader/catchup.py) and not restored yet.
A grade recorded while that was so carries ``"from_reference": true``.

Unlocking is sticky: once a lesson's prerequisites have passed it stays open,
even if a later regrade of an earlier lesson fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.curriculum import Curriculum, Lesson

VERSION = 1


def progress_path(root: Path) -> Path:
    """Where the progress file lives."""
    return root / ".aios" / "progress.json"


@dataclass
class Progress:
    """Grades, unlocked lessons and revealed hints."""

    lessons: dict[str, dict] = field(default_factory=dict)
    unlocked: set[int] = field(default_factory=set)
    hints: dict[str, int] = field(default_factory=dict)
    reference: dict[str, dict] = field(default_factory=dict)

    def grade(self, lesson_id: int) -> dict | None:
        """The last recorded grade of a lesson, if any."""
        return self.lessons.get(str(lesson_id))

    def passed(self, lesson_id: int) -> bool:
        """Whether the lesson's last grade passed."""
        grade = self.grade(lesson_id)
        return bool(grade and grade.get("passed"))

    def taken_from_reference(self, lesson_id: int) -> bool:
        """Whether the lesson's code is the reference's now (checkout-reference, not restored)."""
        return str(lesson_id) in self.reference

    def shown_from_reference(self, lesson_id: int) -> bool:
        """Whether the board marks the lesson "from reference": taken now, or graded while taken."""
        grade = self.grade(lesson_id) or {}
        return self.taken_from_reference(lesson_id) or bool(grade.get("from_reference"))


def load(root: Path) -> Progress:
    """Read the progress file (an empty Progress when there is none or it is unreadable)."""
    path = progress_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Progress()
    return Progress(
        lessons=dict(data.get("lessons", {})),
        unlocked={int(i) for i in data.get("unlocked", [])},
        hints={str(k): int(v) for k, v in data.get("hints", {}).items()},
        reference={str(k): dict(v) for k, v in data.get("reference", {}).items()},
    )


def save(root: Path, progress: Progress) -> None:
    """Write the progress file atomically."""
    path = progress_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": VERSION,
        "lessons": progress.lessons,
        "unlocked": sorted(progress.unlocked),
        "hints": progress.hints,
        "reference": progress.reference,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def is_unlocked(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> bool:
    """Open when every prerequisite passed, or when it was opened before."""
    if lesson.id in progress.unlocked:
        return True
    return all(progress.passed(p) for p in lesson.prerequisites)


def state(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> str:
    """One of ``coming``, ``passed``, ``unlocked`` or ``locked``."""
    if not lesson.ready:
        return "coming"
    if progress.passed(lesson.id):
        return "passed"
    return "unlocked" if is_unlocked(curriculum, progress, lesson) else "locked"


def open_prerequisites(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> list[int]:
    """Lessons before ``lesson`` in its prerequisite chain (transitively) that have not passed."""
    missing: list[int] = []
    todo = list(lesson.prerequisites)
    seen: set[int] = set()
    while todo:
        lesson_id = todo.pop()
        if lesson_id in seen:
            continue
        seen.add(lesson_id)
        if not progress.passed(lesson_id):
            missing.append(lesson_id)
        try:
            todo.extend(curriculum.get(lesson_id).prerequisites)
        except KeyError:
            continue
    return sorted(missing)


def by_force(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> bool:
    """Whether an open or passed lesson got there with ``grade --force`` while lessons before it are still open."""
    return state(curriculum, progress, lesson) in ("unlocked", "passed") and bool(
        open_prerequisites(curriculum, progress, lesson))


def blocking_prerequisite(curriculum: Curriculum, progress: Progress, lesson: Lesson) -> int | None:
    """The first prerequisite still to pass (None when the lesson is open)."""
    if is_unlocked(curriculum, progress, lesson):
        return None
    for prereq in lesson.prerequisites:
        if not progress.passed(prereq):
            return prereq
    return None


def current_lesson(curriculum: Curriculum, progress: Progress) -> Lesson | None:
    """The lowest ready lesson that is unlocked and not passed yet."""
    for lesson in curriculum.ready():
        if state(curriculum, progress, lesson) == "unlocked":
            return lesson
    return None


def record_grade(curriculum: Curriculum, progress: Progress, lesson: Lesson, grade: dict) -> list[int]:
    """Store ``grade`` for ``lesson``; return the lessons this newly unlocks."""
    progress.lessons[str(lesson.id)] = grade
    progress.unlocked.add(lesson.id)
    newly = []
    for other in curriculum.lessons:
        if other.id in progress.unlocked:
            continue
        if other.prerequisites and all(progress.passed(p) for p in other.prerequisites):
            progress.unlocked.add(other.id)
            newly.append(other.id)
    return newly
