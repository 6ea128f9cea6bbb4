"""``python -m grader release OUT``: the student tree gives nothing away; the bundle grades it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tokenize
from pathlib import Path

import pytest
from synthetic_repo import write_files

from grader import cli, release, stubgen

REPO = Path(__file__).resolve().parents[2]
MARKER_LINE = re.compile(r"^\s*#\s*BEGIN SOLUTION", re.M)


def clean_env() -> dict[str, str]:
    """The environment without the test session's AIOS switch (so ``grader`` comes from the cwd)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "AIOS_IMPL", "AIOS_ROOT")}
    return env


def files_under(root: Path) -> dict[str, Path]:
    """Every file below ``root`` by relative posix path, caches left out."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def normalized(text: str) -> str:
    """Non-blank lines stripped, one per line (indentation-proof comparison)."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """The real repository released once into a temporary OUT."""
    out = tmp_path_factory.mktemp("release") / "out"
    assert cli.main(["--root", str(REPO), "release", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def student_texts(released) -> dict[str, str]:
    """The student tree's text files."""
    texts = {}
    for rel, path in files_under(released / "student").items():
        try:
            texts[rel] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def test_student_tree_has_no_solutions_and_no_hidden_suites(released):
    student = files_under(released / "student")
    assert not [p for p in student if p.startswith(("solutions/", "grader/hidden/"))]
    hidden_tests = [p for p in files_under(REPO / "grader" / "hidden").values() if p.name.startswith("test_")]
    assert hidden_tests
    hidden = {p.read_bytes() for p in hidden_tests}
    assert not [rel for rel, p in student.items() if p.read_bytes() in hidden]
    assert not {p.name for p in hidden_tests} & {Path(rel).name for rel in student}
    for must in ("aios/__init__.py", "exercises/lesson01/README.md", "tests/lesson01", "grader/cli.py",
                 "grader/curriculum.toml", "conftest.py", "noxfile.py", "pyproject.toml", "requirements-dev.txt",
                 "README.md", "docs/progression.md", ".github/workflows/classroom.yml"):
        assert any(p == must or p.startswith(must + "/") for p in student), must
    assert "docs/conventions.md" not in student


def test_student_tree_tells_ai_assistants_to_hint_not_solve(released):
    student = files_under(released / "student")
    agents = student["AGENTS.md"].read_text(encoding="utf-8")
    assert "python -m grader grade" in agents and "hint" in agents and "NotImplementedError" in agents
    for pointer in ("CLAUDE.md", "GEMINI.md", ".github/copilot-instructions.md", ".cursor/rules/aios-tutor.mdc"):
        assert "AGENTS.md" in student[pointer].read_text(encoding="utf-8"), pointer


def test_student_aios_is_the_generated_stub_tree(released):
    expected = stubgen.generate(REPO / "solutions" / "aios")
    actual = {f"aios/{rel}": p.read_bytes() for rel, p in files_under(released / "student" / "aios").items()}
    assert actual == expected


def test_no_solution_marker_anywhere(student_texts):
    assert not [rel for rel, text in student_texts.items() if MARKER_LINE.search(text)]
    for rel, text in student_texts.items():
        if rel.endswith(".py"):
            comments = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
                        if t.type == tokenize.COMMENT]
            assert not [c for c in comments if "BEGIN SOLUTION" in c or "END SOLUTION" in c], rel


def test_no_reference_region_body_in_any_student_file(student_texts):
    src = REPO / "solutions" / "aios"
    regions = stubgen.scan_regions(src)
    assert len(regions) > 20
    flat = {rel: normalized(text) for rel, text in student_texts.items()}
    for region in regions:
        lines = (src.parent / region.path).read_text(encoding="utf-8").splitlines()[region.begin:region.end - 1]
        body = normalized("\n".join(line for line in lines if not line.strip().startswith("# Hint")))
        assert body, region.symbol
        found = [rel for rel, text in flat.items() if body in text]
        assert not found, f"{region.symbol}'s body appears in {found}"


def test_status_json_works_inside_the_student_tree(released):
    result = subprocess.run([sys.executable, "-m", "grader", "status", "--json"], cwd=released / "student",
                            env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["lessons"]
    assert len(rows) == (REPO / "grader" / "curriculum.toml").read_text().count("\n[[lesson]]\n")
    assert all(row["hidden"]["total"] == 0 for row in rows)  # no hidden suites here
    assert rows[0]["visible"]["total"] > 0  # the open lesson is counted; locked ones only once opened


def test_bundle_holds_the_hidden_suites_and_the_archive_matches(released):
    bundle = files_under(released / "autograder")
    for rel, path in files_under(REPO / "grader" / "hidden").items():
        assert bundle[f"grader/hidden/{rel}"].read_bytes() == path.read_bytes()
    for must in ("grader/curriculum.toml", "grader/runner.py", "grader/classroom.py",
                 "grader/_pytest/aios_grader_report.py", "conftest.py", "tests/lesson01"):
        assert any(p == must or p.startswith(must + "/") for p in bundle), must
    assert not [p for p in bundle if p.startswith("solutions/") or p.startswith("aios/")]
    with tarfile.open(released / "autograder.tar.gz") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert members == {f"autograder/{rel}": p.read_bytes() for rel, p in bundle.items()}


def test_mutant_catalogue_ships_in_neither_tree(released):
    """grader/mutants/ (solution code with planted bugs) stays in the instructor's repository."""
    assert (REPO / "grader" / "mutants" / "__init__.py").is_file()
    for tree in ("student", "autograder"):
        assert not [p for p in files_under(released / tree) if p.startswith("grader/mutants")], tree


def test_archive_is_reproducible(released):
    files = {rel: p.read_bytes() for rel, p in files_under(released / "autograder").items()}
    assert release.pack(files, "autograder") == (released / "autograder.tar.gz").read_bytes()


def test_workflow_installs_fetches_and_calls_autograde(released):
    text = (released / "student" / ".github" / "workflows" / "classroom.yml").read_text()
    # The pinned environment comes from the bundle; the student's requirements-dev.txt is never installed.
    assert 'pip install -r "$BUNDLE/requirements-dev.txt"' in text
    assert not re.search(r"pip install[^\n]*-r\s+requirements-dev\.txt", text)
    assert text.index("Fetch the autograder bundle") < text.index("pip install")
    assert (released / "autograder" / "requirements-dev.txt").read_bytes() == (REPO / "requirements-dev.txt").read_bytes()
    assert "sudo" in text  # graded as root, so that the tests' processes can be sandboxed
    assert "AIOS_AUTOGRADER_REPO" in text and "AIOS_AUTOGRADER_B64" in text
    assert re.search(r"-m grader --root \"\$GITHUB_WORKSPACE\" autograde --bundle \.", text)
    assert "classroom-resources/autograding-grading-reporter" in text and "runners: aios" in text


def test_out_must_be_empty_outside_the_tracked_tree(released, tmp_path, capsys):
    code = cli.main(["--root", str(REPO), "release", str(released)])
    assert code == 2 and "--force" in capsys.readouterr().err
    inside = REPO / "docs" / "release-test-out"
    code = cli.main(["--root", str(REPO), "release", str(inside)])
    assert code == 2 and "tracked files" in capsys.readouterr().err
    assert not inside.exists()
    code = cli.main(["--root", str(REPO), "release", str(REPO.parent)])
    assert code == 2 and "contains the repository" in capsys.readouterr().err
    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    (out / "student" / "stale.txt").write_text("old")
    (out / "keep.txt").write_text("mine")
    assert cli.main(["--root", str(REPO), "release", str(out), "--force"]) == 0
    assert not (out / "student" / "stale.txt").exists() and (out / "keep.txt").read_text() == "mine"
    assert (out / "autograder.tar.gz").is_file()


# ---------------------------------------------------------------------------- a small course end to end

COURSE = {
    "grader/curriculum.toml": """
        [defaults]
        test_timeout = 5

        [[lesson]]
        id = 1
        title = "Double"
        status = "ready"
        prerequisites = []
        points = 10
        timeout = 60
        """,
    "conftest.py": """
        import os
        import sys

        _impl = os.environ.get("AIOS_IMPL", "learner")
        _root = os.path.dirname(os.path.abspath(__file__))
        _dir = {"learner": _root, "reference": os.path.join(_root, "solutions")}.get(_impl, _impl)
        sys.path.insert(0, _dir)
        """,
    "pyproject.toml": "[tool.pytest.ini_options]\n",
    "noxfile.py": "",
    "requirements-dev.txt": "pytest\n",
    ".gitignore": "__pycache__/\n",
    "solutions/aios/__init__.py": "",
    "solutions/aios/mathops.py": '''
        def double(x):
            """Twice x."""
            # BEGIN SOLUTION lesson1
            # Hint: add it to itself.
            twice = x + x
            return twice
            # END SOLUTION
        ''',
    "exercises/lesson01/README.md": "# Lesson 1\n\nWrite `double`.\n\n## Hints\n### Hint 1\nAdd.\n",
    "tests/lesson01/test_double.py": '''
        from aios.mathops import double

        def test_double():
            assert double(3) == 6
        ''',
    "grader/hidden/lesson01/test_double_hidden.py": '''
        from aios.mathops import double

        def test_double_negative():
            """Negative numbers double too."""
            assert double(-4) == -8
        ''',
}


def make_course(root: Path, extra: dict[str, str] | None = None) -> Path:
    """A one-lesson instructor repository with this checkout's grader package."""
    shutil.copytree(REPO / "grader", root / "grader", ignore=shutil.ignore_patterns("hidden", "__pycache__", "*.toml"))
    return write_files(root, {**COURSE, **(extra or {})})


def autograde_from_bundle(bundle: Path, student: Path, out: Path) -> dict:
    """Run the bundle's own grader (cwd = bundle) on ``student``; return the JSON report."""
    result = subprocess.run([sys.executable, "-m", "grader", "--root", str(student), "autograde", "--bundle", ".",
                             "--json", str(out)], cwd=bundle, env=clean_env(), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def test_student_repo_plus_bundle_grades(tmp_path):
    course = make_course(tmp_path / "course")
    assert cli.main(["--root", str(course), "release", str(tmp_path / "out")]) == 0
    student, bundle = tmp_path / "out" / "student", tmp_path / "out" / "autograder"
    assert "raise NotImplementedError" in (student / "aios" / "mathops.py").read_text()
    assert not (student / "grader" / "hidden").exists() and (bundle / "grader" / "hidden" / "lesson01").is_dir()

    stubbed = autograde_from_bundle(bundle, student, tmp_path / "stubbed.json")
    assert (stubbed["score"], stubbed["max_score"]) == (0, 10)
    assert stubbed["lessons"][0]["hidden"]["total"] == 1

    shutil.copy(course / "solutions" / "aios" / "mathops.py", student / "aios" / "mathops.py")
    solved = autograde_from_bundle(bundle, student, tmp_path / "solved.json")
    assert (solved["score"], solved["max_score"]) == (10, 10)
    assert solved["lessons"][0]["visible"]["passed"] == solved["lessons"][0]["hidden"]["passed"] == 1


@pytest.mark.parametrize("extra,expected", [
    ({"exercises/lesson01/README.md": "# Lesson 1\n\n```python\ntwice = x + x\nreturn twice\n```\n"},
     "exercises/lesson01/README.md: holds the body of aios/mathops.py::double"),
    ({"docs/progression.md": "Example:\n\n    # BEGIN SOLUTION lesson1\n"},
     "docs/progression.md: holds a solution marker line"),
])
def test_release_refuses_a_student_tree_that_leaks(tmp_path, capsys, extra, expected):
    course = make_course(tmp_path / "course", extra)
    code = cli.main(["--root", str(course), "release", str(tmp_path / "out")])
    assert code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out" / "student").exists()


def test_release_needs_the_instructor_repository(tmp_path, capsys):
    course = make_course(tmp_path / "course")
    shutil.rmtree(course / "solutions")
    assert cli.main(["--root", str(course), "release", str(tmp_path / "out")]) == 2
    assert "release runs in the instructor's repository" in capsys.readouterr().err
