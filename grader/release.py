"""``python -m grader release OUT``: the student repository and the autograder bundle.

    python -m grader release OUT [--force]

writes

* ``OUT/student/``: the repository students get: ``aios/`` freshly stubbed from
  ``solutions/aios/``, the lesson folders, the visible suites, the grader without hidden
  suites, the docs that give nothing away, a student README and the classroom workflow
  ``.github/workflows/classroom.yml``. No ``solutions/``, no ``grader/hidden/``.
* ``OUT/autograder/``: what the classroom workflow grades with: the hidden suites, trusted
  copies of the visible suites, ``conftest.py``, ``pyproject.toml``, the grader,
  ``curriculum.toml`` and ``requirements-dev.txt`` (the environment the workflow installs);
* ``OUT/autograder.tar.gz``: the same bundle packed (reproducibly) for a private repository,
  an encrypted file or a secret (docs/classroom.md).

Every file comes from an explicit allow-list below, never from copying whole trees
wholesale. Before writing, the student tree is checked: no solution marker line and no
body of any solution region (compared line by line, whitespace-insensitive) in any file.
OUT must be outside the repository's tracked files (an ignored folder such as ``release/``
is fine) and empty, unless ``--force`` (which replaces only the three outputs above).
"""

from __future__ import annotations

import ast
import base64
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from grader import stubgen
from grader.curriculum import Curriculum

TEMPLATES = Path(__file__).resolve().parent / "templates"
STUDENT = "student"
BUNDLE = "autograder"
ARCHIVE = "autograder.tar.gz"
SECRET_LIMIT = 48 * 1024  # GitHub's size limit for one secret

#: Repository files both trees need at the top.
TOP_FILES = ("conftest.py", "pyproject.toml")
#: More top-level files for students.
STUDENT_TOP_FILES = ("noxfile.py", "requirements-dev.txt", ".gitignore")
#: What AI coding assistants read in a checkout: explain and hint, never write the lesson's code.
ASSISTANT_FILES = ("AGENTS.md", "CLAUDE.md", "GEMINI.md", ".github/copilot-instructions.md", ".cursor/rules/aios-tutor.mdc")
#: More top-level files for the bundle: the pinned environment the classroom workflow installs
#: (never the student's own requirements-dev.txt, which a submission can change).
BUNDLE_TOP_FILES = ("requirements-dev.txt",)
#: The trained demo model and its corpus (the demos' default model, aios.fixtures.trained_model()), in
#: both trees: the bundle has its own copy, since lesson 18's suites measure quantization on the trained
#: model and read its tokenizer and corpus on the tests' side, never the student's (a submission can change it).
ASSETS = ("assets/aios-tiny-lm", "assets/corpus")
#: Docs students may read (docs/conventions.md is left out: its example is lesson 1's code).
STUDENT_DOCS = ("docs/learner-workflow.md", "docs/progression.md", "docs/benchmarks.md", "docs/classroom.md")
#: tests/infra files that pass on the stubbed aios/ and need no solutions/.
STUDENT_INFRA_TESTS = ("tests/infra/test_fixtures.py", "tests/infra/test_sampling_params.py")
#: Grader modules always shipped; cli.COMMAND_MODULES and every grader module they import join them.
GRADER_MODULES = ("__init__", "__main__", "cli", "board", "curriculum", "hints", "progress", "runner", "classroom")
GRADER_DATA = ("grader/curriculum.toml", "grader/_pytest/aios_grader_report.py", "grader/templates")
#: Maintainer material, in neither tree: the mutant catalogue is solution code with bugs planted.
MAINTAINER_ONLY = ("grader/mutants/",)
#: Never in the student tree, whatever the lists above say.
FORBIDDEN_PREFIXES = ("solutions/", "grader/hidden/") + MAINTAINER_ONLY
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".DS_Store"}
SKIP_SUFFIXES = (".pyc", ".pyo")
MARKER_LINE = re.compile(r"^\s*#\s*(BEGIN|END) SOLUTION\b", re.M)


class ReleaseError(Exception):
    """Why the release cannot be written; shown to the instructor as is."""


def register(subparsers) -> None:
    """Add the ``release`` subcommand."""
    parser = subparsers.add_parser("release", help="write the student repository and the autograder bundle")
    parser.add_argument("out", metavar="OUT", help="output folder (outside the repository's tracked files)")
    parser.add_argument("--force", action="store_true", help="replace student/, autograder/ and the archive in OUT")
    parser.set_defaults(handler=cmd_release)


def cmd_release(args, curriculum: Curriculum) -> int:
    """``release OUT``: build both trees, check the student one, write everything."""
    out = Path(args.out).expanduser().resolve()
    try:
        check_out_dir(out, curriculum.root, args.force)
        student = student_files(curriculum)
        problems = leaks(student, curriculum.root)
        if problems:
            raise ReleaseError("the student tree would reveal solutions:\n  " + "\n  ".join(problems))
        bundle = bundle_files(curriculum)
        clear_outputs(out)
        write_tree(student, out / STUDENT)
        write_tree(bundle, out / BUNDLE)
        (out / ARCHIVE).write_bytes(pack(bundle, BUNDLE))
    except (ReleaseError, stubgen.MarkerError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"release: cannot write {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print_summary(out, student, bundle)
    return 0


# ---------------------------------------------------------------------------- where OUT may be


def _git_ignored(root: Path, rel: Path) -> bool | None:
    """Whether git ignores ``rel`` (a folder) in ``root``; None when git cannot tell."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--", rel.as_posix() + "/"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 1: False}.get(proc.returncode)


def check_out_dir(out: Path, root: Path, force: bool) -> None:
    """Refuse an OUT inside the tracked tree, holding the repository, or non-empty without --force."""
    root = root.resolve()
    if root.is_relative_to(out):
        raise ReleaseError(f"{out} contains the repository itself; pick a folder outside it")
    if out.is_relative_to(root) and not _git_ignored(root, out.relative_to(root)):
        raise ReleaseError(f"{out} lies inside the repository's tracked files; pick a folder outside "
                           f"{root} or an ignored one such as {root / 'release'}")
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReleaseError(f"{out} is not empty; pass --force to replace {STUDENT}/, {BUNDLE}/ and {ARCHIVE} in it")


def clear_outputs(out: Path) -> None:
    """Remove the previous outputs (only those) from ``out``."""
    for name in (STUDENT, BUNDLE):
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    for name in (STUDENT, BUNDLE, ARCHIVE):
        if (out / name).is_file() or (out / name).is_symlink():
            (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- what goes where


def _walk(root: Path, rel: str) -> dict[str, Path]:
    """``rel`` (a file or a folder, caches left out) as ``{repo path: source file}``."""
    path = root / rel
    if path.is_file():
        return {rel: path}
    if not path.is_dir():
        raise ReleaseError(f"allow-listed path {rel} is missing from {root}")
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        for name in sorted(filenames):
            if name not in SKIP_NAMES and not name.endswith(SKIP_SUFFIXES):
                file = Path(dirpath) / name
                found[file.relative_to(root).as_posix()] = file
    return found


def _collect(root: Path, paths: list[str]) -> dict[str, bytes]:
    """Read every allow-listed path into ``{repo path: bytes}``."""
    files: dict[str, bytes] = {}
    for rel in paths:
        for key, source in _walk(root, rel).items():
            files[key] = source.read_bytes()
    return files


def command_modules(root: Path) -> tuple[str, ...]:
    """``COMMAND_MODULES`` of ``root/grader/cli.py``, read without importing it."""
    tree = ast.parse((root / "grader" / "cli.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES" for t in targets) and node.value is not None:
            return tuple(ast.literal_eval(node.value))
    return ()


def _imported_grader_modules(source: str) -> set[str]:
    """Names of the ``grader.X`` modules a source file imports (anywhere in it)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("grader.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "grader":
                names |= {a.name for a in node.names}
            elif node.module.startswith("grader."):
                names.add(node.module.split(".")[1])
    return names


def _module_sources(root: Path, name: str) -> list[Path]:
    """The source files of grader module ``name``: ``grader/name.py``, or every file of the package ``grader/name/``."""
    path = root / "grader" / name
    if path.with_suffix(".py").is_file():
        return [path.with_suffix(".py")]
    if f"grader/{name}/".startswith(FORBIDDEN_PREFIXES) or not (path / "__init__.py").is_file():
        return []
    return sorted(path.rglob("*.py"))


def grader_modules(root: Path) -> list[str]:
    """The grader modules (and packages) to ship: GRADER_MODULES, the command modules, and all they import."""
    todo = list(GRADER_MODULES) + list(command_modules(root))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        sources = _module_sources(root, name)
        if name in seen or not sources:
            continue
        seen.add(name)
        for source in sources:
            todo.extend(_imported_grader_modules(source.read_text(encoding="utf-8")))
    missing = [m for m in list(GRADER_MODULES) + list(command_modules(root)) if m not in seen]
    if missing:
        raise ReleaseError("grader modules missing from grader/: " + ", ".join(missing))
    return sorted(seen)


def grader_paths(root: Path) -> list[str]:
    """Every grader path both trees carry (hidden suites not included)."""
    data = [rel for rel in GRADER_DATA if (root / rel).exists()]
    modules = [f"grader/{name}.py" if (root / "grader" / f"{name}.py").is_file() else f"grader/{name}"
               for name in grader_modules(root)]
    return modules + data


def student_files(curriculum: Curriculum) -> dict[str, bytes]:
    """The student repository as ``{path: bytes}``."""
    root = curriculum.root
    if not (root / "solutions" / "aios").is_dir():
        raise ReleaseError(f"{root} has no solutions/aios: release runs in the instructor's repository")
    paths = list(TOP_FILES) + list(STUDENT_TOP_FILES) + grader_paths(root)
    paths += [p for p in STUDENT_DOCS + STUDENT_INFRA_TESTS + ASSETS + ASSISTANT_FILES if (root / p).exists()]
    for lesson in curriculum.lessons:
        paths += [p for p in (lesson.folder, lesson.visible) if (root / p).exists()]
    files = _collect(root, paths)
    files.update(stubgen.generate(root / "solutions" / "aios"))
    files["README.md"] = (TEMPLATES / "student_README.md").read_bytes()
    files[".github/workflows/classroom.yml"] = (TEMPLATES / "classroom.yml").read_bytes()
    forbidden = [p for p in files if p.startswith(FORBIDDEN_PREFIXES)]
    if forbidden:
        raise ReleaseError("the allow-list reaches into forbidden folders: " + ", ".join(sorted(forbidden)))
    return files


def bundle_files(curriculum: Curriculum) -> dict[str, bytes]:
    """The autograder bundle as ``{path: bytes}``."""
    root = curriculum.root
    paths = list(TOP_FILES) + [p for p in BUNDLE_TOP_FILES + ASSETS if (root / p).exists()] + grader_paths(root)
    for lesson in curriculum.lessons:
        paths += [p for p in (lesson.visible, lesson.hidden) if (root / p).exists()]
    files = _collect(root, paths)
    files["README.md"] = (TEMPLATES / "bundle_README.md").read_bytes()
    forbidden = [p for p in files if p.startswith(MAINTAINER_ONLY)]
    if forbidden:
        raise ReleaseError("the bundle's allow-list reaches into maintainer folders: " + ", ".join(sorted(forbidden)))
    return files


# ---------------------------------------------------------------------------- the leak check


def _normalized(text: str) -> str:
    """Non-blank lines stripped of surrounding whitespace, one per line."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def region_bodies(root: Path) -> dict[str, str]:
    """Each solution region's code (its ``# Hint`` lines left out), normalized, by symbol."""
    src = root / "solutions" / "aios"
    bodies: dict[str, str] = {}
    for region in stubgen.scan_regions(src):
        lines = (src.parent / region.path).read_text(encoding="utf-8").splitlines()
        body = [line for line in lines[region.begin : region.end - 1] if not line.strip().startswith("# Hint")]
        text = _normalized("\n".join(body))
        if text:
            bodies[f"{region.symbol} (line {region.begin})"] = text
    return bodies


def leaks(files: dict[str, bytes], root: Path) -> list[str]:
    """What in ``files`` gives a solution away: marker lines and solution region bodies."""
    bodies = region_bodies(root)
    problems = []
    for path, data in sorted(files.items()):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if MARKER_LINE.search(text):
            problems.append(f"{path}: holds a solution marker line")
        flat = _normalized(text)
        problems += [f"{path}: holds the body of {symbol}" for symbol, body in bodies.items() if body in flat]
    return problems


# ---------------------------------------------------------------------------- writing


def write_tree(files: dict[str, bytes], dest: Path) -> None:
    """Write ``files`` under ``dest``."""
    for rel, data in sorted(files.items()):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def pack(files: dict[str, bytes], top: str) -> bytes:
    """A reproducible .tar.gz of ``files`` under ``top/``: sorted, zero times and owners."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def print_summary(out: Path, student: dict[str, bytes], bundle: dict[str, bytes]) -> None:
    """What was written, and where the bundle can go."""
    archive = out / ARCHIVE
    encoded = len(base64.b64encode(archive.read_bytes()))
    hidden = sum(1 for p in bundle if p.startswith("grader/hidden/") and p.endswith(".py"))
    fits = "fits" if encoded <= SECRET_LIMIT else "too big"
    print(f"student repository: {out / STUDENT} ({len(student)} files; no solutions/, no grader/hidden/)")
    print(f"autograder bundle:  {out / BUNDLE} ({len(bundle)} files, {hidden} hidden test files)")
    print(f"bundle archive:     {archive} ({archive.stat().st_size // 1024} KB; as base64 {encoded // 1024} KB, "
          f"{fits} for one GitHub secret)")
    print("next: docs/classroom.md (push student/ as the template repository; keep the bundle private)")
