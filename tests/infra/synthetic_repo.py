"""Writing small synthetic repositories for the grader's tests (fake curricula, lessons and suites)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write each ``relative path -> text`` under ``root`` (text dedented, leading blank lines dropped); return root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root
