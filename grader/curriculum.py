"""The curriculum: ``grader/curriculum.toml`` read into ``Lesson`` records."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TEST_TIMEOUT = 120
DEFAULT_RUN_TIMEOUT = 600


def repo_root(arg: str | os.PathLike | None = None) -> Path:
    """The repository the grader works on: ``--root``, else ``$AIOS_ROOT``, else this checkout."""
    if arg:
        return Path(arg).resolve()
    if os.environ.get("AIOS_ROOT"):
        return Path(os.environ["AIOS_ROOT"]).resolve()
    return Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Lesson:
    """One lesson of the curriculum; paths are relative to the repository root."""

    id: int
    title: str
    folder: str
    status: str
    prerequisites: tuple[int, ...]
    points: int
    visible: str
    hidden: str
    benchmarks: tuple[str, ...] = ()
    timeout: int = DEFAULT_RUN_TIMEOUT
    test_timeout: int = DEFAULT_TEST_TIMEOUT
    symbols: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def ready(self) -> bool:
        """Whether the lesson is graded (status "ready")."""
        return self.status == "ready"

    @property
    def readme(self) -> str:
        """Path of the lesson's README."""
        return f"{self.folder}/README.md"


@dataclass(frozen=True)
class Curriculum:
    """All lessons, in id order, plus the repository they live in."""

    root: Path
    lessons: tuple[Lesson, ...]

    def get(self, lesson_id: int) -> Lesson:
        """The lesson with ``lesson_id``; KeyError when there is none."""
        for lesson in self.lessons:
            if lesson.id == lesson_id:
                return lesson
        raise KeyError(f"no lesson {lesson_id} in {self.root / 'grader' / 'curriculum.toml'}")

    def ready(self) -> list[Lesson]:
        """The lessons that are graded now."""
        return [lesson for lesson in self.lessons if lesson.ready]


KNOWN = {"id", "title", "folder", "status", "prerequisites", "points", "visible", "hidden",
         "benchmarks", "timeout", "test_timeout", "symbols"}


def _lesson(table: dict, defaults: dict) -> Lesson:
    """Build a Lesson from one ``[[lesson]]`` table, checking the required fields."""
    lid = int(table["id"])
    if table.get("status", "coming") not in ("ready", "coming"):
        raise ValueError(f"lesson {lid}: status must be 'ready' or 'coming', not {table['status']!r}")
    symbols = table.get("symbols")
    return Lesson(
        id=lid,
        title=str(table["title"]),
        folder=str(table.get("folder", f"exercises/lesson{lid:02d}")),
        status=str(table.get("status", "coming")),
        prerequisites=tuple(int(p) for p in table.get("prerequisites", [lid - 1] if lid else [])),
        points=int(table.get("points", 10)),
        visible=str(table.get("visible", f"tests/lesson{lid:02d}")),
        hidden=str(table.get("hidden", f"grader/hidden/lesson{lid:02d}")),
        benchmarks=tuple(table.get("benchmarks", [])),
        timeout=int(table.get("timeout", defaults.get("timeout", DEFAULT_RUN_TIMEOUT))),
        test_timeout=int(table.get("test_timeout", defaults.get("test_timeout", DEFAULT_TEST_TIMEOUT))),
        symbols=tuple(symbols) if symbols is not None else None,
        extra={k: v for k, v in table.items() if k not in KNOWN},
    )


def load(root: str | os.PathLike | None = None) -> Curriculum:
    """Read ``<root>/grader/curriculum.toml``."""
    base = repo_root(root)
    path = base / "grader" / "curriculum.toml"
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    defaults = data.get("defaults", {})
    lessons = sorted((_lesson(t, defaults) for t in data.get("lesson", [])), key=lambda l: l.id)
    ids = [lesson.id for lesson in lessons]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate lesson ids")
    return Curriculum(base, tuple(lessons))


def derived_symbols(root: Path) -> dict[int, list[str]]:
    """Stubbed symbols per lesson, read from the solution markers (empty without solutions/)."""
    from grader.stubgen import scan_regions

    src = root / "solutions" / "aios"
    if not src.is_dir():
        return {}
    out: dict[int, list[str]] = {}
    for region in scan_regions(src):
        symbols = out.setdefault(region.lesson, [])
        if region.symbol not in symbols:
            symbols.append(region.symbol)
    return out


def symbols(curriculum: Curriculum, lesson: Lesson) -> list[str]:
    """The lesson's symbols: the toml's list if it has one, else the markers'."""
    if lesson.symbols is not None:
        return list(lesson.symbols)
    return derived_symbols(curriculum.root).get(lesson.id, [])
