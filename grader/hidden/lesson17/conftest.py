"""Fixtures of lesson 17's hidden tests: the visible suite's own (tests/lesson17/conftest.py), loaded from
that file so that the two suites share one copy. The autograder bundle holds both folders."""

import importlib.util
from pathlib import Path

_VISIBLE = Path(__file__).resolve().parents[3] / "tests" / "lesson17" / "conftest.py"
_spec = importlib.util.spec_from_file_location("lesson17_visible_fixtures", _VISIBLE)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
globals().update({name: value for name, value in vars(_fixtures).items() if not name.startswith("__")})
