"""``python -m grader mutants``: plant each catalogued bug in a copy of the reference and grade it.

    python -m grader mutants [--lessons 1,6] [--only NAME[,NAME]] [--sample K --seed S] [--json FILE]

For each mutant: copy ``solutions/aios`` to a scratch folder, apply the mutant, and run the
lesson's visible then hidden suite through the grader's runner (``grader/runner.py``, the
same per-test timeouts and crash handling as ``grade``), stopping at the first failure.
A mutant is *killed* when a test fails, errors, times out or crashes; it *survived* when
every test that ran passed. Exit status: 0 when every mutant run was killed, 1 otherwise,
2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grader import curriculum as cur
from grader.mutants import CatalogueError, Mutant, load
from grader.runner import run_pytest


@dataclass
class Outcome:
    """What happened to one mutant."""

    key: str
    bug: str
    killed: bool
    killer: str = ""
    message: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def plant(root: Path, mutant: Mutant, scratch: Path) -> Path:
    """A fresh copy of ``solutions/aios`` under ``scratch`` with ``mutant`` applied; returns its parent."""
    tree = scratch / mutant.key.replace("/", "-")
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(root / "solutions" / "aios", tree / "aios",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = tree / mutant.file
    if not target.is_file():
        raise CatalogueError(f"{mutant.key}: no file solutions/{mutant.file}")
    target.write_text(mutant.apply(target.read_text(encoding="utf-8")), encoding="utf-8")
    return tree


def grade_mutant(curriculum: cur.Curriculum, mutant: Mutant, scratch: Path) -> Outcome:
    """Run the mutant's lesson suites (visible, then hidden) until a test kills it."""
    lesson = curriculum.get(mutant.lesson)
    tree = plant(curriculum.root, mutant, scratch)
    started = time.monotonic()
    outcome = Outcome(mutant.key, mutant.bug, killed=False)
    for suite in (lesson.visible, lesson.hidden):
        if not (curriculum.root / suite).exists():
            continue
        run = run_pytest(curriculum.root, [suite], impl=str(tree), test_timeout=lesson.test_timeout,
                         run_timeout=lesson.timeout, extra_args=["-x", "-p", "no:randomly"])
        bad = [t for t in run.collect_errors + run.tests if not t.ok and t.outcome != "not run"]
        outcome.notes += run.notes
        if bad:
            outcome.killed, outcome.killer = True, bad[0].nodeid
            outcome.message = bad[0].message.strip().splitlines()[-1][:200] if bad[0].message.strip() else bad[0].outcome
            break
    outcome.seconds = time.monotonic() - started
    shutil.rmtree(tree, ignore_errors=True)
    return outcome


def choose(mutants: list[Mutant], only: str | None, sample: int | None, seed: int) -> list[Mutant]:
    """The mutants to run: by name, or a seeded sample of ``sample`` per lesson, or all."""
    if only:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        chosen = [m for m in mutants if m.name in wanted or m.key in wanted]
        unknown = wanted - {m.name for m in chosen} - {m.key for m in chosen}
        if unknown:
            raise CatalogueError("no such mutant: " + ", ".join(sorted(unknown)))
        return chosen
    if sample is None:
        return mutants
    rng = random.Random(seed)
    chosen = []
    for lesson in sorted({m.lesson for m in mutants}):
        pool = [m for m in mutants if m.lesson == lesson]
        chosen += rng.sample(pool, min(sample, len(pool)))
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m grader.mutants``."""
    parser = argparse.ArgumentParser(prog="python -m grader mutants", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), cur.load(None))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mutants``."""
    parser.add_argument("--lessons", help="comma-separated lesson ids (default: every catalogued lesson)")
    parser.add_argument("--only", help="comma-separated mutant names (name or lessonNN/name)")
    parser.add_argument("--sample", type=int, help="run this many mutants per lesson, chosen with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--json", dest="json_file", metavar="FILE", help="write every outcome as JSON")


def run(args, curriculum: cur.Curriculum) -> int:
    """Grade the chosen mutants, print one line each and a summary per lesson."""
    try:
        lessons = [int(x) for x in args.lessons.split(",")] if args.lessons else None
        mutants = choose(load(lessons), args.only, args.sample, args.seed)
    except (CatalogueError, ValueError) as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        return 2
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="aios-mutants-") as scratch:
        for mutant in mutants:
            try:
                outcome = grade_mutant(curriculum, mutant, Path(scratch))
            except CatalogueError as exc:
                print(f"mutants: {exc}", file=sys.stderr)
                return 2
            outcomes.append(outcome)
            verdict = f"killed by {outcome.killer}" if outcome.killed else "SURVIVED"
            print(f"{outcome.key:<55} {verdict} ({outcome.seconds:.0f} s)", flush=True)
    summary(outcomes)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps([o.__dict__ for o in outcomes], indent=2), encoding="utf-8")
    return 0 if all(o.killed for o in outcomes) else 1


def summary(outcomes: list[Outcome]) -> None:
    """Killed/total per lesson and overall."""
    lessons = sorted({int(o.key[6:8]) for o in outcomes})
    for lesson in lessons:
        mine = [o for o in outcomes if int(o.key[6:8]) == lesson]
        print(f"lesson {lesson:2d}: {sum(o.killed for o in mine)}/{len(mine)} killed")
    print(f"mutants: {sum(o.killed for o in outcomes)} killed, {sum(not o.killed for o in outcomes)} survived")
