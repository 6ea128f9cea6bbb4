"""The stub generator (grader/stubgen.py) on small synthetic trees."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grader import stubgen

REPO = Path(__file__).resolve().parents[2]

NORM = '''\
"""Module docstring."""

import math


def rms(x: list[float], eps: float = 1e-6) -> list[float]:
    """Root-mean-square normalise x."""
    # BEGIN SOLUTION lesson1
    # Hint: divide by sqrt(mean(x^2) + eps).
    scale = 1 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v * scale for v in x]
    # END SOLUTION


class Cache:
    """A cache."""

    def __init__(self):
        self.items = []

    def add(self, item) -> int:
        """Append item; return the new size."""
        if item is None:
            raise ValueError("no None")
        # BEGIN SOLUTION lesson2
        self.items.append(item)
        return len(self.items)
        # END SOLUTION


def untouched(a, b):
    return "# BEGIN SOLUTION lesson1 inside a string is no marker"
'''


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` under ``root/solutions/aios`` and return that package path."""
    src = root / "solutions" / "aios"
    for rel, text in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if rel.endswith(".txt") else text, encoding="utf-8")
    return src


def test_region_replaced_by_hint_and_raise():
    out = stubgen.stub_source(NORM, "aios/norm.py")
    assert "math.sqrt" not in out and "self.items.append" not in out
    assert "    # Hint: divide by sqrt(mean(x^2) + eps).\n" in out
    message = ("Lesson 1: implement rms in aios/norm.py — see exercises/lesson01/README.md, "
               "'What to implement'")
    assert f"    raise NotImplementedError({message!r})\n" in out
    assert '        raise NotImplementedError("Lesson 2: implement Cache.add in aios/norm.py' in out
    assert "# BEGIN SOLUTION lesson1\n" not in out and "# END SOLUTION" not in out


def test_everything_outside_regions_is_byte_identical():
    out = stubgen.stub_source(NORM, "aios/norm.py")
    kept = [line for line in NORM.splitlines(keepends=True)]
    stubbed = out.splitlines(keepends=True)
    # Signature, docstrings, code before the region and the untouched function survive as is.
    for line in ('def rms(x: list[float], eps: float = 1e-6) -> list[float]:\n',
                 '    """Root-mean-square normalise x."""\n',
                 '        if item is None:\n', '            raise ValueError("no None")\n',
                 '    return "# BEGIN SOLUTION lesson1 inside a string is no marker"\n'):
        assert line in kept and line in stubbed
    assert out.startswith('"""Module docstring."""\n\nimport math\n')
    assert out.endswith(NORM[NORM.index("\n\ndef untouched"):])


def test_stubbed_code_raises_the_message():
    namespace: dict = {}
    exec(compile(stubgen.stub_source(NORM, "aios/norm.py"), "norm.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"Lesson 1: implement rms in aios/norm.py"):
        namespace["rms"]([1.0])
    with pytest.raises(ValueError):
        namespace["Cache"]().add(None)  # the code before the region still runs


def test_only_stubs_one_lesson():
    out = stubgen.stub_source(NORM, "aios/norm.py", only=2)
    assert "math.sqrt" in out and "# BEGIN SOLUTION lesson1" in out
    assert "self.items.append" not in out and "Lesson 2: implement Cache.add" in out


def test_crlf_and_tabs_preserved():
    source = 'def f():\r\n\t"""Doc."""\r\n\t# BEGIN SOLUTION lesson3\r\n\treturn 1\r\n\t# END SOLUTION\r\n'
    out = stubgen.stub_source(source, "aios/f.py")
    assert out.startswith('def f():\r\n\t"""Doc."""\r\n\traise NotImplementedError(')
    assert out.endswith(")\r\n")


def test_region_inside_a_block_and_triton_style_decorator():
    source = textwrap.dedent('''\
        import functools

        @functools.lru_cache
        def kernel(n):
            if n > 0:
                # BEGIN SOLUTION lesson9
                return n * 2
                # END SOLUTION
            return 0
        ''')
    out = stubgen.stub_source(source, "aios/k.py")
    assert '        raise NotImplementedError("Lesson 9: implement kernel in aios/k.py' in out
    assert out.endswith("    return 0\n")


def test_nested_function_qualname():
    source = textwrap.dedent('''\
        class A:
            def outer(self):
                def inner():
                    # BEGIN SOLUTION lesson4
                    return 1
                    # END SOLUTION
                return inner
        ''')
    (region,) = stubgen.find_regions(source, "aios/a.py")
    assert region.qualname == "A.outer.inner" and region.symbol == "aios/a.py::A.outer.inner"


@pytest.mark.parametrize(
    ("source", "line", "words"),
    [
        ("def f():\n    # BEGIN SOLUTION lesson1\n    return 1\n", 2, "unclosed"),
        ("def f():\n    # BEGIN SOLUTION lesson1\n    # BEGIN SOLUTION lesson2\n    return 1\n"
         "    # END SOLUTION\n    # END SOLUTION\n", 3, "nested"),
        ("# BEGIN SOLUTION lesson1\nX = 1\n# END SOLUTION\n", 1, "outside a def"),
        ("def f():\n    # BEGIN SOLUTION lesson1\n    return 1\n\n\ndef g():\n    return 2\n"
         "    # END SOLUTION\n", 2, "more than one def"),
        ("def f():\n    # END SOLUTION\n    return 1\n", 2, "without a BEGIN"),
        ("def f():\n    # BEGIN SOLUTION lesson01\n    return 1\n    # END SOLUTION\n", 2, "malformed"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", 2, "malformed"),
        ("def f():\n    x = (1 +\n        # BEGIN SOLUTION lesson1\n        2)\n        # END SOLUTION\n"
         "    return x\n", 3, "cuts the statement"),
        ("def f():\n    return g(\n        # BEGIN SOLUTION lesson1\n        1,\n        # END SOLUTION\n"
         "    )\n", 3, "inside the statement"),
        ("def f():\n    x = 1  # BEGIN SOLUTION lesson1\n    return x\n    # END SOLUTION\n", 2, "own line"),
    ],
    ids=["unclosed", "nested", "outside-def", "spans-defs", "stray-end", "zero-padded", "no-lesson",
         "cuts-statement", "inside-expression", "trailing-marker"],
)
def test_malformed_markers_fail_with_file_and_line(source, line, words):
    with pytest.raises(stubgen.MarkerError) as info:
        stubgen.stub_source(source, "aios/bad.py")
    assert str(info.value).startswith(f"aios/bad.py:{line}:")
    assert words in str(info.value)


def test_generate_copies_other_files_and_is_deterministic(tmp_path):
    src = make_tree(tmp_path, {"__init__.py": "", "norm.py": NORM, "data/corpus.txt": "hello\n",
                               "plain.py": "X = 1\r\n"})
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "norm.cpython-311.pyc").write_bytes(b"junk")
    first, second = stubgen.generate(src), stubgen.generate(src)
    assert first == second
    assert sorted(first) == ["aios/__init__.py", "aios/data/corpus.txt", "aios/norm.py", "aios/plain.py"]
    assert first["aios/plain.py"] == b"X = 1\r\n" and first["aios/data/corpus.txt"] == b"hello\n"


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m grader.stubgen --root root ...``."""
    return subprocess.run([sys.executable, "-m", "grader.stubgen", "--root", str(root), *args],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_writes_then_check_detects_drift(tmp_path):
    make_tree(tmp_path, {"__init__.py": "", "norm.py": NORM, "sub/x.txt": "x\n"})
    first = run_cli(tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "aios" / "sub" / "x.txt").read_text() == "x\n"
    assert run_cli(tmp_path, "--check").returncode == 0

    (tmp_path / "aios" / "norm.py").write_text(NORM)  # hand edit
    (tmp_path / "aios" / "stray.py").write_text("")  # file only in aios/
    (tmp_path / "aios" / "sub" / "x.txt").unlink()  # file only in solutions/
    (tmp_path / "aios" / "__pycache__").mkdir()
    (tmp_path / "aios" / "__pycache__" / "n.pyc").write_bytes(b"ignored")
    check = run_cli(tmp_path, "--check")
    assert check.returncode == 1
    assert "differs: aios/norm.py" in check.stderr
    assert "extra (not generated from solutions/): aios/stray.py" in check.stderr
    assert "missing: aios/sub/x.txt" in check.stderr
    assert "__pycache__" not in check.stderr

    assert run_cli(tmp_path).returncode == 0  # regenerating repairs everything
    assert run_cli(tmp_path, "--check").returncode == 0
    assert not (tmp_path / "aios" / "stray.py").exists()


def test_cli_only_and_out(tmp_path):
    make_tree(tmp_path, {"__init__.py": "", "norm.py": NORM})
    result = run_cli(tmp_path, "--only", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "aios" / "norm.py").read_text()
    assert "Lesson 1: implement rms" in text and "self.items.append(item)" in text
    assert not (tmp_path / "aios").exists()


def test_cli_reports_malformed_marker(tmp_path):
    make_tree(tmp_path, {"bad.py": "def f():\n    # BEGIN SOLUTION lesson1\n    return 1\n"})
    result = run_cli(tmp_path)
    assert result.returncode == 2
    assert "aios/bad.py:2: unclosed BEGIN SOLUTION lesson1" in result.stderr

