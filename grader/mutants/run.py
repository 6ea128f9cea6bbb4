"""``python -m grader mutants``: plant each catalogued bug in a copy of the reference and grade it.

    python -m grader mutants [--lessons 1,6] [--only NAME[,NAME]] [--sample K --seed S]
                             [--jobs N] [--json FILE] [--record]

For each mutant: copy ``solutions/aios`` to a scratch folder, apply the mutant, and run the
lesson's visible then hidden suite through the grader's runner (``grader/runner.py``, the
same per-test timeouts and crash handling as ``grade``), stopping at the first failure.
Both suites go in one pytest process (visible files first) unless two of their files would
import under the same module name (``selfcheck.batches``): one interpreter start-up, torch
imported once. A mutant is *killed* when a test fails, errors, times out or crashes, and that
test passes on the unmutated reference (checked once per killing test: see Control); it
*survived* when every test that ran passed; it is *inconclusive* when its killing test
fails on the reference as well.

``--sample K --seed S`` runs K mutants per lesson, chosen with seed S (CI runs a rotating
sample; the seed is printed so that a run can be repeated). ``--record`` writes the figures
of each lesson run in full to ``docs/mutants-results.json``, which ``selfcheck`` reports.

Exit status: 0 when every mutant run was killed, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grader import curriculum as cur
from grader.mutants import RESULTS_FILE, CatalogueError, Mutant, load
from grader.runner import run_pytest
from grader.selfcheck import batches


@dataclass
class Outcome:
    """What happened to one mutant."""

    key: str
    bug: str
    killed: bool
    killer: str = ""
    message: str = ""
    inconclusive: bool = False  # the killing test fails on the unmutated reference too
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def lesson(self) -> int:
        """The lesson number from ``lessonNN/name``."""
        return int(self.key[6:8])


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


def _first_line(text: str) -> str:
    """The first non-blank line of a failure message (pytest's crash line), shortened."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def grade_mutant(curriculum: cur.Curriculum, mutant: Mutant, scratch: Path) -> Outcome:
    """Run the mutant's lesson suites (visible first, then hidden) until a test kills it."""
    lesson = curriculum.get(mutant.lesson)
    root = curriculum.root
    tree = plant(root, mutant, scratch)
    started = time.monotonic()
    outcome = Outcome(mutant.key, mutant.bug, killed=False)
    suites = [s for s in (lesson.visible, lesson.hidden) if (root / s).exists()]
    try:
        for group in batches(root, suites):
            run = run_pytest(root, group, impl=str(tree), test_timeout=lesson.test_timeout,
                             run_timeout=lesson.timeout, extra_args=["-x", "-p", "no:randomly"])
            outcome.notes += run.notes
            bad = [t for t in run.collect_errors + run.tests if not t.ok and t.outcome != "not run"]
            if bad:
                outcome.killed, outcome.killer = True, bad[0].nodeid
                outcome.message = _first_line(bad[0].message) or bad[0].outcome
                break
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    outcome.seconds = round(time.monotonic() - started, 1)
    return outcome


class Control:
    """Whether a killing test passes on the unmutated reference (one run per test, remembered).

    A kill counts only when the test that failed on the mutant passes on the reference through
    the same runner: a test broken for another reason (an environment problem, a suite being
    edited) would otherwise "kill" every mutant it meets.
    """

    def __init__(self, curriculum: cur.Curriculum):
        self.curriculum = curriculum
        self.verdicts: dict[str, str] = {}
        self.lock = threading.Lock()

    def failure(self, lesson_id: int, nodeid: str) -> str:
        """'' when ``nodeid`` passes on the reference, else what went wrong there."""
        with self.lock:
            if nodeid not in self.verdicts:
                lesson = self.curriculum.get(lesson_id)
                reference = str(self.curriculum.root / "solutions")
                run = run_pytest(self.curriculum.root, [nodeid], impl=reference, test_timeout=lesson.test_timeout,
                                 run_timeout=lesson.timeout, extra_args=["-p", "no:randomly"])
                bad = [t for t in run.collect_errors + run.tests if not t.ok]
                self.verdicts[nodeid] = ("" if run.tests and not bad else
                                         f"{bad[0].outcome}: {_first_line(bad[0].message)}" if bad else "not collected")
            return self.verdicts[nodeid]


def confirm(outcome: Outcome, control: Control) -> Outcome:
    """Void a kill whose test also fails on the reference (the outcome is then inconclusive)."""
    if outcome.killed and "::" in outcome.killer:
        problem = control.failure(outcome.lesson, outcome.killer)
        if problem:
            outcome.killed, outcome.inconclusive = False, True
            outcome.message = f"{outcome.killer} fails on the reference too ({problem})"
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


def register(subparsers) -> None:
    """Add the ``mutants`` subcommand to ``python -m grader`` (maintainers only: never shipped)."""
    parser = subparsers.add_parser("mutants", help="maintainers: grade the mutant catalogue (planted bugs)",
                                   description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mutants``."""
    parser.add_argument("--lessons", help="comma-separated lesson ids (default: every catalogued lesson)")
    parser.add_argument("--only", help="comma-separated mutant names (name or lessonNN/name)")
    parser.add_argument("--sample", type=int, help="run this many mutants per lesson, chosen with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants graded at once (default 1)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="count every kill without checking the killing test on the reference "
                             "(for CI, whose earlier steps already ran every suite on the reference)")
    parser.add_argument("--json", dest="json_file", metavar="FILE", help="write every outcome as JSON")
    parser.add_argument("--record", action="store_true",
                        help=f"record the figures of each lesson run in full in {RESULTS_FILE}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m grader.mutants``."""
    parser = argparse.ArgumentParser(prog="python -m grader mutants", description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="repository root (default: $AIOS_ROOT or this checkout)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, cur.load(args.root))


def command_line(args) -> str:
    """The command that repeats this run (for the printed seed and the record)."""
    words = ["python -m grader mutants"]
    for option in ("lessons", "only", "sample"):
        if getattr(args, option):
            words.append(f"--{option} {getattr(args, option)}")
    if args.sample:
        words.append(f"--seed {args.seed}")
    if not getattr(args, "control", True):
        words.append("--no-control")
    return " ".join(words)


def run(args, curriculum: cur.Curriculum) -> int:
    """Grade the chosen mutants, print one line each and a summary per lesson."""
    try:
        lessons = [int(x) for x in args.lessons.split(",") if x.strip()] if args.lessons else None
        catalogue = load(lessons)
        mutants = choose(catalogue, args.only, args.sample, args.seed)
        for mutant in mutants:
            curriculum.get(mutant.lesson)
    except (CatalogueError, ValueError, KeyError) as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        return 2
    print(f"mutants: {len(mutants)} of {len(catalogue)} catalogued; repeat with: {command_line(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="aios-mutants-") as scratch:

        control = Control(curriculum)
        left = {lesson: sum(m.lesson == lesson for m in mutants) for lesson in {m.lesson for m in mutants}}
        done: list[Outcome] = []
        lock = threading.Lock()

        def finished(outcome: Outcome) -> None:
            """With --record, write each lesson run in full as soon as its last mutant is graded."""
            with lock:
                done.append(outcome)
                left[outcome.lesson] -= 1
                whole = left[outcome.lesson] == 0 and sum(m.lesson == outcome.lesson for m in catalogue) == sum(
                    o.lesson == outcome.lesson for o in done)
                if args.record and whole:
                    record(curriculum.root / RESULTS_FILE, done, [outcome.lesson], command_line(args))

        def one(mutant: Mutant) -> Outcome:
            outcome = grade_mutant(curriculum, mutant, Path(scratch))
            if args.control:
                outcome = confirm(outcome, control)
            verdict = (f"killed by {outcome.killer}: {outcome.message[:90]}" if outcome.killed else
                       f"INCONCLUSIVE: {outcome.message[:150]}" if outcome.inconclusive else "SURVIVED")
            print(f"{outcome.key:<50} {verdict} ({outcome.seconds:.0f} s)", flush=True)
            finished(outcome)
            return outcome

        try:
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                outcomes = list(pool.map(one, mutants))
        except CatalogueError as exc:
            print(f"mutants: {exc}", file=sys.stderr)
            return 2
    summary(outcomes)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n", encoding="utf-8")
    return 0 if all(o.killed for o in outcomes) else 1


def summary(outcomes: list[Outcome]) -> None:
    """Killed/total per lesson (with the survivors) and overall."""
    for lesson in sorted({o.lesson for o in outcomes}):
        mine = [o for o in outcomes if o.lesson == lesson]
        survivors = [o.key.split("/", 1)[1] for o in mine if not o.killed and not o.inconclusive]
        unsure = [o.key.split("/", 1)[1] for o in mine if o.inconclusive]
        extra = f"; survived: {', '.join(survivors)}" if survivors else ""
        extra += f"; inconclusive (killing test fails on the reference): {', '.join(unsure)}" if unsure else ""
        print(f"lesson {lesson:2d}: {sum(o.killed for o in mine)}/{len(mine)} killed{extra}")
    seconds = sum(o.seconds for o in outcomes)
    print(f"mutants: {sum(o.killed for o in outcomes)} killed, "
          f"{sum(not o.killed and not o.inconclusive for o in outcomes)} survived, "
          f"{sum(o.inconclusive for o in outcomes)} inconclusive "
          f"({seconds:.0f} s of grading)")


def record(path: Path, outcomes: list[Outcome], lessons: list[int], command: str) -> None:
    """Merge the figures of the lessons run in full into the results file (other lessons kept)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    entries = data.setdefault("lessons", {})
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    for lesson in lessons:
        mine = [o for o in outcomes if o.lesson == lesson]
        entries[str(lesson)] = {
            "date": today, "command": command, "mutants": len(mine), "killed": sum(o.killed for o in mine),
            "survived": [o.key for o in mine if not o.killed and not o.inconclusive],
            "inconclusive": [o.key for o in mine if o.inconclusive], "seconds": round(sum(o.seconds for o in mine)),
        }
    data["lessons"] = dict(sorted(entries.items(), key=lambda kv: int(kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"mutants: recorded lessons {', '.join(map(str, lessons)) or '(none run in full)'} in {path}")
