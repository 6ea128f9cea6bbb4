"""The learner's loop: progress board, layered hints, catch-up (checkout-reference/restore-mine), watch mode."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from synthetic_repo import write_files

from grader import catchup, cli, hints, stubgen, watch
from grader import curriculum as cur
from grader import progress as prog
from grader import runner

REPO = Path(__file__).resolve().parents[2]

CURRICULUM = """
[defaults]
test_timeout = 30

[[lesson]]
id = 0
title = "Warm-up"
status = "ready"
prerequisites = []

[[lesson]]
id = 1
title = "Fast code"
status = "ready"
prerequisites = [0]
benchmarks = ["tests/lesson01/test_speed.py"]

[[lesson]]
id = 2
title = "Later"
status = "coming"
prerequisites = [1]
"""

FILES = {
    "tests/lesson00/test_warmup.py": """
        def test_ok():
            assert True
        """,
    "tests/lesson01/test_fast.py": """
        def test_wrong():
            assert 1 + 1 == 3
        """,
    "tests/lesson01/test_speed.py": """
        import pytest

        @pytest.mark.skip(reason="needs a CUDA GPU")
        def test_fast_enough():
            assert True
        """,
    "exercises/lesson01/README.md": """
        # Lesson 1

        ## What to implement
        Make it fast.

        ## Hints
        ### Hint 1
        FIRST-LAYER nudge.
        ### Hint 2
        SECOND-LAYER push.
        ### Hint 3
        THIRD-LAYER almost there.
        """,
}


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """A synthetic repository: lesson 0 passes, lesson 1 fails and has a skipped GPU benchmark."""
    return write_files(tmp_path / "mini", {"grader/curriculum.toml": CURRICULUM, **FILES})


def run_cli(root: Path, capsys, *args: str) -> tuple[int, str, str]:
    """``python -m grader --root root ...`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(["--root", str(root), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- hints


def test_hint_layers_advance_one_by_one_and_stop_at_the_last(mini, capsys):
    shown = []
    for _ in range(4):
        code, out, _ = run_cli(mini, capsys, "hint", "1")
        assert code == 0
        shown.append(out)
    assert "hint 1 of 3" in shown[0] and "FIRST-LAYER" in shown[0] and "SECOND-LAYER" not in shown[0]
    assert "python -m grader hint 1 for the next hint (2 of 3)" in shown[0]
    assert "hint 2 of 3" in shown[1] and "SECOND-LAYER" in shown[1] and "(3 of 3)" in shown[1]
    for out in shown[2:]:  # the last layer, then it stays there
        assert "hint 3 of 3" in out and "THIRD-LAYER" in out and "last hint" in out
    assert prog.load(mini).hints == {"1": 3}


def test_failed_grade_shows_hint_1_the_readme_section_and_the_next_hint_command(mini, capsys):
    assert run_cli(mini, capsys, "grade", "0")[0] == 0
    code, out, _ = run_cli(mini, capsys, "grade", "1")
    assert code == 1 and "NOT PASSED" in out
    assert "Hint 1 of 3" in out and "exercises/lesson01/README.md#hints" in out and "FIRST-LAYER" in out
    assert "SECOND-LAYER" not in out
    assert "python -m grader hint 1 for the next hint (2 of 3)" in out
    run_cli(mini, capsys, "hint", "1")
    _, out, _ = run_cli(mini, capsys, "grade", "1", "--json")
    assert json.loads(out)["hints"]["next"].endswith("(3 of 3)")


def test_failed_grade_shows_the_hint_the_first_failing_test_names(mini, capsys):
    """A failing test marked ``@pytest.mark.hint(2)`` brings hint 2; ``hint N`` then goes on with hint 3."""
    write_files(mini, {"tests/lesson01/test_fast.py": """
        import pytest

        def test_passes():
            assert True

        @pytest.mark.hint(2)
        def test_wrong_dtype():
            assert 1 + 1 == 3

        @pytest.mark.hint(3)
        def test_wrong_too():
            assert False
        """})
    assert run_cli(mini, capsys, "grade", "0")[0] == 0
    code, out, _ = run_cli(mini, capsys, "grade", "1")
    assert code == 1 and "Hint 2 of 3" in out and "SECOND-LAYER" in out
    assert "FIRST-LAYER" not in out and "THIRD-LAYER" not in out
    assert "python -m grader hint 1 for the next hint (3 of 3)" in out
    _, out, _ = run_cli(mini, capsys, "hint", "1")
    assert "hint 3 of 3" in out and "THIRD-LAYER" in out
    _, out, _ = run_cli(mini, capsys, "grade", "1", "--json")
    result = json.loads(out)
    assert result["hint_target"] == 2 and result["hints"]["shown"] == 2 and result["hints"]["revealed"] == 3


def test_a_hint_number_the_readme_lacks_falls_back_to_hint_1(mini, capsys):
    write_files(mini, {"tests/lesson01/test_fast.py": """
        import pytest

        @pytest.mark.hint(9)
        def test_wrong():
            assert False
        """})
    run_cli(mini, capsys, "grade", "0")
    code, out, _ = run_cli(mini, capsys, "grade", "1")
    assert code == 1 and "Hint 1 of 3" in out and "FIRST-LAYER" in out


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_no_hint_reproduces_solution_code():
    """Hints may name a call, never hand over a region: no 3 consecutive lines, nor half its lines."""
    curriculum = cur.load(REPO)
    src = REPO / "solutions" / "aios"
    problems = []
    for region in stubgen.scan_regions(src):
        text = _normalised("\n".join(hints.lesson_hints(curriculum, curriculum.get(region.lesson))))
        body = stubgen._split_lines((src.parent / region.path).read_text(encoding="utf-8"))
        code = [_normalised(line) for line in body[region.begin : region.end - 1]]
        code = [line for line in code if line and not line.startswith("#")]
        found = [line for line in code if len(line) >= 16 and line in text]
        runs = [" ".join(code[i : i + 3]) for i in range(len(code) - 2)]
        if any(run in text for run in runs) or (code and len(found) * 2 >= len(code) and len(code) > 1):
            problems.append(f"{region.symbol}: {found}")
    assert not problems, "hints that hand over solution code:\n" + "\n".join(problems)


# ---------------------------------------------------------------- board and benchmarks


def test_grade_records_the_skipped_benchmark_and_the_board_shows_it(mini, capsys):
    run_cli(mini, capsys, "grade", "0")
    _, out, _ = run_cli(mini, capsys, "grade", "1")
    assert "GPU benchmark: skipped: needs a CUDA GPU" in out
    assert prog.load(mini).grade(1)["benchmark"] == {"status": "skipped", "detail": "needs a CUDA GPU"}
    code, board_text, _ = run_cli(mini, capsys, "status")
    assert code == 0 and "skipped: needs a CUDA GPU" in board_text


def test_benchmarks_outside_the_visible_suite_are_not_run_without_cuda(mini, monkeypatch):
    curriculum = cur.load(mini)
    lesson = curriculum.get(1)
    monkeypatch.setattr(cli, "cuda_available", lambda: False)
    monkeypatch.setattr(cli, "run_pytest", lambda *a, **k: pytest.fail("benchmarks ran without CUDA"))
    assert cli.benchmark_outcome(curriculum, lesson, runner.RunResult(), "learner") == {
        "status": "skipped", "detail": "needs a CUDA GPU"}
    slow = runner.TestResult("tests/lesson01/test_speed.py::test_fast_enough", "failed", "too slow")
    failed = runner.RunResult(tests=[slow])
    assert cli.benchmark_outcome(curriculum, lesson, failed, "learner")["status"] == "failed"
    assert cli.benchmark_outcome(curriculum, curriculum.get(0), runner.RunResult(), "learner") is None


def test_board_states_reference_mark_and_what_to_do_next(mini, capsys):
    progress = prog.load(mini)
    progress.lessons["0"] = {"passed": True, "visible": {"passed": 1, "total": 1},
                             "hidden": {"passed": 0, "total": 0}}
    progress.unlocked.update({0, 1})
    progress.reference["0"] = {"taken_at": "2026-01-01T00:00:00+00:00", "files": {}, "absent": []}
    progress.hints["1"] = 1
    prog.save(mini, progress)
    code, out, _ = run_cli(mini, capsys, "status", "--json")
    data = json.loads(out)
    assert code == 0 and data["current"] == 1
    rows = {row["lesson"]: row for row in data["lessons"]}
    assert [rows[i]["state"] for i in (0, 1, 2)] == ["passed", "unlocked", "coming"]
    assert rows[0]["from_reference"] and not rows[1]["from_reference"]
    assert {"lesson", "title", "state", "visible", "hidden", "points", "graded"} <= set(rows[1])
    assert rows[1]["benchmark_text"] == "not run yet" and rows[0]["benchmark_text"] == "none"
    assert data["next"]["readme"] == "exercises/lesson01/README.md" and data["next"]["hints_left"] == 2
    _, text, _ = run_cli(mini, capsys, "status")
    assert "from reference" in text and "What to do next" in text and "exercises/lesson01/README.md" in text
    assert "python -m grader grade 1" in text and "python -m grader hint 1" in text and "2 of 3 hints left" in text


# ---------------------------------------------------------------- catch-up


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """What checkout-reference and lesson 1's tests need of the real repository, copied."""
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("aios", "solutions", "grader", "tests/lesson01", "exercises/lesson01"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return stubgen.read_tree(root / "aios")


def _learner_has_been_working(root: Path) -> None:
    """A half-done lesson 1 function and finished lesson 5 code in the same file."""
    path = root / "aios" / "layers" / "layernorm.py"
    text = path.read_text(encoding="utf-8")
    first = text.index("raise NotImplementedError(\"Lesson 1:")
    text = text[:first] + "variance = None  # MY-LESSON-1-ATTEMPT\n    " + text[first:]
    fifth = text.index("raise NotImplementedError(\"Lesson 5:")
    end = text.index("\n", fifth)
    path.write_text(text[:fifth] + "return x, residual  # MY-LESSON-5-WORK" + text[end:], encoding="utf-8")


def test_checkout_reference_round_trip(repo_copy, capsys):
    _learner_has_been_working(repo_copy)
    before = _tree(repo_copy)
    code, out, _ = run_cli(repo_copy, capsys, "checkout-reference", "1")
    assert code == 0 and "rms_norm" in out and "restore-mine 1" in out
    after = _tree(repo_copy)
    lesson1_files = {r.path for r in stubgen.scan_regions(repo_copy / "solutions" / "aios") if r.lesson == 1}
    assert {p for p in before if before[p] != after[p]} == lesson1_files
    layernorm = after["aios/layers/layernorm.py"].decode()
    assert "MY-LESSON-5-WORK" in layernorm and "MY-LESSON-1-ATTEMPT" not in layernorm
    assert "Lesson 1:" not in "".join(after[p].decode() for p in lesson1_files)
    assert "BEGIN SOLUTION" not in layernorm

    run = runner.run_pytest(repo_copy, ["tests/lesson01"], impl="learner", run_timeout=300)
    assert run.total > 0 and run.ok, [(t.nodeid, t.message) for t in run.tests if not t.ok]

    _, status, _ = run_cli(repo_copy, capsys, "status", "--json")
    assert json.loads(status)["lessons"][1]["from_reference"] is True
    assert run_cli(repo_copy, capsys, "checkout-reference", "1")[0] == 2  # already taken

    code, _, _ = run_cli(repo_copy, capsys, "restore-mine", "1")
    assert code == 0 and _tree(repo_copy) == before
    assert prog.load(repo_copy).reference == {}
    assert not catchup.mine_dir(repo_copy, 1).exists()
    _, status, _ = run_cli(repo_copy, capsys, "status", "--json")
    assert json.loads(status)["lessons"][1]["from_reference"] is False


def test_restore_refuses_to_lose_edits_made_after_the_checkout(repo_copy, capsys):
    before = _tree(repo_copy)
    assert run_cli(repo_copy, capsys, "checkout-reference", "1")[0] == 0
    edited = repo_copy / "aios" / "layers" / "activation.py"
    edited.write_text(edited.read_text() + "# tweak\n")
    code, _, err = run_cli(repo_copy, capsys, "restore-mine", "1")
    assert code == 2 and "aios/layers/activation.py" in err and "--force" in err
    assert run_cli(repo_copy, capsys, "restore-mine", "1", "--force")[0] == 0
    assert _tree(repo_copy) == before


def test_function_shared_by_two_lessons_and_bad_input(repo_copy, capsys):
    before = _tree(repo_copy)
    code, out, _ = run_cli(repo_copy, capsys, "checkout-reference", "5")
    assert code == 0 and "Qwen3DecoderLayer.forward also holds code of lesson(s) 3" in out
    for rel, data in _tree(repo_copy).items():
        if rel.endswith(".py"):
            compile(data, rel, "exec")
    assert run_cli(repo_copy, capsys, "restore-mine", "5")[0] == 0 and _tree(repo_copy) == before
    for args in (("checkout-reference", "99"), ("restore-mine", "1"), ("checkout-reference", "0")):
        code, out, err = run_cli(repo_copy, capsys, *args)
        assert code == 2 and err.strip() and "Traceback" not in out + err


# ---------------------------------------------------------------- watch


def test_change_detector_sees_modified_added_and_removed_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    kept, gone = tmp_path / "pkg" / "a.py", tmp_path / "b.py"
    kept.write_text("x = 1\n")
    gone.write_text("y = 2\n")
    detect = watch.ChangeDetector(tmp_path)
    assert detect() == []
    stamp = kept.stat().st_mtime_ns + 5_000_000_000
    os.utime(kept, ns=(stamp, stamp))
    gone.unlink()
    (tmp_path / "c.py").write_text("z = 3\n")
    (tmp_path / "notes.txt").write_text("not python")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "d.py").write_text("")
    assert detect() == ["b.py", "c.py", "pkg/a.py"]
    assert detect() == []


def _fake_grader(root: Path, curriculum: cur.Curriculum, outcomes: list[bool], graded: list[int]):
    """A grade function that records ``outcomes`` in order (no pytest run)."""

    def grade(lesson) -> bool:
        passed = outcomes.pop(0)
        graded.append(lesson.id)
        progress = prog.load(root)
        prog.record_grade(curriculum, progress, lesson, {"passed": passed})
        prog.save(root, progress)
        return passed

    return grade


def test_watch_loop_regrades_on_change_and_moves_on_when_a_lesson_passes(mini):
    curriculum = cur.load(mini)
    graded, said, waits = [], [], []
    changes = iter([[], ["aios/x.py"], [], ["aios/y.py"], []])
    code = watch.watch_loop(
        curriculum, None,
        grade=_fake_grader(mini, curriculum, [False, True, False], graded),
        changes=lambda: next(changes), wait=lambda: waits.append(1), say=said.append, max_polls=5,
    )
    assert code == 0 and graded == [0, 0, 1] and len(waits) == 5
    text = "\n".join(said)
    assert "changed: aios/x.py" in text and "grading lesson 0" in text
    assert "now watching lesson 1" in text and "grading lesson 1" in text


def test_watch_loop_stops_when_all_passed_and_refuses_locked_lessons(mini):
    curriculum = cur.load(mini)
    said = []
    kwargs = dict(changes=lambda: ["aios/x.py"], wait=lambda: None, say=said.append, max_polls=10)
    graded = []
    code = watch.watch_loop(curriculum, 0, grade=_fake_grader(mini, curriculum, [True, True], graded), **kwargs)
    assert code == 0 and graded == [0, 1] and "Well done" in said[-1]
    assert watch.watch_loop(curriculum, 2, grade=lambda lesson: True, **kwargs) == 2
    assert "coming soon" in said[-1]


def test_watch_command_stops_cleanly_on_ctrl_c(mini, capsys, monkeypatch):
    (mini / "aios").mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch, "watch_loop", interrupted)
    code, out, _ = run_cli(mini, capsys, "watch")
    assert code == 0 and "Stopped watching" in out
