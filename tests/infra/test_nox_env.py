"""noxfile.py's environment choice: which Python the sessions run with, and what it installs.

The rules are checked as functions (a pin met, another version, a missing package, torch at
any version), then for real: nox run by a fresh virtual environment that holds every pin
must install nothing and make no second environment, and one that lacks a pin must build
``.nox/aios`` on top of it, seeing its packages, and install only the missing one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROBE_DIST = "aios-nox-probe"  # a made-up distribution only the fresh venv has


def _load_noxfile():
    """noxfile.py as a module (importing it only registers its sessions)."""
    spec = importlib.util.spec_from_file_location("aios_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


noxfile = _load_noxfile()


def reqs(*lines: str) -> list[Requirement]:
    return [Requirement(line) for line in lines]


# ---------------------------------------------------------------------------- the rules


def test_a_met_pin_is_not_reported():
    assert noxfile.unmet(reqs("numpy==2.4.6", "prometheus-client==0.26.0"),
                         {"numpy": "2.4.6", "prometheus-client": "0.26.0"}) == []


def test_another_version_is_reported_with_the_installed_one():
    (problem,) = noxfile.unmet(reqs("numpy==2.4.6"), {"numpy": "2.3.0"})
    assert problem.name == "numpy" and problem.installed == "2.3.0"
    assert str(problem) == "numpy==2.4.6 (2.3.0 installed)"


def test_a_missing_package_is_reported():
    (problem,) = noxfile.unmet(reqs("Rich==15.0.0"), {"numpy": "2.4.6"})
    assert problem.name == "rich" and problem.installed is None
    assert str(problem).endswith("(not installed)")


def test_any_torch_and_triton_will_do_but_not_none():
    pins = reqs("torch==2.13.0", "triton==3.9.0")
    assert noxfile.unmet(pins, {"torch": "2.9.1+cu128", "triton": "3.5.1"}) == []
    assert [p.name for p in noxfile.unmet(pins, {"torch": None, "triton": "3.5.1"})] == ["torch"]


def test_a_requirement_for_another_platform_is_skipped():
    assert noxfile.unmet(reqs('pywin32==311; sys_platform == "no-such-platform"'), {}) == []


def test_choose_takes_the_first_that_meets_every_pin():
    pins = reqs("torch==2.13.0", "numpy==2.4.6")
    old = noxfile.Interpreter("/old/python", {"torch": "2.13.0", "numpy": "1.26.0"})
    good = noxfile.Interpreter("/good/python", {"torch": "2.13.0+cu128", "numpy": "2.4.6"})
    assert noxfile.choose([old, good], pins) == (good, [])


def test_choose_builds_on_the_first_with_torch_when_none_meets_them():
    pins = reqs("torch==2.13.0", "numpy==2.4.6")
    bare = noxfile.Interpreter("/bare/python", {"torch": None, "numpy": None})
    cuda = noxfile.Interpreter("/cuda/python", {"torch": "2.13.0+cu128", "numpy": "1.26.0"})
    base, lacking = noxfile.choose([bare, cuda], pins)
    assert base is cuda and [str(p) for p in lacking] == ["numpy==2.4.6 (1.26.0 installed)"]


def test_candidates_put_the_active_venv_first_and_aios_python_alone(monkeypatch):
    monkeypatch.delenv("AIOS_PYTHON", raising=False)
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/venv")
    assert noxfile.candidates()[:2] == [str(Path("/somewhere/venv") / "bin" / "python"), sys.executable]
    monkeypatch.setenv("AIOS_PYTHON", "/opt/python3.11")
    assert noxfile.candidates() == ["/opt/python3.11"]


def test_requirements_dev_pins_every_package_exactly():
    for req in noxfile.read_requirements():
        assert [s.operator for s in req.specifier] == ["=="], f"{req} is not pinned with =="


# ---------------------------------------------------------------------------- for real


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A fresh venv over this interpreter's packages, plus one package only it has."""
    if sys.prefix != sys.base_prefix:
        pytest.skip("tests run inside a virtual environment: a venv made from it would not see its packages")
    venv = tmp_path_factory.mktemp("nox_env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    dist_info = Path(site) / "aios_nox_probe-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PROBE_DIST}\nVersion: 1.0\n")
    return venv


def run_nox(venv: Path, project: Path, extra_pin: str) -> tuple[int, str]:
    """``nox -s env`` with the venv active, in a copy of the project whose pins add ``extra_pin``."""
    project.mkdir()
    shutil.copy(ROOT / "noxfile.py", project / "noxfile.py")
    pins = (ROOT / "requirements-dev.txt").read_text() + f"\n{extra_pin}\n"
    (project / "requirements-dev.txt").write_text(pins)
    env = {k: v for k, v in os.environ.items() if k != "AIOS_PYTHON"}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", PIP_NO_INDEX="1")
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "nox", "-f", str(project / "noxfile.py"), "-s", "env"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_a_venv_that_meets_the_pins_runs_the_sessions_itself(fresh_venv, tmp_path):
    rc, out = run_nox(fresh_venv, tmp_path / "project", f"{PROBE_DIST}==1.0")
    assert rc == 0, out
    assert f"sessions run with {fresh_venv / 'bin' / 'python'}" in out, out
    assert "installing" not in out and not (tmp_path / "project" / ".nox").exists(), out
    assert "uv binary not found" not in out, out


@pytest.mark.timeout(300)
def test_a_venv_that_lacks_a_pin_gets_a_shared_env_that_installs_only_it(fresh_venv, tmp_path):
    rc, out = run_nox(fresh_venv, tmp_path / "project", f"{PROBE_DIST}==2.0")
    shared = tmp_path / "project" / ".nox" / "aios"
    assert f"installing into {shared}: {PROBE_DIST}==2.0 (1.0 installed)\n" in out, out
    assert rc != 0 and "No matching distribution" in out, out  # PIP_NO_INDEX: the install itself fails
    pth = next(shared.glob(f"lib/python*/site-packages/{noxfile.BASE_PTH}")).read_text()
    assert f"made from {fresh_venv / 'bin' / 'python'}" in pth
