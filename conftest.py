"""Root pytest configuration: which ``aios`` the tests import, shared fixtures, markers.

``AIOS_IMPL`` picks the tree (docs/conventions.md); with ``AIOS_REMOTE=1`` (how the grader
runs the tests) that tree is imported only by a separate learner worker process and the
tests see proxies (grader/remote/client.py); otherwise it is imported here:

* ``learner`` (default): the repository's generated ``aios/``;
* ``reference``: ``solutions/aios/``;
* any other value: a directory that contains an ``aios/`` package (or the package itself),
  relative paths taken from the current directory, then from the repository root.

That directory goes first on ``sys.path`` (ahead of the repository root, which pytest
inserts for this file), any ``aios`` modules already imported are dropped, and the
directory is prepended to ``PYTHONPATH`` with ``PYTHONSAFEPATH=1`` so that subprocesses
(``python -m aios ...``, ``python -c ...``) import the same tree even when started
from the repository root.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def resolve_impl(value: str | None) -> tuple[str, Path]:
    """Map an ``AIOS_IMPL`` value to ``(label, directory holding aios/)``."""
    value = (value or "learner").strip() or "learner"
    if value == "learner":
        return "learner", ROOT
    if value == "reference":
        return "reference", ROOT / "solutions"
    for base in (Path.cwd(), ROOT):
        path = (base / value).resolve()
        if path.name == "aios" and (path / "__init__.py").is_file():
            return "path", path.parent
        if (path / "aios").is_dir():
            return "path", path
    raise pytest.UsageError(f"AIOS_IMPL={value!r}: no directory containing an aios/ package there")


def _purge_aios_modules() -> None:
    """Forget every imported ``aios`` module so the next import reads the chosen tree."""
    for name in list(sys.modules):
        if name == "aios" or name.startswith("aios."):
            del sys.modules[name]


class _ChosenTree(importlib.abc.MetaPathFinder):
    """Finds the top-level ``aios`` package in the chosen tree only, whatever ``sys.path`` says.

    pytest may put the repository root back in front of ``sys.path`` after this conftest ran
    (setting up the ``grader`` package of a hidden suite imports ``grader/__init__.py`` with
    the root first), so a test that imports ``aios`` inside a fixture would find the stubs.
    Submodules follow the package's ``__path__``."""

    def __init__(self, impl_dir: Path):
        self.where = [str(impl_dir)]

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "aios":
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, self.where)


def _activate(impl_dir: Path) -> None:
    """Put ``impl_dir`` first for this process and for its subprocesses."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ChosenTree)]
    sys.meta_path.insert(0, _ChosenTree(impl_dir))
    target = str(impl_dir)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != target]
    sys.path.insert(0, target)
    if str(ROOT) not in [os.path.abspath(p or os.curdir) for p in sys.path]:
        # Keep the root present (after the impl) so pytest never re-inserts it in front.
        sys.path.insert(1, str(ROOT))
    _purge_aios_modules()
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != target]
    os.environ["PYTHONPATH"] = os.pathsep.join([target, *rest])
    os.environ["PYTHONSAFEPATH"] = "1"


def _start_worker(impl_dir: Path) -> None:
    """Trust split (docs/classroom.md): ``import aios`` yields proxies to a learner worker process."""
    from grader.remote.client import install

    global _OWN_LOG_DIR
    log = os.environ.get("AIOS_REMOTE_LOG")
    if not log:  # a run outside the grader: a log folder of our own, removed at the end (pytest_unconfigure)
        _OWN_LOG_DIR = tempfile.mkdtemp(prefix="aios-worker-log-")
        log = os.path.join(_OWN_LOG_DIR, "worker.log")
    preload = [name for name in os.environ.get("AIOS_REMOTE_PRELOAD", "").split(",") if name]
    install(impl_dir, block_hf_models=os.environ.get("AIOS_REMOTE_BLOCK_HF") == "1", log_path=Path(log),
            preload=preload)


_OWN_LOG_DIR: str | None = None


IMPL_LABEL, IMPL_DIR = resolve_impl(os.environ.get("AIOS_IMPL"))
REMOTE = os.environ.get("AIOS_REMOTE") == "1"
_start_worker(IMPL_DIR) if REMOTE else _activate(IMPL_DIR)
os.environ["AIOS_IMPL"] = IMPL_LABEL if IMPL_LABEL != "path" else str(IMPL_DIR)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_report_header(config):
    """Show which tree ``import aios`` resolves to."""
    package = IMPL_DIR / "aios"
    missing = "" if (package / "__init__.py").is_file() else "  (missing!)"
    where = "  [in the learner worker]" if REMOTE else ""
    return f"aios implementation: {IMPL_LABEL} ({package}){missing}{where}"


def pytest_unconfigure(config):
    """Stop the learner worker (remote mode) with its whole process tree."""
    if REMOTE:
        from grader.remote.client import uninstall

        uninstall()
        if _OWN_LOG_DIR:
            shutil.rmtree(_OWN_LOG_DIR, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin made config._tmp_path_factory
def pytest_configure(config):
    """Register the project's markers; lend a sandboxed learner worker the tests' tmp_path folders
    (it runs as another user)."""
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped with a reason without one")
    config.addinivalue_line("markers", "benchmark_gpu: a GPU benchmark (pytest-benchmark); skipped without CUDA")
    config.addinivalue_line("markers", "hint(n): the lesson README's hint n (1-based) addresses this test's failure")
    if REMOTE:
        from grader.remote.client import lend_tmp_paths, sandboxed

        if sandboxed() and getattr(config, "_tmp_path_factory", None) is not None:
            lend_tmp_paths(config._tmp_path_factory)


def _cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# Without a GPU, Triton kernels run in its interpreter. Triton reads TRITON_INTERPRET once, when it
# is first imported (its own tl.sum/tl.max helpers are defined then), and any test may import it
# first, even through torch.compile: so the switch is set here, before any test module is imported.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests without CUDA, and refuse to run if ``aios`` came from the wrong tree."""
    module = sys.modules.get("aios")
    if module is not None and getattr(module, "__file__", None):
        origin = Path(module.__file__).resolve()
        if not origin.is_relative_to(IMPL_DIR / "aios"):
            raise pytest.UsageError(f"aios was imported from {origin}, not from {IMPL_DIR / 'aios'} (AIOS_IMPL)")
    gpu_items = [i for i in items if i.get_closest_marker("gpu") or i.get_closest_marker("benchmark_gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def learner_import():
    """``learner_import(name)``: library module ``name`` on the learner's side of the trust split.

    ``learner_import("subprocess").run(...)`` starts a command that runs learner code
    (``python -m aios ...``) from the learner worker, never as a child of the test process;
    ``learner_import("torch.nn").ModuleDict(...)`` builds a module there around learner
    layers. Without remote mode it is plain ``importlib.import_module``.
    """
    if not REMOTE:
        return importlib.import_module
    from grader.remote.client import worker_module

    return worker_module


@pytest.fixture(scope="session")
def learner_object():
    """``learner_object(tensor)``: the learner's own tensor behind a copy the test got.

    In remote mode a tensor read off a learner object is a copy; to set an attribute on
    the original (a Parameter's ``weight_loader``) ask for it with this. Without remote
    mode there are no copies, and it returns its argument.
    """
    if not REMOTE:
        return lambda value: value
    from grader.remote.client import original

    return original


@pytest.fixture(scope="session")
def learner_helper():
    """``learner_helper(path)``: the test helper module at ``path``, imported where the learner's code runs.

    For test code that must run beside the learner's: the functions ``launch_ranks`` runs in
    each rank process, a slowed engine step called from the engine's own thread, a coroutine
    that interleaves with learner coroutines on their event loop. In remote mode the module
    is imported in the learner worker (its results come back as data); otherwise it is
    imported here, its folder put on ``sys.path`` (so spawned processes find it too).
    """
    if REMOTE:
        from grader.remote.client import helper_module

        return helper_module

    def load(path):
        folder = str(Path(path).resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
        return importlib.import_module(Path(path).stem)

    return load


def _cached_model(preset: str) -> Path:
    """``aios.fixtures.cached_model(preset)``, skipping while the fixtures do not exist yet."""
    try:
        from aios.fixtures import cached_model
    except ImportError as exc:
        pytest.skip(f"aios.fixtures.cached_model is not available: {exc}")
    return Path(cached_model(preset))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Qwen3 checkpoint in Hugging Face format (made once, then cached)."""
    return _cached_model("tiny")


@pytest.fixture(scope="session")
def small_model_dir() -> Path:
    """A small random Qwen3 checkpoint in Hugging Face format (made once, then cached)."""
    return _cached_model("small")


@pytest.fixture
def timed_once(benchmark):
    """``timed_once(function, *args, **kwargs)``: one call under pytest-benchmark's clock, its result returned.

    The clock runs here, on the tests' side: the learner's code (which may run in the grader's
    worker process) never receives the fixture, only its own arguments.
    """

    def run(function, *args, **kwargs):
        results = []
        benchmark.pedantic(lambda: results.append(function(*args, **kwargs)), rounds=1, iterations=1)
        return results[-1]

    return run
