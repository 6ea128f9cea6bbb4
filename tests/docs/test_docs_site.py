"""The course website (mkdocs.yml, scripts/docs_site.py) in a real headless browser.

Every page renders without console errors or requests to other hosts, its mermaid diagrams
are drawn, every internal link and image resolves, the navigation holds every lesson and
the learner's loop, and the search finds a function by its name.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import pytest

pytestmark = pytest.mark.timeout(600)

LESSONS = sorted(p.parent.name for p in (Path(__file__).resolve().parents[2] / "exercises").glob("lesson*/README.md"))


def page_paths(site: Path) -> list[str]:
    """Every page of the site as a URL path (``""`` for the home page)."""
    found = [p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")]
    return sorted("" if p == "." else p + "/" for p in found if not p.startswith(("assets", "search")))


def visit(browser, url: str) -> tuple[object, list[str]]:
    """Open ``url`` in a fresh page (and context): the page and every problem seen while it loaded."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    origin = urlsplit(url).netloc  # watched, not routed: page.route stalls the search worker's requests
    page.on("request", lambda r: urlsplit(r.url).netloc not in (origin, "") and problems.append(
        f"requests another host: {r.url}"))
    page.goto(url, wait_until="load")
    return page, problems


def wait_for_diagrams(page) -> list[str]:
    """Wait until Material has drawn every mermaid block; what is left undrawn."""
    try:
        page.wait_for_function("document.querySelectorAll('pre.mermaid').length === 0", timeout=30_000)
    except Exception:  # noqa: BLE001 (Playwright's TimeoutError)
        return ["a mermaid diagram was not drawn within 30 s"]
    heights = page.eval_on_selector_all("div.mermaid", "els => els.map(e => e.getBoundingClientRect().height)")
    return [f"a mermaid diagram is drawn {h:.0f} px high" for h in heights if h < 40]


@pytest.fixture(scope="module")
def crawl(browser, site, base_url) -> dict[str, dict]:
    """Every page visited once: its problems, links and images."""
    result = {}
    for path in page_paths(site):
        page, problems = visit(browser, base_url + path)
        problems += wait_for_diagrams(page) if page.query_selector(".mermaid") else []
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({src: e.currentSrc || e.src, ok: e.complete && e.naturalWidth > 0}))")
        result[path] = {"problems": problems, "links": links, "images": images}
        page.close()
    return result


def test_the_site_has_the_home_page_every_lesson_and_the_docs(site):
    paths = page_paths(site)
    assert "" in paths and "learner-workflow/" in paths
    assert [f"lessons/{name}/" for name in LESSONS] == [p for p in paths if p.startswith("lessons/")]
    assert {"architecture/", "benchmarks/", "progression/"} <= set(paths)


def test_every_page_renders_without_console_errors(crawl):
    problems = [f"/{path}: {problem}" for path, seen in crawl.items() for problem in seen["problems"]]
    assert not problems, "\n".join(problems)


def _fetch(url: str) -> tuple[int, str]:
    """HTTP status and text of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_every_internal_link_and_image_resolves(crawl, base_url):
    broken, fetched = [], {}
    for path, seen in crawl.items():
        for link in seen["links"]:
            if not link.startswith(base_url):
                continue
            target, fragment = urldefrag(link)
            if target not in fetched:
                fetched[target] = _fetch(target)
            status, text = fetched[target]
            if status != 200:
                broken.append(f"/{path}: {link} answers {status}")
            elif fragment and not re.search(rf'id="{re.escape(fragment)}"', text):
                broken.append(f"/{path}: {link}: no element with id {fragment!r} there")
        broken += [f"/{path}: image {img['src']} did not load" for img in seen["images"] if not img["ok"]]
    assert not broken, "\n".join(broken)
    assert sum(len(seen["images"]) for seen in crawl.values()) >= 2  # the ladder chart, on two pages


def test_the_diagrams_are_drawn_by_the_local_mermaid(browser, base_url):
    page, problems = visit(browser, base_url + "lessons/lesson00/")
    problems += wait_for_diagrams(page)
    assert page.evaluate("typeof window.mermaid") == "object", "mermaid.min.js is not served by the site"
    page.close()
    assert not problems, "\n".join(problems)


def test_the_navigation_lists_the_lessons_and_the_board(browser, base_url):
    page, _ = visit(browser, base_url)
    nav = page.eval_on_selector_all("nav.md-nav--primary a[href]", "els => els.map(e => e.href)")
    page.close()
    wanted = ["learner-workflow/", "architecture/", "benchmarks/"] + [f"lessons/{name}/" for name in LESSONS]
    assert [w for w in wanted if base_url + w not in nav] == []


def test_the_board_is_explained(browser, base_url):
    page, _ = visit(browser, base_url + "learner-workflow/")
    headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
    page.close()
    assert any("The board" in h for h in headings), headings


def search(page, query: str) -> list[str]:
    """Type ``query`` into the header's search field, key by key: the result pages' URLs.

    Keys, not ``fill``: the theme reads the field on keyup (or once its index is ready), and
    the index is built in a web worker (tens of seconds on a busy CPU).
    """
    page.locator("input.md-search__input").press_sequentially(query)
    page.wait_for_function("/matching document/.test(document.querySelector('.md-search-result__meta').textContent)",
                           timeout=180_000)
    return page.eval_on_selector_all(".md-search-result__item a", "els => els.map(e => e.href.split(/[?#]/)[0])")


@pytest.mark.parametrize(("query", "page_path"), [("rms_norm", "lessons/lesson01/"), ("BlockManager", "lessons/lesson06/")])
def test_search_finds_a_function_by_its_name(browser, base_url, query, page_path):
    page, problems = visit(browser, base_url)
    hits = search(page, query)
    page.close()
    assert base_url + page_path in hits, f"searching {query!r} found {sorted(set(hits))}"
    assert not problems, "\n".join(problems)
