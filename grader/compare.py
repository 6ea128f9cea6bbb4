"""``python -m grader compare N``: your lesson-N functions beside the reference's.

For every function lesson N asks you to write (the curriculum's symbols, read from the
solution markers), shows a diff of your version (``aios/``) against the reference
(``solutions/aios/``), or says "still a stub" / "identical". On a CUDA GPU it then times
both engines on the lesson's rung of the throughput ladder (``aios/bench/ladder.py``), each
in its own process on the same workload, and prints both tok/s and the ratio.

    python -m grader compare 4               # coloured diffs, then the GPU comparison
    python -m grader compare 4 --plain       # no colour (for logs and pipes)
    python -m grader compare 4 --no-bench    # only the code
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grader import curriculum as cur
from grader.runner import cuda_available
from grader.stubgen import BEGIN_RE, END_RE, _extended_end, _functions, stub_message

#: Lessons with a rung on the throughput ladder (``LADDER_STAGES`` in aios/bench/ladder.py).
LADDER_LESSONS = range(3, 14)
BENCH_TIMEOUT_S = 600

IDENTICAL = "identical"
SAME_CODE = "same code as the reference (layout or comments differ)"
SAME_LOGIC = "same logic as the reference, different names"
DIFFERS = "differs from the reference"
STUB = "still a stub"
STATUS_STYLES = {IDENTICAL: "green", SAME_CODE: "green", SAME_LOGIC: "green", DIFFERS: "yellow", STUB: "magenta"}


@dataclass
class FunctionComparison:
    """One function of the lesson: where it is, how the learner's version relates to the reference."""

    symbol: str
    status: str
    learner: list[str]
    reference: list[str]

    def diff(self) -> list[str]:
        """A unified diff of the whole function: your lines ``-``, the reference's ``+``."""
        path, _, qualname = self.symbol.partition("::")
        return list(difflib.unified_diff(self.learner, self.reference, f"yours: {path} {qualname}",
                                         f"reference: solutions/{path}", lineterm="",
                                         n=max(len(self.learner), len(self.reference))))


# ---------------------------------------------------------------- reading functions


def function_lines(source: str, qualname: str, where: str) -> list[str] | None:
    """The lines of function ``qualname`` in ``source`` (decorators and trailing comments
    included, dedented), or None when the file has no such function. SyntaxError when it
    does not parse."""
    tree = ast.parse(source, filename=where)
    lines = source.splitlines()
    for name, node in _functions(tree):
        if name == qualname:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            body = lines[first - 1 : _extended_end(node, lines)]
            indent = len(body[0]) - len(body[0].lstrip())
            return [line[indent:].rstrip() for line in body]
    return None


def _without_markers(lines: list[str]) -> list[str]:
    """``lines`` without BEGIN/END SOLUTION markers (the reference's; a learner's copy may hold them too)."""
    return [line for line in lines if not (BEGIN_RE.match(line.strip()) or END_RE.match(line.strip()))]


def _same_ast(a: list[str], b: list[str]) -> bool:
    """Whether two function texts are the same code once comments and layout are ignored."""
    try:
        return ast.dump(ast.parse("\n".join(a))) == ast.dump(ast.parse("\n".join(b)))
    except SyntaxError:
        return False


class _LocalRenamer(ast.NodeTransformer):
    """Renames a function's local variables ``_v0, _v1, ...`` in order of first binding.

    Parameters, globals, builtins and attribute names keep their names: only what the
    function itself binds (assignments, loop and comprehension targets, ``with ... as``,
    ``except ... as``) is a local whose name is the author's choice.
    """

    def __init__(self, locals_: list[str]):
        self.names = {name: f"_v{i}" for i, name in enumerate(locals_)}

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        node.name = self.names.get(node.name, node.name) if node.name else None
        return self.generic_visit(node)


def _bound_locals(function: ast.AST) -> list[str]:
    """Names the function binds, in order of first binding (its parameters excluded)."""
    params = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)} if hasattr(function, "args") else set()
    order: list[str] = []
    for node in ast.walk(function):
        name = None
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        elif isinstance(node, ast.ExceptHandler) and node.name:
            name = node.name
        if name and name not in params and name not in order:
            order.append(name)
    return order


def _logic_dump(lines: list[str]) -> str | None:
    """The function's syntax tree with its docstring dropped and its locals renamed (None if it does not parse)."""
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    function = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if function is None:
        return None
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        function.body = body[1:] or [ast.Pass()]
    return ast.dump(_LocalRenamer(_bound_locals(function)).visit(tree))


def _same_logic(a: list[str], b: list[str]) -> bool:
    """Whether two function texts differ only in their locals' names (and docstring, comments, layout)."""
    dump_a = _logic_dump(a)
    return dump_a is not None and dump_a == _logic_dump(b)


def compare_function(symbol: str, lesson: int, learner_root: Path, reference_root: Path) -> FunctionComparison:
    """Compare one ``aios/path.py::qualname`` of the learner's tree with the reference tree."""
    path, _, qualname = symbol.partition("::")
    reference_source = (reference_root / path).read_text(encoding="utf-8")
    reference = _without_markers(function_lines(reference_source, qualname, path) or [])
    learner_file = learner_root / path
    if not learner_file.is_file():
        return FunctionComparison(symbol, f"missing: your tree has no {path}", [], reference)
    try:
        learner = function_lines(learner_file.read_text(encoding="utf-8"), qualname, path)
    except SyntaxError as exc:
        return FunctionComparison(symbol, f"your {path} does not parse (line {exc.lineno}: {exc.msg})", [], reference)
    if learner is None:
        return FunctionComparison(symbol, f"missing: {path} has no function {qualname}", [], reference)
    learner = _without_markers(learner)
    if stub_message(lesson, qualname, path) in "\n".join(learner):
        status = STUB
    elif learner == reference:
        status = IDENTICAL
    elif _same_ast(learner, reference):
        status = SAME_CODE
    elif _same_logic(learner, reference):
        status = SAME_LOGIC
    else:
        status = DIFFERS
    return FunctionComparison(symbol, status, learner, reference)


def compare_lesson(curriculum: cur.Curriculum, lesson: cur.Lesson, learner_root: Path) -> list[FunctionComparison]:
    """Every function of ``lesson``, in the curriculum's order."""
    reference_root = curriculum.root / "solutions"
    return [compare_function(symbol, lesson.id, learner_root, reference_root)
            for symbol in cur.symbols(curriculum, lesson)]


# ---------------------------------------------------------------- printing


class Printer:
    """Headings, diffs and lines, through rich with colour or as plain text (``--plain``)."""

    def __init__(self, plain: bool):
        self.plain = plain
        if not plain:
            from rich.console import Console

            self.console = Console(highlight=False)

    def heading(self, text: str, status: str = "") -> None:
        """A section title; ``status`` (after a colon) coloured by what it says."""
        if self.plain:
            print(f"\n=== {text}" + (f": {status}" if status else ""))
            return
        from rich.text import Text

        title = Text("\n" + text, style="bold")
        if status:
            title.append(": ")
            title.append(status, style=STATUS_STYLES.get(status, "red"))
        self.console.print(title)

    def line(self, text: str) -> None:
        if self.plain:
            print(text)
        else:
            self.console.print(text, markup=False)

    def diff(self, lines: list[str]) -> None:
        if self.plain:
            print("\n".join(lines))
        else:
            from rich.syntax import Syntax

            self.console.print(Syntax("\n".join(lines), "diff", theme="ansi_dark", background_color="default"))


def print_comparisons(printer: Printer, lesson: cur.Lesson, results: list[FunctionComparison],
                      learner_root: Path) -> None:
    """Each function's status (and its diff when it differs), then a one-line count."""
    printer.line(f"Lesson {lesson.id} — {lesson.title}: {len(results)} function(s), "
                 f"yours ({learner_root / 'aios'}) against the reference (solutions/aios)")
    for result in results:
        printer.heading(result.symbol, result.status)
        if result.status == DIFFERS:
            printer.diff(result.diff())
    counts: dict[str, int] = {}
    for result in results:
        key = result.status.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    printer.line("\n" + ", ".join(f"{n} {status}" for status, n in counts.items()))


# ---------------------------------------------------------------- throughput on a GPU


def _time_engine(tree_parent: Path, impl: str, lesson: int, out_dir: Path) -> dict:
    """Run ladder stage ``lesson`` with the ``aios`` under ``tree_parent``; its ladder.json row."""
    env = {**os.environ, "PYTHONPATH": str(tree_parent), "PYTHONSAFEPATH": "1", "AIOS_IMPL": impl}
    command = [sys.executable, "-m", "aios.bench.ladder", "--ladder", "--device", "cuda",
               "--stages", str(lesson), "--out", str(out_dir)]
    try:
        done = subprocess.run(command, env=env, cwd=tree_parent, capture_output=True, text=True,
                              timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {BENCH_TIMEOUT_S} s"}
    try:
        return json.loads((out_dir / "ladder.json").read_text())["stages"][0]
    except (OSError, ValueError, KeyError, IndexError):
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed (exit {done.returncode}): {last[0]}"}


def compare_throughput(printer: Printer, curriculum: cur.Curriculum, lesson: int, learner_root: Path) -> None:
    """Both engines on lesson ``lesson``'s ladder rung, on a CUDA GPU only."""
    printer.heading("throughput")
    if lesson not in LADDER_LESSONS:
        printer.line(f"No benchmark for lesson {lesson} (the throughput ladder covers lessons "
                     f"{LADDER_LESSONS[0]}-{LADDER_LESSONS[-1]}).")
        return
    if not cuda_available():
        printer.line("GPU throughput comparison skipped: needs a CUDA GPU.")
        return
    printer.line(f"Timing ladder stage {lesson} with your engine, then the reference's (one process each)...")
    with tempfile.TemporaryDirectory(prefix="aios-compare-") as tmp:
        rows = {name: _time_engine(parent, impl, lesson, Path(tmp) / name)
                for name, parent, impl in (("yours", learner_root, str(learner_root)),
                                           ("reference", curriculum.root / "solutions", "reference"))}
    for name, row in rows.items():
        speed = row.get("tokens_per_second")
        printer.line(f"  {name:<9} " + (f"{speed:,.1f} tok/s" if speed else row.get("status", "failed")))
    yours, reference = rows["yours"].get("tokens_per_second"), rows["reference"].get("tokens_per_second")
    if yours and reference:
        printer.line(f"  yours / reference = x{yours / reference:.2f}")


# ---------------------------------------------------------------- command


def learner_tree(curriculum: cur.Curriculum, impl: str | None) -> Path:
    """The folder holding the learner's ``aios/``: the checkout (default), solutions/, or a path."""
    if impl in (None, "learner"):
        return curriculum.root
    if impl == "reference":
        return curriculum.root / "solutions"
    path = Path(impl).expanduser().resolve()
    if not (path / "aios").is_dir():
        raise ValueError(f"--impl {impl}: no aios/ package in {path}")
    return path


def cmd_compare(args, curriculum: cur.Curriculum) -> int:
    """``compare N``: diffs per function, then the GPU throughput comparison."""
    try:
        lesson = curriculum.get(args.lesson)
        root = learner_tree(curriculum, args.impl)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    printer = Printer(args.plain)
    results = compare_lesson(curriculum, lesson, root)
    if not results:
        printer.line(f"Lesson {lesson.id} — {lesson.title}: no functions to implement.")
    else:
        print_comparisons(printer, lesson, results, root)
    if not args.no_bench:
        compare_throughput(printer, curriculum, lesson.id, root)
    return 0


def register(subparsers) -> None:
    """Add ``compare`` to ``python -m grader``."""
    parser = subparsers.add_parser("compare", help="your functions of a lesson beside the reference's",
                                   description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lesson", type=int, help="lesson number")
    parser.add_argument("--plain", action="store_true", help="no colour")
    parser.add_argument("--no-bench", action="store_true", help="skip the GPU throughput comparison")
    parser.add_argument("--impl", help="learner (default), reference, or a directory holding aios/")
    parser.set_defaults(handler=cmd_compare)
