"""Generate the learner's ``aios/`` from the reference ``solutions/aios/``.

Usage::

    python -m grader.stubgen                 # write aios/ in the repository
    python -m grader.stubgen --check         # exit 1 when aios/ differs from the output
    python -m grader.stubgen --only 3 --out /tmp/x   # /tmp/x/aios with only lesson 3 stubbed

A solution region (see docs/conventions.md) is a run of whole statements inside
one ``def``, between ``# BEGIN SOLUTION lessonN`` and ``# END SOLUTION``. It is
replaced by the region's ``# Hint`` comment lines plus a ``raise
NotImplementedError(...)`` at the region's indentation. Everything outside the
regions is kept byte for byte; files without regions are copied verbatim.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import os
import re
import shutil
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

from grader.curriculum import repo_root

BEGIN_RE = re.compile(r"#\s*BEGIN SOLUTION\b(.*)$")
END_RE = re.compile(r"#\s*END SOLUTION\b(.*)$")
LESSON_RE = re.compile(r"\s+lesson([1-9][0-9]*|0)\s*$")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


class MarkerError(Exception):
    """A malformed solution marker; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Region:
    """One solution region: lines ``begin``..``end`` (1-based, markers included)."""

    path: str  # posix path relative to the package root's parent, e.g. "aios/layers/x.py"
    lesson: int
    begin: int
    end: int
    qualname: str
    indent: str

    @property
    def symbol(self) -> str:
        """``path::qualname``, the form the curriculum lists."""
        return f"{self.path}::{self.qualname}"


def stub_message(lesson: int, qualname: str, path: str) -> str:
    """The text of the NotImplementedError a stubbed region raises."""
    return (
        f"Lesson {lesson}: implement {qualname} in {path} — see "
        f"exercises/lesson{lesson:02d}/README.md, 'What to implement'"
    )


def _marker_comments(source: str, where: str) -> list[tuple[int, str, str]]:
    """Return ``(line, kind, rest)`` for each BEGIN/END marker comment in ``source``."""
    found = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise MarkerError(f"{where}: cannot tokenize: {exc}") from exc
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        for kind, pattern in (("BEGIN", BEGIN_RE), ("END", END_RE)):
            match = pattern.match(tok.string)
            if match:
                line = tok.start[0]
                if tok.line[: tok.start[1]].strip():
                    raise MarkerError(f"{where}:{line}: a {kind} SOLUTION marker must be on its own line")
                found.append((line, kind, match.group(1)))
    return found


def _pair_markers(markers: list[tuple[int, str, str]], where: str) -> list[tuple[int, int, int]]:
    """Pair BEGIN/END markers into ``(lesson, begin_line, end_line)``; reject nesting."""
    pairs = []
    open_at: tuple[int, int] | None = None
    for line, kind, rest in markers:
        if kind == "BEGIN":
            if open_at is not None:
                raise MarkerError(f"{where}:{line}: nested BEGIN SOLUTION (region opened at line {open_at[0]})")
            match = LESSON_RE.match(rest)
            if not match:
                raise MarkerError(
                    f"{where}:{line}: malformed marker; expected '# BEGIN SOLUTION lessonN' (N without zero padding)"
                )
            open_at = (line, int(match.group(1)))
        else:
            if open_at is None:
                raise MarkerError(f"{where}:{line}: END SOLUTION without a BEGIN")
            if rest.strip() and rest.strip() != f"lesson{open_at[1]}":
                raise MarkerError(f"{where}:{line}: END SOLUTION{rest} does not match lesson{open_at[1]}")
            pairs.append((open_at[1], open_at[0], line))
            open_at = None
    if open_at is not None:
        raise MarkerError(f"{where}:{open_at[0]}: unclosed BEGIN SOLUTION lesson{open_at[1]}")
    return pairs


def _functions(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """All function definitions with dotted qualnames (classes and outer defs included)."""
    out: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, child))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _extended_end(node: ast.stmt, lines: list[str]) -> int:
    """``node``'s last line, counting the comment and blank lines that trail it inside its block.

    The AST stops at the last statement; an END marker after it, indented deeper than
    the statement itself, still belongs to the statement's block.
    """
    last = node.end_lineno or node.lineno
    probe = last
    while probe < len(lines):
        text = lines[probe]
        stripped = text.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped and len(text) - len(text.lstrip()) <= node.col_offset:
            break
        probe += 1
        if stripped:
            last = probe
    return last


def _enclosing_def(
    funcs: list[tuple[str, ast.AST]], begin: int, end: int, lines: list[str], where: str
) -> tuple[str, ast.AST]:
    """The innermost def whose body holds the whole region, or a MarkerError."""
    best = None
    for name, func in funcs:
        first, last = func.lineno + 1, _extended_end(func, lines)  # type: ignore[arg-type]
        inside_begin = first <= begin <= last
        inside_end = first <= end <= last
        if inside_begin != inside_end:
            raise MarkerError(f"{where}:{begin}: solution region spans more than one def (crosses {name})")
        if inside_begin and (best is None or func.lineno > best[1].lineno):  # type: ignore[attr-defined]
            best = (name, func)
    if best is None:
        raise MarkerError(f"{where}:{begin}: solution region outside a def")
    return best


def _check_whole_statements(func: ast.AST, begin: int, end: int, lines: list[str], where: str) -> None:
    """Reject a region that cuts a statement in two or sits inside a simple statement."""
    for node in ast.walk(func):
        if node is func or not isinstance(node, ast.stmt):
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.decorator_list:
            first = node.decorator_list[0].lineno
        compound = hasattr(node, "body")
        contains = first < begin and (_extended_end(node, lines) if compound else last) >= end
        inside = begin < first and last < end
        apart = last < begin or first > end
        if not (contains or inside or apart):
            raise MarkerError(f"{where}:{begin}: solution region cuts the statement at line {first}")
        if contains and not compound:
            raise MarkerError(f"{where}:{begin}: solution region inside the statement at line {first}")


def _replace(lines: list[str], region: "Region", path: str) -> None:
    """Replace ``region``'s lines in ``lines`` (in place) by its hints and the raise."""
    nl = _line_ending(lines[region.begin - 1])
    body = lines[region.begin : region.end - 1]
    hints = [ln if ln.endswith(("\n", "\r")) else ln + nl for ln in body if ln.strip().startswith("# Hint")]
    message = stub_message(region.lesson, region.qualname, path)
    lines[region.begin - 1 : region.end] = hints + [f"{region.indent}raise NotImplementedError({message!r}){nl}"]


def _check_stub_parses(lines: list[str], region: "Region", path: str) -> None:
    """Stub ``region`` alone and make sure the file still parses."""
    trial = list(lines)
    _replace(trial, region, path)
    try:
        ast.parse("".join(trial), filename=path)
    except SyntaxError as exc:
        raise MarkerError(
            f"{path}:{region.begin}: solution region is not a run of whole statements "
            f"(stubbing it breaks line {exc.lineno}: {exc.msg})"
        ) from exc


def _split_lines(source: str) -> list[str]:
    """Lines of ``source`` with their endings kept untouched."""
    return io.StringIO(source, newline="").readlines()


def find_regions(source: str, path: str) -> list[Region]:
    """Parse ``source`` (the file at ``path``, e.g. "aios/x.py") and return its regions."""
    markers = _marker_comments(source, path)
    if not markers:
        return []
    pairs = _pair_markers(markers, path)
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise MarkerError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    funcs = _functions(tree)
    lines = _split_lines(source)
    regions = []
    for lesson, begin, end in pairs:
        qualname, func = _enclosing_def(funcs, begin, end, lines, path)
        _check_whole_statements(func, begin, end, lines, path)
        line = lines[begin - 1]
        indent = line[: len(line) - len(line.lstrip())]
        region = Region(path, lesson, begin, end, qualname, indent)
        _check_stub_parses(lines, region, path)
        regions.append(region)
    return regions


def _line_ending(line: str) -> str:
    """The newline sequence that ends ``line`` (default ``\\n``)."""
    for ending in ("\r\n", "\n", "\r"):
        if line.endswith(ending):
            return ending
    return "\n"


def stub_source(source: str, path: str, only: int | None = None) -> str:
    """Return ``source`` with its regions (or only lesson ``only``'s) replaced by stubs."""
    regions = [r for r in find_regions(source, path) if only is None or r.lesson == only]
    if not regions:
        return source
    lines = _split_lines(source)
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        _replace(lines, region, path)
    result = "".join(lines)
    try:
        ast.parse(result, filename=path)
    except SyntaxError as exc:
        raise MarkerError(f"{path}:{exc.lineno}: the stubbed file is not valid Python: {exc.msg}") from exc
    return result


def _source_files(src: Path) -> list[Path]:
    """Files under ``src`` in a stable order, caches left out."""
    files = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(SKIP_SUFFIXES):
                files.append(Path(dirpath) / name)
    return files


def generate(src: Path, only: int | None = None) -> dict[str, bytes]:
    """Map each output path (relative to the tree's parent, e.g. "aios/x.py") to its bytes."""
    if not src.is_dir():
        raise MarkerError(f"{src}: reference package not found")
    out: dict[str, bytes] = {}
    for file in _source_files(src):
        rel = (Path(src.name) / file.relative_to(src)).as_posix()
        data = file.read_bytes()
        if file.suffix == ".py":
            text = data.decode("utf-8")
            stubbed = stub_source(text, rel, only)
            if stubbed != text:
                data = stubbed.encode("utf-8")
        out[rel] = data
    return out


def scan_regions(src: Path) -> list[Region]:
    """Every region of the reference tree, in file then line order."""
    regions = []
    for file in _source_files(src):
        if file.suffix == ".py":
            rel = (Path(src.name) / file.relative_to(src)).as_posix()
            regions.extend(find_regions(file.read_text(encoding="utf-8"), rel))
    return regions


def read_tree(dest: Path) -> dict[str, bytes]:
    """The files of an existing tree, in ``generate``'s form."""
    if not dest.is_dir():
        return {}
    return {(Path(dest.name) / f.relative_to(dest)).as_posix(): f.read_bytes() for f in _source_files(dest)}


def write_tree(files: dict[str, bytes], parent: Path) -> list[str]:
    """Make ``parent/aios`` hold exactly ``files``; return the paths that changed."""
    names = {rel.split("/", 1)[0] for rel in files} or {"aios"}
    current: dict[str, bytes] = {}
    for name in names:
        current.update(read_tree(parent / name))
    changed = []
    for rel in sorted(set(current) - set(files)):
        (parent / rel).unlink()
        changed.append(rel)
    for rel in sorted(files):
        if current.get(rel) != files[rel]:
            target = parent / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[rel])
            changed.append(rel)
    for name in names:
        _remove_empty_dirs(parent / name)
    return changed


def _remove_empty_dirs(root: Path) -> None:
    """Delete directories left empty (or holding only caches) below ``root``."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        if here == root:
            continue
        left = [p for p in here.iterdir() if p.name not in SKIP_DIRS]
        if not left:
            shutil.rmtree(here)


def diff_trees(expected: dict[str, bytes], actual: dict[str, bytes], max_lines: int = 40) -> list[str]:
    """A readable summary of how ``actual`` differs from ``expected`` (empty when equal)."""
    report = []
    for rel in sorted(set(expected) - set(actual)):
        report.append(f"missing: {rel}")
    for rel in sorted(set(actual) - set(expected)):
        report.append(f"extra (not generated from solutions/): {rel}")
    for rel in sorted(set(expected) & set(actual)):
        if expected[rel] == actual[rel]:
            continue
        report.append(f"differs: {rel}")
        try:
            a = actual[rel].decode("utf-8").splitlines()
            b = expected[rel].decode("utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        diff = list(difflib.unified_diff(a, b, f"{rel} (on disk)", f"{rel} (generated)", lineterm="", n=1))
        report.extend("    " + line for line in diff[:max_lines])
        if len(diff) > max_lines:
            report.append(f"    ... {len(diff) - max_lines} more diff lines")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m grader.stubgen", description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="repository root (default: $AIOS_ROOT or this checkout)")
    parser.add_argument("--check", action="store_true", help="fail if aios/ differs from the generated tree")
    parser.add_argument("--only", type=int, metavar="N", help="stub only lesson N's regions")
    parser.add_argument("--out", metavar="DIR", help="write DIR/aios instead of the repository's aios/")
    args = parser.parse_args(argv)
    root = repo_root(args.root)
    src = root / "solutions" / "aios"
    try:
        files = generate(src, args.only)
    except MarkerError as exc:
        print(f"stubgen: error: {exc}", file=sys.stderr)
        return 2
    parent = Path(args.out).resolve() if args.out else root
    if args.check:
        report = diff_trees(files, read_tree(parent / "aios"))
        if report:
            print(f"stubgen: {parent / 'aios'} is out of date with solutions/aios:", file=sys.stderr)
            print("\n".join(report), file=sys.stderr)
            print("run `python -m grader.stubgen` to regenerate it", file=sys.stderr)
            return 1
        print(f"stubgen: {parent / 'aios'} is up to date ({len(files)} files)")
        return 0
    changed = write_tree(files, parent)
    what = f"lesson {args.only} stubbed" if args.only is not None else "all lessons stubbed"
    print(f"stubgen: wrote {parent / 'aios'} ({len(files)} files, {len(changed)} changed, {what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
