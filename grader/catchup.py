"""Catch-up: take one lesson's code from the reference engine, and put your own back later.

    python -m grader checkout-reference N   # save your files, fill lesson N's functions from solutions/
    python -m grader restore-mine N         # put your saved files back, byte for byte

A learner stuck on lesson N can move on: ``checkout-reference`` copies every file of
``aios/`` that holds a lesson-N function to ``.aios/mine/lessonNN/`` and then replaces,
in ``aios/``, just those functions by the reference's (``solutions/aios/``, read with the
stub generator's region parser). Every other function of the file keeps the learner's
code. The lesson is marked "taken from reference" in ``.aios/progress.json`` and the
board shows it until ``restore-mine`` brings the learner's files back.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from grader import progress as prog
from grader import stubgen
from grader.curriculum import Curriculum, Lesson
from grader.stubgen import Region


class CatchUpError(Exception):
    """A reason ``checkout-reference`` or ``restore-mine`` cannot go ahead (shown to the learner)."""


@dataclass
class FileChange:
    """What ``checkout-reference`` does to one file of ``aios/``."""

    path: str  # e.g. "aios/layers/layernorm.py"
    new_text: str
    functions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def mine_dir(root: Path, lesson_id: int) -> Path:
    """Where the learner's own files of a lesson are kept while the reference's are in use."""
    return root / ".aios" / "mine" / f"lesson{lesson_id:02d}"


def _digest(data: bytes) -> str:
    """SHA-256 of a file's bytes (to notice edits made after the checkout)."""
    return hashlib.sha256(data).hexdigest()


def regions_by_file(root: Path) -> dict[str, list[Region]]:
    """Every solution region of ``solutions/aios``, grouped by file ("aios/x.py")."""
    src = root / "solutions" / "aios"
    if not src.is_dir():
        raise CatchUpError(f"{src} not found: the reference engine is needed to catch up")
    try:
        regions = stubgen.scan_regions(src)
    except stubgen.MarkerError as exc:
        raise CatchUpError(f"cannot read the reference's solution markers: {exc}") from exc
    grouped: dict[str, list[Region]] = defaultdict(list)
    for region in regions:
        grouped[region.path].append(region)
    return dict(grouped)


def reference_up_to(source: str, path: str, lesson_id: int) -> str:
    """The reference file as a learner who finished lesson ``lesson_id`` would have it.

    Regions of later lessons become stubs (as in ``aios/``); the markers of the others
    are dropped so their code reads like hand-written code.
    """
    later = sorted({r.lesson for r in stubgen.find_regions(source, path) if r.lesson > lesson_id})
    for lesson in later:
        source = stubgen.stub_source(source, path, only=lesson)
    lines = stubgen._split_lines(source)
    for region in sorted(stubgen.find_regions(source, path), key=lambda r: r.begin, reverse=True):
        del lines[region.end - 1]
        del lines[region.begin - 1]
    return "".join(lines)


def _def_spans(source: str, path: str) -> dict[str, tuple[int, int]]:
    """``qualname -> (first line, last line)`` of each def (1-based; decorators left out)."""
    tree = ast.parse(source, filename=path)
    return {name: (node.lineno, node.end_lineno) for name, node in stubgen._functions(tree)}


def _why_not_by_function(learner: str | None, path: str, qualnames: list[str]) -> str | None:
    """Why the learner's file cannot be patched function by function (None when it can)."""
    if learner is None:
        return f"{path} is missing from aios/: it is written whole from the reference"
    try:
        spans = _def_spans(learner, path)
    except SyntaxError as exc:
        return f"{path} does not parse (line {exc.lineno}: {exc.msg}): it is replaced whole"
    missing = [q for q in qualnames if q not in spans]
    if missing:
        return f"{path} has no {', '.join(missing)}: the file is replaced whole"
    return None


def _patch_functions(learner: str, reference: str, path: str, qualnames: list[str]) -> str:
    """``learner`` with the defs named in ``qualnames`` swapped for the reference's."""
    ours, theirs = _def_spans(learner, path), _def_spans(reference, path)
    ref_lines = stubgen._split_lines(reference)
    lines = stubgen._split_lines(learner)
    for name in sorted(qualnames, key=lambda q: ours[q][0], reverse=True):
        (first, last), (ref_first, ref_last) = ours[name], theirs[name]
        lines[first - 1 : last] = ref_lines[ref_first - 1 : ref_last]
    return "".join(lines)


def plan_checkout(root: Path, lesson_id: int) -> list[FileChange]:
    """The new text of each ``aios/`` file that holds a function of lesson ``lesson_id``."""
    changes = []
    for path, regions in sorted(regions_by_file(root).items()):
        mine = [r for r in regions if r.lesson == lesson_id]
        if not mine:
            continue
        qualnames = list(dict.fromkeys(r.qualname for r in mine))
        reference = reference_up_to((root / "solutions" / path).read_text(encoding="utf-8"), path, lesson_id)
        target = root / path
        learner = target.read_text(encoding="utf-8") if target.is_file() else None
        change = FileChange(path, reference, qualnames)
        reason = _why_not_by_function(learner, path, qualnames)
        if reason:
            change.notes.append(reason)
        else:
            change.new_text = _patch_functions(learner, reference, path, qualnames)
        for name in qualnames:
            others = sorted({r.lesson for r in regions if r.qualname == name and r.lesson != lesson_id})
            if others:
                change.notes.append(
                    f"{name} also holds code of lesson(s) {', '.join(map(str, others))}: it now has the "
                    f"reference's code up to lesson {lesson_id} and stubs after it")
        changes.append(change)
    return changes


def _lesson(curriculum: Curriculum, lesson_id: int) -> Lesson:
    """The lesson, or a CatchUpError naming the curriculum file."""
    try:
        return curriculum.get(lesson_id)
    except KeyError as exc:
        raise CatchUpError(exc.args[0]) from exc


def checkout_reference(curriculum: Curriculum, lesson_id: int) -> list[FileChange]:
    """Save the learner's files of the lesson, write the reference's functions, mark the lesson."""
    root = curriculum.root
    lesson = _lesson(curriculum, lesson_id)
    progress = prog.load(root)
    if progress.taken_from_reference(lesson.id):
        raise CatchUpError(f"lesson {lesson.id} is already taken from the reference; "
                           f"python -m grader restore-mine {lesson.id} puts your code back first")
    changes = plan_checkout(root, lesson.id)
    if not changes:
        raise CatchUpError(f"lesson {lesson.id} has no functions to fill in: there is nothing to take")
    saved = mine_dir(root, lesson.id)
    if saved.exists():
        shutil.rmtree(saved)
    record = {"taken_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "files": {},
              "absent": []}
    for change in changes:
        target = root / change.path
        if target.is_file():
            (saved / change.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target, saved / change.path)
        else:
            record["absent"].append(change.path)
    for change in changes:
        data = change.new_text.encode("utf-8")
        (root / change.path).parent.mkdir(parents=True, exist_ok=True)
        (root / change.path).write_bytes(data)
        record["files"][change.path] = _digest(data)
    progress.reference[str(lesson.id)] = record
    prog.save(root, progress)
    return changes


def _edited_since_checkout(root: Path, record: dict) -> list[str]:
    """Files of ``aios/`` changed after ``checkout-reference`` wrote them."""
    edited = []
    for path, digest in record["files"].items():
        target = root / path
        if not target.is_file() or _digest(target.read_bytes()) != digest:
            edited.append(path)
    return edited


def _later_checkouts(progress: prog.Progress, lesson_id: int, record: dict, paths: list[str]) -> list[int]:
    """Lessons taken from the reference after ``lesson_id`` that rewrote one of ``paths``."""
    return sorted(int(other) for other, rec in progress.reference.items()
                  if int(other) != lesson_id and rec["taken_at"] >= record["taken_at"]
                  and set(paths) & set(rec["files"]))


def restore_mine(curriculum: Curriculum, lesson_id: int, force: bool = False) -> list[str]:
    """Put back the learner's files saved by ``checkout_reference``; return their paths."""
    root = curriculum.root
    lesson = _lesson(curriculum, lesson_id)
    progress = prog.load(root)
    record = progress.reference.get(str(lesson.id))
    if record is None:
        raise CatchUpError(f"lesson {lesson.id} was not taken from the reference: there is nothing to restore")
    edited = _edited_since_checkout(root, record)
    if edited and not force:
        later = _later_checkouts(progress, lesson.id, record, edited)
        if later:
            raise CatchUpError(f"{', '.join(edited)} also changed with checkout-reference of lesson(s) "
                               f"{', '.join(map(str, later))}: restore-mine those first, newest first")
        raise CatchUpError("changed since checkout-reference (restoring would lose those edits): "
                           + ", ".join(edited) + "; pass --force to restore anyway")
    saved = mine_dir(root, lesson.id)
    for path in record["files"]:
        target = root / path
        if path in record.get("absent", []):
            target.unlink(missing_ok=True)
        elif (saved / path).is_file():
            shutil.copy2(saved / path, target)
        else:
            raise CatchUpError(f"your saved copy {saved / path} is missing; nothing was restored for {path}")
    shutil.rmtree(saved, ignore_errors=True)
    del progress.reference[str(lesson.id)]
    prog.save(root, progress)
    return list(record["files"])


def cmd_checkout_reference(args, curriculum: Curriculum) -> int:
    """``checkout-reference N``: take lesson N's functions from the reference engine."""
    try:
        changes = checkout_reference(curriculum, args.lesson)
    except CatchUpError as exc:
        print(f"checkout-reference: {exc}", file=sys.stderr)
        return 2
    saved = mine_dir(curriculum.root, args.lesson).relative_to(curriculum.root)
    print(f"Lesson {args.lesson}: your files are saved in {saved}/; the reference's code is in place:")
    for change in changes:
        print(f"  {change.path}: {', '.join(change.functions)}")
        for note in change.notes:
            print(f"    note: {note}")
    print(f"\nNext: python -m grader grade {args.lesson} (the board marks it 'from reference'); "
          f"python -m grader restore-mine {args.lesson} puts your code back.")
    return 0


def cmd_restore_mine(args, curriculum: Curriculum) -> int:
    """``restore-mine N``: put back the learner's own files of lesson N."""
    try:
        paths = restore_mine(curriculum, args.lesson, force=args.force)
    except CatchUpError as exc:
        print(f"restore-mine: {exc}", file=sys.stderr)
        return 2
    print(f"Lesson {args.lesson}: your own code is back in " + ", ".join(paths))
    print(f"Grade it again with python -m grader grade {args.lesson}.")
    return 0


def register(subparsers) -> None:
    """Add ``checkout-reference`` and ``restore-mine`` to ``python -m grader``."""
    checkout = subparsers.add_parser("checkout-reference",
                                     help="take a lesson's functions from the reference (yours are saved)")
    checkout.add_argument("lesson", type=int)
    checkout.set_defaults(handler=cmd_checkout_reference)
    restore = subparsers.add_parser("restore-mine", help="put back your own code saved by checkout-reference")
    restore.add_argument("lesson", type=int)
    restore.add_argument("--force", action="store_true", help="restore even if the files changed since")
    restore.set_defaults(handler=cmd_restore_mine)
