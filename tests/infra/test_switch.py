"""The AIOS_IMPL switch of the root conftest.py: which ``aios`` tests import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "tests/infra/switch_probe.py"


def expected_package() -> Path:
    """The aios package the current session should import, from the normalised AIOS_IMPL."""
    value = os.environ.get("AIOS_IMPL", "learner")
    if value == "learner":
        return REPO / "aios"
    if value == "reference":
        return REPO / "solutions" / "aios"
    return Path(value) / "aios"


def test_this_session_imports_the_selected_tree():
    import aios

    assert Path(aios.__file__).resolve() == (expected_package() / "__init__.py").resolve()
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(expected_package().parent)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a shell a person would type in: no switch settings inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_IMPL", "PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(extra)
    return env


def run_probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the probe in a child pytest from the repository root."""
    return subprocess.run([sys.executable, "-m", "pytest", PROBE, "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    """A directory holding a minimal aios/ package (with a submodule)."""
    package = tmp_path / "impl" / "aios"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""fake aios"""\n')
    (package / "probe_sub.py").write_text("X = 1\n")
    return tmp_path / "impl"


def settings(fake: Path) -> list[tuple[dict[str, str], Path]]:
    """(extra environment, expected package) for every kind of AIOS_IMPL value."""
    cases = [({}, REPO / "aios"), ({"AIOS_IMPL": "learner"}, REPO / "aios"),
             ({"AIOS_IMPL": "reference"}, REPO / "solutions" / "aios"),
             ({"AIOS_IMPL": str(fake)}, fake / "aios"), ({"AIOS_IMPL": str(fake / "aios")}, fake / "aios"),
             ({"AIOS_IMPL": os.path.relpath(fake, REPO)}, fake / "aios")]
    return [(env, pkg) for env, pkg in cases if (pkg / "__init__.py").exists()]


def test_each_setting_wins_in_process_and_in_subprocesses(fake_tree):
    cases = settings(fake_tree)
    assert any(pkg == fake_tree / "aios" for _, pkg in cases)
    for extra, package in cases:
        result = run_probe(plain_env(EXPECT_AIOS=str(package), **extra))
        assert result.returncode == 0, (extra, result.stdout[-3000:])
        assert f"aios implementation: " in result.stdout and str(package) in result.stdout


def test_already_imported_aios_is_replaced(fake_tree, tmp_path):
    """A plugin that imports another aios before conftest.py runs must not pin that tree."""
    decoy = tmp_path / "decoy"
    (decoy / "aios").mkdir(parents=True)
    (decoy / "aios" / "__init__.py").write_text('"""decoy"""\n')
    (decoy / "preimport_aios.py").write_text(
        f"import sys\nsys.path.insert(0, {str(decoy)!r})\nimport aios\nassert 'decoy' in aios.__file__\n")
    env = plain_env(EXPECT_AIOS=str(fake_tree / "aios"), AIOS_IMPL=str(fake_tree), PYTHONPATH=str(decoy))
    result = run_probe(env, "-p", "preimport_aios")
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_suite_inside_a_package_folder_imports_the_selected_tree(fake_tree):
    """Hidden suites live under ``grader/`` (a package): setting that package up puts the repository
    root back in front of ``sys.path`` after conftest.py ran, and ``import aios`` inside a test or
    a fixture must still find the selected tree, not the learner's stubs at the root."""
    folder = Path(tempfile.mkdtemp(prefix="switch-probe-", dir=REPO / "grader"))
    try:
        shutil.copy(REPO / PROBE, folder / "test_probe_in_package.py")
        probe = str((folder / "test_probe_in_package.py").relative_to(REPO))
        for extra, package in [({"AIOS_IMPL": str(fake_tree)}, fake_tree / "aios"),
                               ({"AIOS_IMPL": "reference"}, REPO / "solutions" / "aios")]:
            if not (package / "__init__.py").exists():
                continue
            result = subprocess.run([sys.executable, "-m", "pytest", probe, "-p", "no:cacheprovider",
                                     "-k", "comes_from_the_selected_tree", f"--rootdir={REPO}"], cwd=REPO,
                                    env=plain_env(EXPECT_AIOS=str(package), AIOS_REMOTE="0", **extra),
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (extra, result.stdout[-3000:])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_bad_path_is_a_usage_error(tmp_path):
    result = run_probe(plain_env(AIOS_IMPL=str(tmp_path / "nowhere"), EXPECT_AIOS="unused"))
    assert result.returncode == 4
    assert "no directory containing an aios/ package" in result.stdout + result.stderr


def test_gpu_markers_skip_without_cuda():
    torch = pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/infra/gpu_probe.py", "-p", "no:cacheprovider",
                             "-rs", "--strict-markers"], cwd=REPO, env=plain_env(), capture_output=True, text=True,
                            timeout=120)
    if torch.cuda.is_available():
        assert result.returncode == 0 and "3 passed" in result.stdout, result.stdout[-2000:]
    else:
        assert result.returncode == 0, result.stdout[-2000:]
        assert "1 passed, 2 skipped" in result.stdout and "needs a CUDA GPU" in result.stdout


def test_tiny_model_dir_fixture(tiny_model_dir):
    """The shared session fixture hands out a Hugging Face-format checkpoint folder."""
    assert (tiny_model_dir / "config.json").is_file()
    assert any(tiny_model_dir.glob("*.safetensors"))
