"""Fixtures for the website tests: the built site, a local HTTP server, a headless Chromium.

The tests need mkdocs + Material and Playwright (``pip install -r requirements-docs.txt``)
and a Chromium binary (Debian: ``apt-get install chromium``; ``$AIOS_CHROMIUM`` names
another); without them they are skipped with the reason. Playwright drives the system's
Chromium: ``playwright install`` (a browser download) is never needed.
``$AIOS_DOCS_SITE`` names an already built site (``nox -s docs`` builds ``site/`` and sets
it); otherwise the site is built into a temporary folder with ``mkdocs build --strict``.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """The Chromium binary to drive: ``$AIOS_CHROMIUM``, else the first found on PATH."""
    names = [os.environ["AIOS_CHROMIUM"]] if os.environ.get("AIOS_CHROMIUM") else ["chromium", "chromium-browser", "google-chrome"]
    return next(filter(None, map(shutil.which, names)), None)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The built website's folder."""
    if os.environ.get("AIOS_DOCS_SITE"):
        return Path(os.environ["AIOS_DOCS_SITE"]).resolve()
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -r requirements-docs.txt")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging every request to stderr."""

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def base_url(site):
    """``http://127.0.0.1:PORT/`` serving the site (http.server in a thread, stopped afterwards)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright (module scope: Playwright's sync API keeps an event loop
    running until it stops, and later suites call asyncio.run)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-docs.txt")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set AIOS_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
