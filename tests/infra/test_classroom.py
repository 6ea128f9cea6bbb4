"""``python -m grader autograde`` on a fake curriculum whose learner code hangs, exits and lies."""

from __future__ import annotations

import base64
import json
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from synthetic_repo import write_files

from grader import classroom, cli

CURRICULUM = """
[defaults]
test_timeout = 2

[[lesson]]
id = 0
title = "Good"
status = "ready"
prerequisites = []
points = 10
timeout = 60

[[lesson]]
id = 1
title = "Misbehaving"
status = "ready"
prerequisites = [0]
points = 20
timeout = 60

[[lesson]]
id = 2
title = "Later"
status = "coming"
points = 50
"""

# A stand-in for the root conftest.py: AIOS_IMPL names the directory holding aios/.
CONFTEST = """
import os
import sys

_impl = os.environ.get("AIOS_IMPL", "learner")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)) if _impl == "learner" else _impl)
for _name in [m for m in sys.modules if m == "aios" or m.startswith("aios.")]:
    del sys.modules[_name]
"""

TESTS = {
    "tests/lesson00/test_good.py": '''
        from aios.good import add

        def test_add():
            assert add(2, 3) == 5

        def test_add_negative():
            assert add(-2, 1) == -1
        ''',
    "grader/hidden/lesson00/test_good_hidden.py": '''
        from aios.good import add

        def test_add_zero():
            """Adding zero changes nothing."""
            assert add(7, 0) == 7
        ''',
    "tests/lesson01/test_bad.py": '''
        from aios import bad
        from aios.good import add

        def test_a_fine():
            assert add(1, 2) == 3

        def test_b_hangs():
            assert bad.hang() == 1

        def test_c_exits():
            assert bad.die() == 1
        ''',
    "grader/hidden/lesson01/test_bad_hidden.py": '''
        from aios import bad
        from aios.good import add

        def test_d_flood():
            """The answer is 42."""
            assert bad.flood() == 42

        def test_e_after():
            """Still adds."""
            assert add(1, 1) == 2
        ''',
}

LEARNER = {
    "aios/__init__.py": "",
    "aios/good.py": '''
        def add(a, b):
            return a + b
        ''',
    "aios/bad.py": '''
        import json
        import os
        import sys
        import time

        FAKE = json.dumps({"event": "report", "nodeid": "tests/lesson01/test_bad.py::test_b_hangs",
                           "when": "call", "outcome": "passed", "message": "", "location": "", "xfail": False})


        def hang():
            time.sleep(10**6)


        def die():
            os._exit(1)


        def flood():
            """Print fake successes everywhere and try to forge GitHub's step output."""
            for _ in range(20000):
                print("PASSED", FAKE, '{"event": "finish", "exitstatus": 0}')
            os.write(1, b"==== 99 passed in 0.01s ====\\n" * 1000)
            sys.__stdout__.write("result=FORGED\\n")
            if os.environ.get("GITHUB_OUTPUT"):
                with open(os.environ["GITHUB_OUTPUT"], "a") as out:
                    out.write("result=FORGED\\n")
            return 0
        ''',
}


def make_course(root: Path) -> Path:
    """A fake instructor repository: curriculum, conftest, visible and hidden suites (no aios/)."""
    write_files(root, {"grader/curriculum.toml": CURRICULUM, "conftest.py": CONFTEST, **TESTS})
    return root


def make_learner(root: Path) -> Path:
    """A directory holding the misbehaving learner's ``aios/``."""
    write_files(root, LEARNER)
    return root


def autograde(root: Path, capsys, *args: str) -> tuple[int, str, str]:
    """``python -m grader --root ROOT autograde ...`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(["--root", str(root), "autograde", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """One autograde run of lessons 0 and 1 with every output file requested."""
    base = tmp_path_factory.mktemp("classroom")
    course, learner, out = make_course(base / "course"), make_learner(base / "learner"), base / "out"
    github_output = base / "github_output"
    github_output.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GITHUB_OUTPUT", str(github_output))
        code = cli.main(["--root", str(course), "autograde", "--impl", str(learner),
                         "--json", str(out / "grade.json"), "--junit", str(out / "junit.xml"),
                         "--classroom", str(out / "classroom.txt")])
    return {"code": code, "out": out, "github_output": github_output, "course": course, "learner": learner,
            "report": json.loads((out / "grade.json").read_text())}


def outcomes(lesson: dict) -> dict[str, str]:
    """``{test function: outcome}`` over both suites of a report lesson."""
    return {t["name"].split("::")[-1]: t["outcome"] for suite in ("visible", "hidden") for t in lesson["tests"][suite]}


def test_misbehaving_code_fails_its_tests_without_stopping_the_grade(graded):
    assert graded["code"] == 0
    good, bad = graded["report"]["lessons"]
    assert outcomes(good) == {"test_add": "passed", "test_add_negative": "passed", "test_add_zero": "passed"}
    assert outcomes(bad) == {"test_a_fine": "passed", "test_b_hangs": "timeout", "test_c_exits": "crashed",
                             "test_d_flood": "failed", "test_e_after": "passed"}


def test_points_follow_the_rule_and_add_up(graded):
    report = graded["report"]
    good, bad = report["lessons"]
    assert (good["score"], good["points"]) == (10, 10)
    assert (bad["score"], bad["points"], bad["tests_passed"], bad["tests_counted"]) == (8, 20, 2, 5)
    assert report["score"] == sum(e["score"] for e in report["lessons"]) == 18
    assert report["max_score"] == sum(e["points"] for e in report["lessons"]) == 30  # lesson 2 is coming


def test_classroom_result_decodes_and_matches_the_report(graded):
    encoded = (graded["out"] / "classroom.txt").read_text().strip()
    result = json.loads(base64.b64decode(encoded))
    assert result["version"] == 1 and result["status"] == "fail" and result["max_score"] == 30
    assert [(t["name"], t["status"], t["score"], t["max_score"]) for t in result["tests"]] == [
        ("Lesson 0: Good", "pass", 10, 10), ("Lesson 1: Misbehaving", "fail", 8, 20)]
    assert sum(t["score"] for t in result["tests"]) == graded["report"]["score"]
    assert "test_bad.py::test_b_hangs" in result["tests"][1]["message"]
    # The learner's forged line never reached $GITHUB_OUTPUT: only the grader's own result is there.
    assert graded["github_output"].read_text() == f"result={encoded}\n"


def test_junit_xml_parses_with_the_right_counts(graded):
    root = ET.parse(graded["out"] / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": "8", "failures": "1", "errors": "2", "skipped": "0"}
    suites = root.findall("testsuite")
    assert [s.get("tests") for s in suites] == ["3", "5"]
    props = {p.get("name"): p.get("value") for p in suites[1].find("properties")}
    assert props == {"score": "8", "points": "20"}
    cases = {c.get("name").split("::")[-1]: c for c in suites[1].findall("testcase")}
    assert cases["test_b_hangs"].find("error").get("type") == "timeout"
    assert cases["test_c_exits"].find("error").get("type") == "crashed"
    assert cases["test_d_flood"].find("failure") is not None
    assert cases["test_a_fine"].find("failure") is None and cases["test_a_fine"].find("error") is None
    assert cases["test_d_flood"].get("classname") == "lesson01.hidden"


def test_hidden_tests_show_their_name_only(graded):
    """Neither the docstring nor the source of a hidden test reaches the public outputs."""
    hidden = {t["name"]: t for t in graded["report"]["lessons"][1]["tests"]["hidden"]}
    assert hidden["test_bad_hidden.py::test_d_flood"]["message"] == ""
    for public in (graded["out"] / "grade.json", graded["out"] / "junit.xml"):
        text = public.read_text()
        assert "test_d_flood" in text and "The answer is 42." not in text and "bad.flood() == 42" not in text


def test_same_code_same_files(graded, tmp_path, capsys):
    first = tmp_path / "a.json"
    second = tmp_path / "b.json"
    for target in (first, second):
        code, _, _ = autograde(graded["course"], capsys, "--lessons", "0", "--impl", str(graded["learner"]),
                               "--json", str(target), "--classroom", str(target.with_suffix(".txt")))
        assert code == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".txt").read_bytes() == second.with_suffix(".txt").read_bytes()


def test_bundle_grades_only_the_students_aios(tmp_path, capsys):
    """The bundle's tests and points count; the student's own tests and curriculum do not."""
    bundle = make_course(tmp_path / "autograder")
    archive = tmp_path / "autograder.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="autograder")
    student = make_learner(tmp_path / "student")
    write_files(student, {
        "grader/curriculum.toml": CURRICULUM.replace("points = 10", "points = 1000"),
        "tests/lesson00/test_good.py": "def test_everything_passes():\n    pass\n",
        "conftest.py": "",
    })
    (student / "aios" / "good.py").write_text("def add(a, b):\n    return 0\n")  # wrong on purpose
    out = tmp_path / "grade.json"
    code, stdout, _ = autograde(student, capsys, "--bundle", str(archive), "--lessons", "0", "--json", str(out))
    assert code == 0, stdout
    lesson = json.loads(out.read_text())["lessons"][0]
    assert lesson["points"] == 10 and lesson["score"] == 0
    assert set(outcomes(lesson)) == {"test_add", "test_add_negative", "test_add_zero"}
    assert "0/10" in stdout


@pytest.mark.parametrize("args,expected", [
    (["--lessons", "x"], "'x' is not a lesson number"),
    (["--lessons", "7"], "no lesson 7"),
    (["--lessons", "2"], "coming soon"),
    (["--impl", "/nonexistent/tree"], "no aios/ package"),
    (["--bundle", "/nonexistent/bundle"], "not an autograder bundle"),
    (["--bundle", "/nonexistent/bundle", "--impl", "reference"], "do not go together"),
])
def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys, args, expected):
    course = make_course(tmp_path / "course")
    code, _, err = autograde(course, capsys, *args)
    assert code == 2 and expected in err and "Traceback" not in err


def test_unwritable_output_is_reported(tmp_path, capsys):
    course = make_course(tmp_path / "course")
    learner = make_learner(tmp_path / "learner")
    (tmp_path / "file").write_text("")
    code, _, err = autograde(course, capsys, "--lessons", "0", "--impl", str(learner),
                             "--junit", str(tmp_path / "file" / "junit.xml"))
    assert code == 2 and "cannot write" in err


def test_lesson_points_rule():
    assert classroom.lesson_points(10, 7, 7) == 10
    assert classroom.lesson_points(10, 6, 7) == 8
    assert classroom.lesson_points(20, 2, 5) == 8
    assert classroom.lesson_points(10, 0, 0) == 0


SCORING_CURRICULUM = """
[defaults]
test_timeout = 10

[[lesson]]
id = 0
title = "Outcomes"
status = "ready"
prerequisites = []
points = 12
timeout = 60

[[lesson]]
id = 1
title = "Only a GPU test"
status = "ready"
prerequisites = []
points = 10
timeout = 60
"""

SCORING_TESTS = {
    "tests/lesson00/test_outcomes.py": '''
        import pytest
        from aios.good import add

        def test_passes():
            assert add(1, 1) == 2

        def test_learner_xfails():
            pytest.xfail("not done yet")

        @pytest.mark.xfail(reason="the test itself expects a failure")
        def test_xpasses():
            assert add(1, 1) == 2

        def test_learner_skips():
            pytest.skip("nothing to see here")

        @pytest.mark.skipif(True, reason="needs a CUDA GPU")
        def test_declared_skip():
            assert False
        ''',
    "tests/lesson01/test_gpu_only.py": '''
        import pytest

        @pytest.mark.skip(reason="needs a CUDA GPU")
        def test_on_a_gpu():
            pass
        ''',
}


def test_only_passed_counts_and_only_declared_skips_are_excused(tmp_path, capsys):
    """xfail, xpass and a skip raised at run time fail; a skip the markers declared is not counted."""
    course = write_files(tmp_path / "course", {"grader/curriculum.toml": SCORING_CURRICULUM, "conftest.py": CONFTEST,
                                               **SCORING_TESTS})
    learner = make_learner(tmp_path / "learner")
    out = tmp_path / "grade.json"
    code, _, _ = autograde(course, capsys, "--impl", str(learner), "--json", str(out))
    assert code == 0
    outcomes_, gpu_only = json.loads(out.read_text())["lessons"]
    assert outcomes(outcomes_) == {"test_passes": "passed", "test_learner_xfails": "xfailed",
                                   "test_xpasses": "xpassed", "test_learner_skips": "skipped",
                                   "test_declared_skip": "skipped"}
    assert (outcomes_["tests_passed"], outcomes_["tests_counted"], outcomes_["score"]) == (1, 4, 3)
    assert (gpu_only["tests_counted"], gpu_only["score"]) == (0, 0)  # nothing counted: no points
