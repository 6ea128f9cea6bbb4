"""The board's test totals before a first grade come from pytest's collection (grader/testcount.py)."""

from __future__ import annotations

import json
from pathlib import Path

from synthetic_repo import write_files

from grader import cli, testcount

CURRICULUM = """
[[lesson]]
id = 0
title = "Counting"
status = "ready"
prerequisites = []
timeout = 60
"""

SUITE = '''
    import pytest

    CASES = [(1, 1), (2, 4), (3, 9)]

    @pytest.mark.parametrize("n,square", CASES)
    def test_square(n, square):
        assert n * n == square

    @pytest.fixture(params=["a", "b"])
    def letter(request):
        return request.param

    def test_letter(letter):
        assert letter.isalpha()
    '''


def status_totals(repo: Path, capsys) -> dict:
    assert cli.main(["--root", str(repo), "status", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["lessons"][0]
    return {"visible": row["visible"]["total"], "hidden": row["hidden"]["total"]}


def test_totals_expand_parametrize_over_a_variable_and_fixture_params(tmp_path, capsys):
    """3 cases from a list held in a variable and 2 from a fixture's params: 5, not 2 (what the source shows)."""
    repo = write_files(tmp_path / "repo", {"grader/curriculum.toml": CURRICULUM,
                                           "tests/lesson00/test_counting.py": SUITE,
                                           "grader/hidden/lesson00/test_more.py": "def test_one():\n    pass\n"})
    assert status_totals(repo, capsys) == {"visible": 5, "hidden": 1}


def test_counts_are_kept_until_the_suite_changes(tmp_path, capsys):
    """The second board reads the cache; editing a test file collects that suite again."""
    repo = write_files(tmp_path / "repo", {"grader/curriculum.toml": CURRICULUM,
                                           "tests/lesson00/test_counting.py": SUITE})
    assert status_totals(repo, capsys)["visible"] == 5
    cache = json.loads((repo / testcount.CACHE).read_text())
    assert cache["tests/lesson00"]["total"] == 5
    (repo / "tests/lesson00/test_counting.py").write_text(
        (repo / "tests/lesson00/test_counting.py").read_text() + "\n\ndef test_extra():\n    pass\n")
    assert status_totals(repo, capsys)["visible"] == 6


def test_locked_lessons_are_not_collected_until_they_open(tmp_path, capsys):
    """Counting costs seconds per suite: a locked lesson shows '?' (null in JSON) until it opens."""
    repo = write_files(tmp_path / "repo", {
        "grader/curriculum.toml": CURRICULUM + """
[[lesson]]
id = 1
title = "Later"
status = "ready"
prerequisites = [0]
timeout = 60
""",
        "tests/lesson00/test_counting.py": SUITE,
        "tests/lesson01/test_later.py": "def test_one():\n    pass\n"})
    assert cli.main(["--root", str(repo), "status", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["lessons"]
    assert rows[0]["visible"]["total"] == 5 and rows[1]["visible"]["total"] is None
    assert rows[1]["hidden"]["total"] == 0  # no hidden suite at all: nothing to count
    assert cli.main(["--root", str(repo), "status"]) == 0
    assert "0/?" in capsys.readouterr().out
