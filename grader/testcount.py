"""How many tests each suite holds, as pytest collects them (parametrize expanded).

The board shows ``passed/total`` before a lesson's first grade too; an estimate read from
the source cannot expand ``@pytest.mark.parametrize`` over a variable or a fixture's
params, so the count comes from ``pytest --collect-only``. Collecting imports torch and
the test modules (seconds), so the counts are kept in ``<root>/.aios/test_counts.json``,
keyed by a digest of each suite's files, and collected again only when a suite changes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

CACHE = Path(".aios") / "test_counts.json"
COLLECT_TIMEOUT_S = 300


def suite_exists(root: Path, suite: str) -> bool:
    """Whether ``suite`` (a folder or file under ``root``) is there (a student tree has no hidden suites)."""
    return (root / suite).exists()


def suite_digest(root: Path, suite: str) -> str:
    """A digest of every Python file under ``suite`` (names and contents); '' when it does not exist."""
    folder = root / suite
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.py")) if folder.is_dir() else []
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest() if files else ""


def _collect(root: Path, suites: list[str]) -> dict[str, int]:
    """``{suite: number of collected tests}`` from one ``pytest --collect-only`` (suites it failed on are left out)."""
    from grader.runner import _child_env

    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", f"--rootdir={root}", *suites]
    try:
        done = subprocess.run(cmd, cwd=root, env=_child_env(None), capture_output=True, text=True,
                              timeout=COLLECT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {}
    if done.returncode not in (0, 5):
        return {}
    counts = {suite: 0 for suite in suites}
    for line in done.stdout.splitlines():
        path = line.partition("::")[0]
        for suite in suites:
            if "::" in line and (path == suite or path.startswith(suite.rstrip("/") + "/")):
                counts[suite] += 1
    return counts


def _read_cache(root: Path) -> dict:
    try:
        return json.loads((root / CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def collected_counts(root: Path, suites: list[str], collect: bool = True) -> dict[str, int]:
    """``{suite: test count}`` for the existing ``suites``: from the cache, collecting the stale ones.

    With ``collect=False`` only the cache answers. A suite that fails to collect (a syntax
    error in a test file, say), or is not in the cache, is missing from the answer.
    """
    from grader.selfcheck import batches

    cache = _read_cache(root)
    digests = {suite: suite_digest(root, suite) for suite in suites}
    stale = [s for s, d in digests.items() if d and cache.get(s, {}).get("digest") != d] if collect else []
    if stale:
        print(f"counting the tests of {len(stale)} suite(s) with pytest --collect-only (kept until they change) ...",
              file=sys.stderr, flush=True)
    for group in batches(root, stale) if stale else []:
        for suite, total in _collect(root, group).items():
            cache[suite] = {"digest": digests[suite], "total": total}
    if stale:
        try:
            (root / CACHE).parent.mkdir(exist_ok=True)
            (root / CACHE).write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        except OSError:
            pass  # a read-only checkout still gets its counts, just not kept
    return {s: cache[s]["total"] for s, d in digests.items() if d and cache.get(s, {}).get("digest") == d}
