"""Nox sessions for AIOS: grading, the honesty checks, the test suite and the stub generator.

    nox -s grade               # grade the current lesson, then show the board
    nox -s grade-lesson3       # grade lesson 3 (grade-lesson0 ... grade-lesson17)
    nox -s watch               # re-grade the current lesson whenever aios/ changes (-- 3 for lesson 3)
    nox -s selfcheck           # reference passes, stubs fail, aios/ up to date
    nox -s tests               # every visible suite + tests/infra against the reference
    nox -s stubgen             # regenerate aios/ from solutions/aios/ (-- --check to only compare)
    nox -s env                 # which Python the sessions run with, and what it lacks
    nox -s docs                # the course website into site/, checked in headless Chromium (requirements-docs.txt)
    nox -s mutants             # maintainers: every catalogued bug fails its lesson's tests (docs/mutants.md)

Environment choice: sessions run in a Python environment that already holds the pinned
packages, so that nothing is installed twice. nox looks, in this order, at ``$AIOS_PYTHON``
(when set, the only one looked at), the active virtual environment (``$VIRTUAL_ENV``), the
interpreter running nox and ``python3`` on PATH. The first one whose packages match
``requirements-dev.txt`` runs every session as it is: exact versions, except that any torch
and any triton will do (a CUDA build, with the triton it brings, is never replaced).
When none matches, every session shares ONE virtual environment, ``.nox/aios``, made from
the first of them that has torch (else the first) with ``--system-site-packages``, plus a
``.pth`` file that shows it that interpreter's own site-packages when it is itself a
virtual environment (a venv made from a venv otherwise sees only the base interpreter's).
Only what is missing or at another version is installed there, each listed with the
reason: torch from ``$AIOS_TORCH_SPEC`` (default ``torch==2.13.0`` when no NVIDIA driver
is visible, plain ``torch`` otherwise), everything else as pinned. ``nox -s env`` shows the
choice. Delete ``.nox/aios`` to start over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".nox" / "aios"
REQUIREMENTS = ROOT / "requirements-dev.txt"


def _curriculum_lessons() -> list[int]:
    """The lesson ids of grader/curriculum.toml (none when this file is used alone, as its tests do)."""
    path = ROOT / "grader" / "curriculum.toml"
    if not path.is_file():
        return []
    return [lesson["id"] for lesson in tomllib.loads(path.read_text())["lesson"]]


#: One grade-lessonN session per lesson of the curriculum.
LESSONS = _curriculum_lessons()
#: Any installed version will do: a CUDA torch build and the triton it brings must never be replaced.
ANY_VERSION = frozenset({"torch", "triton"})
#: The file in .nox/aios that shows it the site-packages of the virtual environment it was made from.
BASE_PTH = "aios-base-env.pth"

nox.options.default_venv_backend = "none"
nox.options.sessions = ["grade"]


class _NoUvNotice(logging.Filter):
    """Drop nox's "uv binary not found." line: nox looks for uv before every session, even one
    with ``venv_backend="none"`` (it lists the optional backends), and says so when uv is
    absent; no session here uses uv, so the line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "uv binary not found."


logging.getLogger("nox").addFilter(_NoUvNotice())

PROBE_SCRIPT = """
import importlib.metadata, json, sys, sysconfig
versions = {}
for name in sys.argv[1:]:
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
paths = list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
print(json.dumps({"python": sys.executable, "is_venv": sys.prefix != sys.base_prefix, "site": paths,
                  "version": "%d.%d" % sys.version_info[:2], "versions": versions}))
"""


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter and the versions it has of the pinned packages (None: not installed)."""

    python: str
    versions: dict[str, str | None]
    is_venv: bool = False
    site: tuple[str, ...] = ()
    version: str = ""


@dataclass(frozen=True)
class Unmet:
    """A pinned requirement an interpreter does not meet, and the version it has instead."""

    requirement: Requirement
    installed: str | None = None

    @property
    def name(self) -> str:
        """The package's normalized name."""
        return canonicalize_name(self.requirement.name)

    def __str__(self) -> str:
        return f"{self.requirement} ({f'{self.installed} installed' if self.installed else 'not installed'})"


def read_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    """The requirements in ``path`` (comments and blank lines left out)."""
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def unmet(requirements: list[Requirement], versions: dict[str, str | None]) -> list[Unmet]:
    """The requirements ``versions`` (normalized name: installed version or None) does not meet.

    The version must match the pin, except for ANY_VERSION packages, which only must be
    installed; a requirement whose environment marker excludes this platform is skipped.
    """
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        installed = versions.get(name)
        if installed is None or (name not in ANY_VERSION and not req.specifier.contains(installed, prereleases=True)):
            problems.append(Unmet(req, installed))
    return problems


def choose(interpreters: list[Interpreter], requirements: list[Requirement]) -> tuple[Interpreter, list[Unmet]]:
    """The first interpreter that meets every requirement, with ``[]``; when none does, the one
    to build ``.nox/aios`` on (the first with torch, else the first) and what it lacks."""
    for interpreter in interpreters:
        if not unmet(requirements, interpreter.versions):
            return interpreter, []
    base = next((i for i in interpreters if i.versions.get("torch")), interpreters[0])
    return base, unmet(requirements, base.versions)


def candidates() -> list[str]:
    """The interpreters that may already hold the pinned packages, in the order they are tried."""
    if os.environ.get("AIOS_PYTHON"):
        return [os.environ["AIOS_PYTHON"]]
    active = os.environ.get("VIRTUAL_ENV")
    found = [_venv_python(Path(active)) if active else None, sys.executable, shutil.which("python3")]
    return list(dict.fromkeys(str(p) for p in found if p))


def probe(python: str, requirements: list[Requirement]) -> Interpreter | None:
    """What ``python`` has installed of ``requirements``; None when it does not run."""
    names = sorted({canonicalize_name(r.name) for r in requirements})
    try:
        out = subprocess.run([python, "-c", PROBE_SCRIPT, *names], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    data = json.loads(out)
    return Interpreter(data["python"], data["versions"], data["is_venv"], tuple(data["site"]), data["version"])


def _venv_python(venv: Path = VENV) -> Path:
    """The interpreter of the virtual environment ``venv``."""
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _torch_spec() -> str:
    """What to install when torch is missing."""
    if os.environ.get("AIOS_TORCH_SPEC"):
        return os.environ["AIOS_TORCH_SPEC"]
    cuda_visible = shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists()
    return "torch" if cuda_visible else "torch==2.13.0"


def _show_base_packages(shared: Interpreter, base: Interpreter) -> None:
    """Let ``.nox/aios`` see ``base``'s own site-packages (a .pth file) when ``base`` is a virtual environment."""
    pth = Path(shared.site[0]) / BASE_PTH
    if not base.is_venv:
        pth.unlink(missing_ok=True)
        return
    lines = [f"# made from {base.python}: its packages stay visible"]
    lines += [f"import site; site.addsitedir({path!r})" for path in base.site]
    pth.write_text("\n".join(lines) + "\n", encoding="utf-8")


def shared_env(session: nox.Session) -> str:
    """The python every session runs with: one that meets the pins, else ``.nox/aios`` completed."""
    requirements = read_requirements()
    interpreters = [found for found in (probe(p, requirements) for p in candidates()) if found]
    if not interpreters:
        session.error(f"no Python interpreter runs among {candidates()}; set $AIOS_PYTHON")
    base, lacking = choose(interpreters, requirements)
    if not lacking:
        session.log(f"using {base.python}: it has every package requirements-dev.txt pins")
        return base.python
    session.log(f"{base.python} lacks {len(lacking)} of the pinned packages: sessions run in {VENV}, "
                f"made from it, with its packages visible")
    shared = probe(str(_venv_python()), requirements)
    if shared is None or shared.version != base.version:
        session.run(base.python, "-m", "venv", "--clear", "--system-site-packages", str(VENV), external=True)
        shared = probe(str(_venv_python()), requirements)
    if shared is None:
        session.error(f"{_venv_python()} does not run; delete {VENV} and try again")
    _show_base_packages(shared, base)
    lacking = unmet(requirements, probe(shared.python, requirements).versions)
    if lacking:
        session.log(f"installing into {VENV}: " + "; ".join(map(str, lacking)))
        specs = [_torch_spec() if u.name == "torch" else str(u.requirement) for u in lacking]
        session.run(shared.python, "-m", "pip", "install", "-q", *specs, external=True)
    return shared.python


@nox.session(venv_backend="none")
def env(session: nox.Session) -> None:
    """Which Python the sessions run with, and why: what each candidate lacks of requirements-dev.txt."""
    requirements = read_requirements()
    for python in candidates():
        found = probe(python, requirements)
        lacking = unmet(requirements, found.versions) if found else []
        verdict = ("does not run" if found is None else "has every pinned package" if not lacking
                   else "lacks " + "; ".join(map(str, lacking)))
        session.log(f"{python}: {verdict}")
    session.log(f"sessions run with {shared_env(session)}")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The course website: mkdocs build --strict into site/, then tests/docs in headless Chromium (-- --no-test: build only)."""
    python = shared_env(session)
    requirements = read_requirements(ROOT / "requirements-docs.txt")
    lacking = unmet(requirements, probe(python, requirements).versions)
    if lacking:
        session.error(f"{python} lacks " + "; ".join(map(str, lacking)) +
                      f"; install them with: {python} -m pip install -r requirements-docs.txt")
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # Material's notice of its end of life (May 2027), on every build
    session.run(python, "-m", "mkdocs", "build", "--strict", external=True, env=quiet)
    if "--no-test" not in session.posargs:
        session.run(python, "-m", "pytest", "tests/docs", "-q", "-p", "no:cacheprovider", *session.posargs,
                    external=True, env={**quiet, "AIOS_DOCS_SITE": str(ROOT / "site")})


def _lesson_session(command: str, lesson: int, doc: str):
    """Make the session ``<command>-lesson<N>``: runs ``python -m grader <command> N [posargs]``."""

    def lesson_session(session: nox.Session) -> None:
        python = shared_env(session)
        session.run(python, "-m", "grader", command, str(lesson), *session.posargs, external=True)

    lesson_session.__doc__ = doc
    return nox.session(name=f"{command}-lesson{lesson}", venv_backend="none")(lesson_session)


for _lesson in LESSONS:
    globals()[f"grade_lesson{_lesson}"] = _lesson_session(
        "grade", _lesson, f"Grade lesson {_lesson} (visible then hidden tests).")
    globals()[f"compare_lesson{_lesson}"] = _lesson_session(
        "compare", _lesson, f"Lesson {_lesson}: your functions beside the reference's (and both engines' tok/s on a GPU).")


@nox.session(venv_backend="none")
def grade(session: nox.Session) -> None:
    """Grade the current lesson (the lowest unlocked one not passed yet), then print the board."""
    python = shared_env(session)
    session.run(python, "-m", "grader", "grade", *session.posargs, external=True)


@nox.session(venv_backend="none")
def watch(session: nox.Session) -> None:
    """Re-grade the current lesson (or -- N) on every change under aios/; Ctrl-C stops."""
    python = shared_env(session)
    session.run(python, "-m", "grader", "watch", *session.posargs, external=True)


@nox.session(venv_backend="none")
def selfcheck(session: nox.Session) -> None:
    """The honesty checks: python -m grader selfcheck [--lessons 1,2]."""
    python = shared_env(session)
    session.run(python, "-m", "grader", "selfcheck", *session.posargs, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Every visible lesson suite and tests/infra against the reference engine."""
    python = shared_env(session)
    session.run(python, "-m", "pytest", "tests", "-q", *session.posargs, external=True,
                env={"AIOS_IMPL": "reference"}, success_codes=[0, 5])


@nox.session(venv_backend="none")
def stubgen(session: nox.Session) -> None:
    """Regenerate aios/ from solutions/aios/ (pass -- --check to compare only)."""
    python = shared_env(session)
    session.run(python, "-m", "grader.stubgen", *session.posargs, external=True)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The headline throughput benchmark on a GPU: python -m aios bench [-- --batch1]. AIOS_IMPL=reference times solutions/."""
    python = shared_env(session)
    env = {"PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1"} if os.environ.get("AIOS_IMPL") == "reference" else {}
    session.run(python, "-m", "aios", "bench", *session.posargs, external=True, env=env)


@nox.session(venv_backend="none")
def ladder(session: nox.Session) -> None:
    """The throughput ladder (GPU): the reference engine stage by stage, lessons 3-13; files in .nox/ladder/.

    Extra arguments go to python -m aios.bench.ladder, e.g. nox -s ladder -- --stages 3-8 --out DIR.
    """
    python = shared_env(session)
    env = {"PYTHONPATH": str(ROOT / "solutions"), "PYTHONSAFEPATH": "1"}
    session.run(python, "-m", "aios.bench.ladder", "--ladder", "--out", str(VENV.parent / "ladder"),
                *session.posargs, external=True, env=env)


@nox.session(venv_backend="none")
def mutants(session: nox.Session) -> None:
    """The mutant catalogue: each planted bug must fail its lesson's tests (-- --lessons 1,6, -- --sample 1 --seed 7)."""
    python = shared_env(session)
    session.run(python, "-m", "grader", "mutants", *session.posargs, external=True)


@nox.session(name="fuzz-server", venv_backend="none")
def fuzz_server(session: nox.Session) -> None:
    """The server's API fuzz tests at length (CI runs 40 examples each): -- 2000 sets the examples per test."""
    python = shared_env(session)
    examples = session.posargs[0] if session.posargs else "1000"
    session.run(python, "-m", "pytest", "tests/infra/test_server_fuzz.py", "-q", external=True,
                env={"AIOS_IMPL": "reference", "AIOS_FUZZ_EXAMPLES": examples})


@nox.session(venv_backend="none")
def attacks(session: nox.Session) -> None:
    """Every classroom attack of tests/infra/test_autograder_attacks.py (CI grades a fixed sample of them)."""
    python = shared_env(session)
    session.run(python, "-m", "pytest", "tests/infra/test_autograder_attacks.py", "-q", *session.posargs,
                external=True, env={"AIOS_IMPL": "reference", "AIOS_ATTACKS": "all"})
