"""Watch mode: grade the lesson again every time a Python file under ``aios/`` changes.

    python -m grader watch        # follow the current lesson, and the next one once it passes
    python -m grader watch 3      # start with lesson 3
    nox -s watch

Changes are found by polling file modification times (standard library only, about
once a second). Ctrl-C stops it. ``watch_loop`` takes its grader, change source and
wait as arguments so that tests can drive it without sleeping or running pytest.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path
from typing import Callable

from grader import board
from grader import progress as prog
from grader.curriculum import Curriculum, Lesson

POLL_SECONDS = 1.0
Snapshot = dict[str, tuple[int, int]]


def snapshot(folder: Path) -> Snapshot:
    """``relative path -> (mtime in ns, size)`` of every ``.py`` file under ``folder``."""
    files: Snapshot = {}
    for path in folder.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        try:
            info = path.stat()
        except OSError:  # deleted between the listing and the stat
            continue
        files[path.relative_to(folder).as_posix()] = (info.st_mtime_ns, info.st_size)
    return files


class ChangeDetector:
    """Calling it returns the ``.py`` files added, removed or modified since the last call."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.last = snapshot(folder)

    def __call__(self) -> list[str]:
        now = snapshot(self.folder)
        changed = sorted(p for p in set(now) | set(self.last) if now.get(p) != self.last.get(p))
        self.last = now
        return changed


def _start_lesson(curriculum: Curriculum, lesson_id: int | None) -> Lesson | None:
    """Lesson ``lesson_id`` (checked to be gradable), or the current lesson when it is None."""
    progress = prog.load(curriculum.root)
    if lesson_id is None:
        return prog.current_lesson(curriculum, progress)
    lesson = curriculum.get(lesson_id)
    if not lesson.ready:
        raise ValueError(f"lesson {lesson.id} ({lesson.title}) is coming soon; it cannot be graded yet")
    blocker = prog.blocking_prerequisite(curriculum, progress, lesson)
    if blocker is not None:
        raise ValueError(f"lesson {lesson.id} is locked: finish lesson {blocker} first")
    return lesson


def watch_loop(
    curriculum: Curriculum,
    lesson_id: int | None,
    *,
    grade: Callable[[Lesson], bool],
    changes: Callable[[], list[str]],
    wait: Callable[[], None],
    say: Callable[[str], None],
    max_polls: int | None = None,
) -> int:
    """Grade, then re-grade after each change; move on to the next lesson when one passes.

    ``grade(lesson)`` grades and returns whether it passed; ``changes()`` lists the files
    changed since its last call; ``wait()`` pauses between polls. Stops after ``max_polls``
    polls (never when None) or once every ready lesson has passed. Returns the exit status.
    """
    try:
        lesson = _start_lesson(curriculum, lesson_id)
    except (KeyError, ValueError) as exc:
        say(f"watch: {exc.args[0]}")
        return 2
    if lesson is None:
        say("Every ready lesson has passed: nothing to watch.")
        return 0
    say(f"Watching aios/ for lesson {lesson.id} ({lesson.title}); Ctrl-C stops.")
    passed = grade(lesson)
    polls = 0
    while max_polls is None or polls < max_polls:
        if passed:
            following = prog.current_lesson(curriculum, prog.load(curriculum.root))
            if following is None:
                say("Every ready lesson has passed. Well done!")
                return 0
            if following.id != lesson.id:
                say(f"Lesson {lesson.id} passed: now watching lesson {following.id} ({following.title}), "
                    f"see {following.readme}")
            lesson, passed = following, False
        wait()
        polls += 1
        changed = changes()
        if changed:
            say(_separator(lesson, changed))
            passed = grade(lesson)
    return 0


def _separator(lesson: Lesson, changed: list[str]) -> str:
    """The line printed before a re-grade: time, what changed, which lesson."""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    return f"──── {stamp}  changed: {shown}  ·  grading lesson {lesson.id} ────"


def _grade_and_show(curriculum: Curriculum, lesson: Lesson) -> bool:
    """Grade the learner's tree like ``python -m grader grade N`` does; return whether it passed."""
    from grader.cli import grade_and_record

    result = grade_and_record(curriculum, prog.load(curriculum.root), lesson, "learner")
    board.print_grade(result)
    return result["passed"]


def _say_on(console) -> Callable[[str], None]:
    """Print messages; clear the terminal before a re-grade's separator line."""

    def say(message: str) -> None:
        if message.startswith("────") and console.is_terminal:
            console.clear()
        console.print(message, markup=False, soft_wrap=True)

    return say


def cmd_watch(args, curriculum: Curriculum) -> int:
    """``watch [N]``: re-grade on every change under aios/ until Ctrl-C."""
    folder = curriculum.root / "aios"
    if not folder.is_dir():
        print(f"watch: {folder} not found", file=sys.stderr)
        return 2
    detector = ChangeDetector(folder)
    try:
        return watch_loop(
            curriculum, args.lesson,
            grade=lambda lesson: _grade_and_show(curriculum, lesson),
            changes=lambda: [f"aios/{path}" for path in detector()],
            wait=lambda: time.sleep(args.interval),
            say=_say_on(board.console()),
        )
    except KeyboardInterrupt:
        print("\nStopped watching.")
        return 0


def register(subparsers) -> None:
    """Add ``watch`` to ``python -m grader``."""
    parser = subparsers.add_parser("watch", help="re-grade the current lesson (or N) whenever aios/ changes")
    parser.add_argument("lesson", type=int, nargs="?")
    parser.add_argument("--interval", type=float, default=POLL_SECONDS, help="seconds between polls (default 1)")
    parser.set_defaults(handler=cmd_watch)
