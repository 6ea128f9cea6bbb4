"""The mutant catalogue (grader/mutants): every mutant is a well-formed bug, and the runner tells killed from survived.

The lint half reads the real catalogue and the reference: each mutant's text occurs once,
its change lies inside a solution region of its own lesson, the planted file still
compiles, and each ready lesson with solution regions has at least MIN_PER_LESSON mutants.
The runner half grades two mutants of a synthetic repository end to end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from synthetic_repo import write_files

from grader import curriculum as cur
from grader import stubgen
from grader.mutants import Mutant, load, summary_line
from grader.mutants import run as mutants_run

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
MIN_PER_LESSON = 8
CATALOGUE = load()
REGIONS = stubgen.scan_regions(SOLUTIONS / "aios")


def lessons_with_regions() -> list[int]:
    """Ready lessons of the curriculum that have solution regions in the reference."""
    ready = {lesson.id for lesson in cur.load(REPO).ready()}
    return sorted(ready & {r.lesson for r in REGIONS})


def changed_lines(source: str, mutant: Mutant) -> tuple[int, int]:
    """First and last line (1-based) of ``source`` that the mutant changes (context lines left out)."""
    start = source.index(mutant.find)
    prefix = len(os.path.commonprefix([mutant.find, mutant.replace]))
    suffix = len(os.path.commonprefix([mutant.find[prefix:][::-1], mutant.replace[prefix:][::-1]]))
    first = source.count("\n", 0, start + prefix) + 1
    last = source.count("\n", 0, max(start + len(mutant.find) - suffix - 1, start + prefix)) + 1
    return first, last


@pytest.mark.parametrize("mutant", CATALOGUE, ids=[m.key for m in CATALOGUE])
def test_mutant_applies_inside_its_lessons_region_and_compiles(mutant):
    """find occurs exactly once, the change is inside a lesson-N region, the result compiles."""
    path = SOLUTIONS / mutant.file
    assert path.is_file(), f"no file solutions/{mutant.file}"
    source = path.read_text(encoding="utf-8")
    planted = mutant.apply(source)
    compile(planted, str(path), "exec")
    first, last = changed_lines(source, mutant)
    regions = [r for r in REGIONS if r.path == mutant.file and r.lesson == mutant.lesson]
    assert any(r.begin < first and last < r.end for r in regions), (
        f"lines {first}-{last} of {mutant.file} are in no 'BEGIN SOLUTION lesson{mutant.lesson}' region")
    assert mutant.bug.strip() and mutant.name == mutant.name.strip().lower().replace(" ", "-")


def test_mutant_names_are_unique_per_lesson():
    keys = [m.key for m in CATALOGUE]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("lesson", sorted({m.lesson for m in CATALOGUE}))
def test_each_catalogue_has_enough_mutants(lesson):
    """A lesson's catalogue, once it exists, holds at least MIN_PER_LESSON mutants."""
    assert lesson in lessons_with_regions(), f"lesson {lesson} is not ready or has no solution regions"
    assert sum(m.lesson == lesson for m in CATALOGUE) >= MIN_PER_LESSON


def test_every_ready_lesson_with_regions_has_a_catalogue():
    missing = [n for n in lessons_with_regions() if not any(m.lesson == n for m in CATALOGUE)]
    assert not missing, f"lessons without grader/mutants/lessonNN.py: {missing}"


def test_selfcheck_line_reports_the_catalogue():
    line = summary_line(REPO)
    assert line.startswith(f"mutant catalogue: {len(CATALOGUE)} mutants in ")


# ---------------------------------------------------------------- the runner, end to end

SYNTHETIC = {
    "grader/curriculum.toml": """
        [defaults]
        test_timeout = 30

        [[lesson]]
        id = 1
        title = "Doubling"
        status = "ready"
        prerequisites = []
        """,
    "conftest.py": """
        import os
        import sys

        sys.path.insert(0, os.environ["AIOS_IMPL"])
        """,
    "solutions/aios/__init__.py": "",
    "solutions/aios/double.py": """
        def double(x):
            # BEGIN SOLUTION lesson1
            return x + x
            # END SOLUTION
        """,
    "tests/lesson01/test_double.py": """
        from aios.double import double

        def test_small():
            assert double(2) == 4
        """,
    "grader/hidden/lesson01/test_double_hidden.py": """
        from aios.double import double

        def test_negative():
            '''double works for negative numbers.'''
            assert double(-3) == -6
        """,
}

KILLED = Mutant(1, "square", "aios/double.py", find="return x + x", replace="return x * x",
                bug="squares instead of doubling (2 * 2 == 2 + 2 hides it for 2)")
SURVIVOR = Mutant(1, "shift", "aios/double.py", find="return x + x", replace="return x << 1",
                  bug="a shift doubles every int, so no test can tell")


def test_runner_reports_the_killer_and_the_survivor(tmp_path, capsys):
    """A mutant the hidden suite catches is killed by that test; an equivalent one survives."""
    root = write_files(tmp_path / "repo", SYNTHETIC)
    curriculum = cur.load(root)
    killed = mutants_run.grade_mutant(curriculum, KILLED, tmp_path / "scratch")
    survivor = mutants_run.grade_mutant(curriculum, SURVIVOR, tmp_path / "scratch")
    assert killed.killed and killed.killer == "grader/hidden/lesson01/test_double_hidden.py::test_negative"
    assert "assert 9 == -6" in killed.message
    assert not survivor.killed and survivor.killer == ""
    mutants_run.summary([killed, survivor])
    assert "lesson  1: 1/2 killed; survived: shift" in capsys.readouterr().out
    results = root / "docs" / "mutants-results.json"
    mutants_run.record(results, [killed, survivor], [1], "python -m grader mutants")
    entry = json.loads(results.read_text())["lessons"]["1"]
    assert entry["mutants"] == 2 and entry["killed"] == 1 and entry["survived"] == ["lesson01/shift"]
    assert not list((tmp_path / "scratch").iterdir()), "the planted trees are removed"
    control = mutants_run.Control(curriculum)
    assert mutants_run.confirm(killed, control).killed  # its killing test passes on the reference


def test_a_kill_by_a_test_that_fails_on_the_reference_is_inconclusive(tmp_path):
    broken = {"tests/lesson01/test_broken.py": "def test_broken():\n    assert False\n"}
    root = write_files(tmp_path / "repo", {**SYNTHETIC, **broken})
    curriculum = cur.load(root)
    outcome = mutants_run.grade_mutant(curriculum, SURVIVOR, tmp_path / "scratch")
    assert outcome.killed and outcome.killer == "tests/lesson01/test_broken.py::test_broken"
    outcome = mutants_run.confirm(outcome, mutants_run.Control(curriculum))
    assert not outcome.killed and outcome.inconclusive and "fails on the reference too" in outcome.message


def test_sample_is_one_per_lesson_and_repeats_with_its_seed():
    first = mutants_run.choose(CATALOGUE, None, 1, 7)
    assert sorted(m.lesson for m in first) == sorted({m.lesson for m in CATALOGUE})
    assert mutants_run.choose(CATALOGUE, None, 1, 7) == first
