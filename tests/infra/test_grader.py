"""The grader (python -m grader) on a synthetic mini-curriculum in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic_repo import write_files

from grader import cli

REPO = Path(__file__).resolve().parents[2]

CURRICULUM = """
[defaults]
test_timeout = 3

[[lesson]]
id = 0
title = "Warm-up"
status = "ready"
prerequisites = []
timeout = 60

[[lesson]]
id = 1
title = "Secrets"
status = "ready"
prerequisites = [0]
timeout = 60

[[lesson]]
id = 2
title = "Misbehaving tests"
status = "ready"
prerequisites = [1]
timeout = 60
test_timeout = 2

[[lesson]]
id = 3
title = "Stuck for good"
status = "ready"
prerequisites = [2]
timeout = 6
test_timeout = 1

[[lesson]]
id = 4
title = "Later"
status = "coming"
prerequisites = [3]
"""

FILES = {
    "tests/lesson00/test_warmup.py": '''
        def test_one():
            assert 1 + 1 == 2

        def test_two():
            assert "a" * 2 == "aa"
        ''',
    "grader/hidden/lesson00/test_warmup_hidden.py": '''
        def test_hidden_ok():
            """Checks the warm-up once more."""
            assert True
        ''',
    "tests/lesson01/test_secrets.py": '''
        def test_visible_pass():
            assert True

        def test_visible_fail():
            assert 1 + 1 == 3

        def test_stub():
            raise NotImplementedError(
                "Lesson 1: implement thing in aios/x.py — see exercises/lesson01/README.md, 'What to implement'")
        ''',
    "grader/hidden/lesson01/test_secrets_hidden.py": '''
        def test_secret():
            """The secret must be the answer.

            More detail that is never shown.
            """
            secret_value = 41
            assert secret_value == 42, "SECRET-ASSERTION-TEXT"

        def test_hidden_pass():
            assert True
        ''',
    "exercises/lesson01/README.md": '''
        # Lesson 1

        ## What to implement
        Things.

        ## Hints
        ### Hint 1
        Look at the answer.
        ### Hint 2
        It is forty-two.
        ''',
    "tests/lesson02/test_misbehaving.py": '''
        import os
        import time

        def test_a_passes():
            assert True

        def test_b_hangs():
            time.sleep(60)

        def test_c_exits():
            os._exit(1)

        def test_d_after_the_crash():
            assert True
        ''',
    "tests/lesson03/test_stuck.py": '''
        import signal
        import time

        def test_ignores_the_alarm():
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            time.sleep(120)
        ''',
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A synthetic repository with five lessons."""
    return write_files(tmp_path / "repo", {"grader/curriculum.toml": CURRICULUM, **FILES})


def grade(repo: Path, capsys, *args: str) -> tuple[int, str]:
    """Run ``python -m grader --root repo ...`` in-process; return (exit code, stdout)."""
    code = cli.main(["--root", str(repo), *args])
    return code, capsys.readouterr().out


def progress(repo: Path) -> dict:
    """The synthetic repository's progress file."""
    return json.loads((repo / ".aios" / "progress.json").read_text())


def force_pass(repo: Path, *lessons: int) -> None:
    """Mark lessons as passed in progress.json (to reach later lessons quickly)."""
    path = repo / ".aios" / "progress.json"
    path.parent.mkdir(exist_ok=True)
    data = {"version": 1, "lessons": {str(i): {"passed": True, "visible": {"passed": 1, "total": 1},
                                               "hidden": {"passed": 0, "total": 0}} for i in lessons},
            "unlocked": list(lessons), "hints": {}}
    path.write_text(json.dumps(data))


def test_passing_lesson_unlocks_the_next(repo, capsys):
    code, out = grade(repo, capsys, "grade", "0")
    assert code == 0, out
    assert "PASSED" in out and "NOT PASSED" not in out and "Unlocked: lesson 1" in out
    saved = progress(repo)
    assert saved["lessons"]["0"]["passed"] is True
    assert saved["lessons"]["0"]["visible"] == {"passed": 2, "total": 2, "skipped": 0, "failed": 0}
    assert 1 in saved["unlocked"]
    code, out = grade(repo, capsys, "status", "--json")
    states = {row["lesson"]: row["state"] for row in json.loads(out)["lessons"]}
    assert states == {0: "passed", 1: "unlocked", 2: "locked", 3: "locked", 4: "coming"}


def test_locked_lesson_names_the_one_to_finish(repo, capsys):
    code, out = grade(repo, capsys, "grade", "1")
    assert code == 2 and "finish lesson 0 first" in out
    assert not (repo / ".aios" / "progress.json").exists()


def test_coming_lesson_is_not_graded(repo, capsys):
    code, out = grade(repo, capsys, "grade", "4")
    assert code == 2 and "coming soon" in out


def test_failures_visible_detail_hidden_only_name_and_hint(repo, capsys):
    force_pass(repo, 0)
    code, out = grade(repo, capsys, "grade", "1")
    assert code == 1 and "NOT PASSED" in out
    # Visible: the short failure message and the stub's README pointer.
    assert "test_visible_fail" in out and "assert (1 + 1) == 3" in out
    assert "Lesson 1: implement thing in aios/x.py" in out and "'What to implement'" in out
    # Hidden: name and first docstring line only.
    assert "test_secrets_hidden.py::test_secret" in out
    assert "The secret must be the answer." in out
    for leak in ("secret_value", "SECRET-ASSERTION-TEXT", "41", "never shown", "assert"):
        assert leak not in out.split("hidden tests", 1)[1], leak
    # The first hint follows a failure; `hint` then reveals the next layer.
    assert "Hint 1" in out and "Look at the answer." in out and "forty-two" not in out
    code, out = grade(repo, capsys, "hint", "1")
    assert code == 0 and "hint 2 of 2" in out and "It is forty-two." in out
    saved = progress(repo)
    assert saved["hints"] == {"1": 2} and saved["lessons"]["1"]["passed"] is False
    assert "SECRET-ASSERTION-TEXT" not in json.dumps(saved)


def test_hang_and_crash_are_reported_and_the_grader_goes_on(repo, capsys):
    force_pass(repo, 0, 1)
    started = time.monotonic()
    code, out = grade(repo, capsys, "grade", "2", "--json")
    assert time.monotonic() - started < 50
    assert code == 1
    result = json.loads(out)
    outcomes = {t["name"].split("::")[-1]: t["outcome"] for t in result["tests"]["visible"]}
    assert outcomes == {"test_a_passes": "passed", "test_b_hangs": "timeout", "test_c_exits": "crashed",
                        "test_d_after_the_crash": "passed"}
    messages = {t["name"].split("::")[-1]: t["message"] for t in result["tests"]["visible"]}
    assert "exit code 1" in messages["test_c_exits"]
    assert any("restarted" in note for note in result["notes"])


def test_whole_run_limit_stops_a_hang_the_per_test_limit_misses(repo, capsys):
    force_pass(repo, 0, 1, 2)
    started = time.monotonic()
    code, out = grade(repo, capsys, "grade", "3")
    assert time.monotonic() - started < 40
    assert code == 1
    assert "TIMEOUT" in out and "test_ignores_the_alarm" in out
    assert "went past its 6 s limit" in out


def test_status_json_schema(repo, capsys):
    code, out = grade(repo, capsys, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert [row["lesson"] for row in data["lessons"]] == [0, 1, 2, 3, 4]
    for row in data["lessons"]:
        assert {"lesson", "title", "state", "visible", "hidden"} <= set(row)
        assert isinstance(row["title"], str) and row["state"] in ("locked", "unlocked", "passed", "coming")
        for suite in ("visible", "hidden"):
            assert set(row[suite]) >= {"passed", "total"}
            assert isinstance(row[suite]["passed"], int)
            # a locked lesson's suite is counted once it opens (null until then)
            assert isinstance(row[suite]["total"], int) or (row[suite]["total"] is None and row["state"] == "locked")
    assert data["lessons"][0]["visible"] == {"passed": 0, "total": 2}  # the open lesson, counted before any grade
    assert data["lessons"][1]["visible"] == {"passed": 0, "total": None}  # locked: not counted yet


def test_grade_without_number_grades_the_current_lesson_and_prints_the_board(repo, capsys):
    code, out = grade(repo, capsys, "grade")
    assert code == 0
    assert "Lesson 0: Warm-up" in out and "AIOS progress" in out and "Secrets" in out


def test_module_entry_point_and_aios_root(repo):
    env = {**os.environ, "AIOS_ROOT": str(repo), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "grader", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Misbehaving tests" in result.stdout and "coming soon" in result.stdout


SELFCHECK_FILES = {
    "solutions/aios/__init__.py": "",
    "solutions/aios/mathops.py": '''
        def double(x):
            """Twice x."""
            # BEGIN SOLUTION lesson1
            return 2 * x
            # END SOLUTION


        def square(x):
            """x squared."""
            # BEGIN SOLUTION lesson2
            return x * x
            # END SOLUTION
        ''',
    "tests/lesson01/test_double.py": '''
        from aios.mathops import double

        def test_double():
            assert double(3) == 6

        def test_dishonest():
            """Passes whatever the learner writes."""
            assert callable(double)
        ''',
    "grader/hidden/lesson01/test_double.py": '''
        import pytest
        from aios.mathops import double

        def test_double_negative():
            """Negative numbers double too."""
            assert double(-2) == -4

        def test_zero():
            assert double(0) == 0

        @pytest.mark.gpu
        def test_on_gpu():
            """Skipped without CUDA."""
            assert double(1) == 2
        ''',
    "tests/lesson02/test_square.py": '''
        from aios.mathops import square

        def test_square():
            assert square(3) == 9
        ''',
}

SELFCHECK_CURRICULUM = """
[[lesson]]
id = 1
title = "Double"
status = "ready"
prerequisites = []

[[lesson]]
id = 2
title = "Square"
status = "ready"

[[lesson]]
id = 3
title = "Later"
status = "coming"
"""


def test_selfcheck_flags_a_test_that_passes_against_the_stub(tmp_path, capsys, monkeypatch):
    root = write_files(tmp_path / "repo", {"grader/curriculum.toml": SELFCHECK_CURRICULUM, **SELFCHECK_FILES})
    (root / "conftest.py").write_text((REPO / "conftest.py").read_text())  # the real AIOS_IMPL switch
    from grader import stubgen

    assert stubgen.main(["--root", str(root)]) == 0
    monkeypatch.delenv("AIOS_IMPL", raising=False)
    monkeypatch.setenv("AIOS_REMOTE", "0")  # this synthetic repository has no grader/remote for a worker
    capsys.readouterr()
    code = cli.main(["--root", str(root), "selfcheck", "--skip-infra"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "DEFECT lesson 1: stubbed: tests/lesson01/test_double.py::test_dishonest passed" in out
    assert "test_double_negative" not in out.split("DEFECT", 1)[1]
    assert "lesson 2" not in out.split("DEFECT", 1)[1]  # lesson 2 is honest
    assert "hidden test grader/hidden/lesson01/test_double.py::test_zero has no docstring" in out
    assert "selfcheck: " in out and ", 2 failed" in out

    row = next(line for line in out.splitlines() if "Double" in line)
    assert "4/5" in row and "3/4" in row  # reference: 4 of 5 pass (GPU skipped); stubbed: 3 of 4 fail

    code = cli.main(["--root", str(root), "selfcheck", "--skip-infra", "--lessons", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if "Square" in line)
    assert row.count("1/1") == 2 and "ok" in row


def test_grading_another_tree_does_not_touch_progress(repo, capsys):
    code, out = grade(repo, capsys, "grade", "0", "--impl", "reference")
    assert code == 0 and "(reference)" in out and "progress not recorded" in out
    assert not (repo / ".aios" / "progress.json").exists()


def test_a_lesson_passed_by_force_and_what_it_unlocks_are_marked_on_the_board(repo, capsys):
    """Lesson 1 passed with --force while lesson 0 is open: both 1 and the lesson 2 it opened say 'by force'."""
    path = repo / ".aios" / "progress.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"version": 1, "lessons": {"1": {"passed": True, "visible": {"passed": 1, "total": 1},
                                                               "hidden": {"passed": 0, "total": 0}}},
                                "unlocked": [0, 1, 2], "hints": {}}))
    code, out = grade(repo, capsys, "status", "--json")
    rows = {row["lesson"]: row for row in json.loads(out)["lessons"]}
    assert code == 0
    assert (rows[1]["state"], rows[1]["by_force"], rows[1]["open_before"]) == ("passed", True, [0])
    assert (rows[2]["state"], rows[2]["by_force"], rows[2]["open_before"]) == ("unlocked", True, [0])
    assert rows[0]["by_force"] is False and rows[3]["by_force"] is False  # open normally / locked
    _, board_text = grade(repo, capsys, "status")
    assert "lesson 1 passed by force (grade --force): lesson 0 still open" in board_text
    assert "lesson 2 unlocked by force (grade --force): lesson 0 still open" in board_text
