"""Nox sessions for AIOS: grading, the honesty checks, the test suite and the stub generator.

    nox -s grade               # grade the current lesson, then show the board
    nox -s grade-lesson3       # grade lesson 3 (grade-lesson0 ... grade-lesson15)
    nox -s watch               # re-grade the current lesson whenever aios/ changes (-- 3 for lesson 3)
    nox -s selfcheck           # reference passes, stubs fail, aios/ up to date
    nox -s tests               # every visible suite + tests/infra against the reference
    nox -s stubgen             # regenerate aios/ from solutions/aios/ (-- --check to only compare)
    nox -s mutants             # maintainers: every catalogued bug fails its lesson's tests (docs/mutants.md)

Environment choice: every session shares ONE virtual environment, ``.nox/aios``, made once
with ``--system-site-packages`` (nox's own per-session environments would each download
torch, several GB). Because it sees the system's site-packages, a torch already installed
there (a CUDA build on a GPU machine, the pinned CPU build on CI) is reused as it is.
Packages are installed into it only when missing: torch from ``$AIOS_TORCH_SPEC``
(default ``torch==2.13.0`` when no NVIDIA driver is visible, plain ``torch`` otherwise),
everything else from ``requirements-dev.txt``. ``$AIOS_PYTHON`` picks the interpreter
the environment is made from (default: ``python3`` on PATH). Delete ``.nox/aios`` to
start over.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".nox" / "aios"
REQUIREMENTS = ROOT / "requirements-dev.txt"
LESSONS = range(16)

nox.options.default_venv_backend = "none"
nox.options.sessions = ["grade"]

MISSING_SCRIPT = """
import importlib.metadata, re, sys
missing = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name = re.split(r"[<>=!~\\[; ]", line)[0]
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        missing.append(line)
print("\\n".join(missing))
"""


def _venv_python() -> Path:
    """The shared environment's interpreter."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _torch_spec() -> str:
    """What to install when torch is missing."""
    if os.environ.get("AIOS_TORCH_SPEC"):
        return os.environ["AIOS_TORCH_SPEC"]
    cuda_visible = shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists()
    return "torch" if cuda_visible else "torch==2.13.0"


def shared_env(session: nox.Session) -> str:
    """Create ``.nox/aios`` if needed, install what is missing, return its python."""
    python = _venv_python()
    if not python.exists():
        base = os.environ.get("AIOS_PYTHON") or shutil.which("python3") or sys.executable
        session.log(f"creating the shared environment {VENV} (system site-packages visible)")
        session.run(base, "-m", "venv", "--system-site-packages", str(VENV), external=True)
    missing = session.run(str(python), "-c", MISSING_SCRIPT, str(REQUIREMENTS), external=True, silent=True,
                          log=False)
    missing = [line for line in (missing or "").splitlines() if line.strip()]
    torch = [m for m in missing if m.startswith("torch") and m.split("=")[0].strip() == "torch"]
    others = [m for m in missing if m not in torch]
    if torch:
        session.run(str(python), "-m", "pip", "install", "-q", _torch_spec(), external=True)
    if others:
        session.run(str(python), "-m", "pip", "install", "-q", *others, external=True)
    return str(python)


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
