"""Fixtures of lesson 20's hidden tests: the visible suite's own (tests/lesson20/conftest.py), loaded from that
file so that the two suites share one copy, and its helper modules on the path. The autograder bundle holds both."""

import importlib.util
import sys
from pathlib import Path

_VISIBLE_DIR = Path(__file__).resolve().parents[3] / "tests" / "lesson20"
if str(_VISIBLE_DIR) not in sys.path:
    sys.path.insert(0, str(_VISIBLE_DIR))
_spec = importlib.util.spec_from_file_location("lesson20_visible_fixtures", _VISIBLE_DIR / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
globals().update({name: value for name, value in vars(_fixtures).items() if not name.startswith("__")})
