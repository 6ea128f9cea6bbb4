"""The mutant catalogue: plausible wrong implementations of each lesson's functions.

A mutant is one bug a learner really writes (a dtype cast in the wrong place, an
off-by-one at a block boundary, a missing reset ...), written as an exact text
substitution inside one file of the reference engine (``solutions/aios/...``).
``python -m grader mutants`` applies each mutant to a scratch copy of the reference
and runs that lesson's visible and hidden suites: the mutant must be *killed* (at least
one test fails). A surviving mutant is a gap in the tests.

Catalogues live in ``grader/mutants/lessonNN.py``, each defining ``MUTANTS``, a list of
:class:`Mutant`. They hold solution code, so they are maintainer material: never shipped
to students nor in the autograder bundle (grader/release.py).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

CATALOGUE_RE = re.compile(r"^lesson(\d\d)\.py$")
#: Where ``python -m grader mutants --record`` keeps the last full run of each lesson.
RESULTS_FILE = "docs/mutants-results.json"


class CatalogueError(Exception):
    """A mutant that cannot be applied (its text is not found exactly once)."""


@dataclass(frozen=True)
class Mutant:
    """One realistic bug in one lesson function.

    lesson: the lesson whose suites must kill it.
    name: a short unique slug, e.g. ``rmsnorm-weight-before-cast``.
    file: the file it changes, relative to ``solutions/`` (``aios/layers/layernorm.py``).
    find: text of the reference that occurs exactly once in ``file``.
    replace: what the learner wrote instead.
    bug: one sentence, in the learner's terms, of what is wrong.
    """

    lesson: int
    name: str
    file: str
    find: str
    replace: str
    bug: str

    @property
    def key(self) -> str:
        """``lessonNN/name``, unique across the catalogue."""
        return f"lesson{self.lesson:02d}/{self.name}"

    def apply(self, source: str) -> str:
        """``source`` with the bug planted; CatalogueError unless ``find`` occurs exactly once."""
        count = source.count(self.find)
        if count != 1:
            raise CatalogueError(f"{self.key}: the text to replace occurs {count} times in {self.file} (needs 1)")
        if self.find == self.replace:
            raise CatalogueError(f"{self.key}: find and replace are the same text")
        return source.replace(self.find, self.replace)


def catalogue_files() -> list[Path]:
    """Every ``lessonNN.py`` catalogue beside this file, in lesson order."""
    here = Path(__file__).resolve().parent
    return sorted(p for p in here.iterdir() if CATALOGUE_RE.match(p.name))


def load(lessons: list[int] | None = None) -> list[Mutant]:
    """The catalogued mutants of ``lessons`` (default: all), in lesson then file order."""
    mutants: list[Mutant] = []
    for path in catalogue_files():
        lesson = int(CATALOGUE_RE.match(path.name).group(1))
        if lessons is not None and lesson not in lessons:
            continue
        module = importlib.import_module(f"grader.mutants.{path.stem}")
        for mutant in module.MUTANTS:
            if mutant.lesson != lesson:
                raise CatalogueError(f"{path.name}: mutant {mutant.name} says lesson {mutant.lesson}")
            mutants.append(mutant)
    names = [m.key for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CatalogueError("duplicate mutant names: " + ", ".join(duplicates))
    return mutants


def summary_line(root: Path) -> str:
    """One line for the selfcheck summary: the catalogue's size and the recorded kill rate.

    Reads the results file written by ``--record``; it never runs a mutant.
    """
    mutants = load()
    lessons = sorted({m.lesson for m in mutants})
    line = f"mutant catalogue: {len(mutants)} mutants in {len(lessons)} lessons"
    try:
        recorded = json.loads((root / RESULTS_FILE).read_text(encoding="utf-8"))["lessons"]
    except (OSError, ValueError, KeyError):
        return line + f"; no recorded run ({RESULTS_FILE}; python -m grader mutants --record)"
    runs = [recorded[str(lesson)] for lesson in lessons if str(lesson) in recorded]
    if not runs:
        return line + f"; no recorded run of these lessons in {RESULTS_FILE}"
    killed, total = sum(r["killed"] for r in runs), sum(r["mutants"] for r in runs)
    dates = sorted({r["date"] for r in runs})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}"
    unrecorded = [str(lesson) for lesson in lessons if str(lesson) not in recorded]
    stale = [str(lesson) for lesson in lessons if str(lesson) in recorded
             and recorded[str(lesson)]["mutants"] != sum(m.lesson == lesson for m in mutants)]
    line += f"; last full run {when}: {killed}/{total} killed ({RESULTS_FILE})"
    if unrecorded:
        line += f"; never run in full: lessons {', '.join(unrecorded)}"
    if stale:
        line += f"; catalogue changed since: lessons {', '.join(stale)}"
    return line
