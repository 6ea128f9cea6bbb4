"""mkdocs hooks for the course website (mkdocs.yml): the repository's Markdown, published as it is.

Nothing is copied into git; the Markdown where it lies stays the single source:

* ``docs/`` is mkdocs' ``docs_dir`` (its pages and ``docs/img/``);
* ``README.md`` becomes the home page and each ``exercises/lessonNN/README.md`` the page
  ``lessons/lessonNN.md``, read from where they are;
* every relative link and image is resolved from its file's place in the repository, then
  pointed at the page or image that carries that file on the site; a link to any other
  repository file (``../../aios/...``) goes to ``repo_url``'s view of it when mkdocs.yml sets
  one, else it becomes plain text with the path as its tooltip, so that no link is broken;
* the navigation is made here: home, the learner's loop (the board), the lessons in order,
  then every other page of ``docs/`` (a new one joins by itself);
* mermaid diagrams use mermaid.min.js from the npm package, fetched once with ``npm pack``
  into ``.nox/docs/``, so that the site needs no network (without npm, Material's theme loads
  it from unpkg.com when a page is opened).
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown import Extension
from markdown.treeprocessors import Treeprocessor
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MERMAID_VERSION = "11.17.2"  # Material for MkDocs 9 drives mermaid 11
MERMAID_CACHE = ROOT / ".nox" / "docs" / f"mermaid-{MERMAID_VERSION}.min.js"
MERMAID_URI = "assets/javascripts/mermaid.min.js"
#: docs/ pages first in the navigation, in this order; the others follow alphabetically.
DOCS_FIRST = ("architecture.md", "benchmarks.md", "progression.md", "compare.md", "conventions.md", "classroom.md")
WORKFLOW = "learner-workflow.md"

log = logging.getLogger("mkdocs.hooks.docs_site")


def extra_pages() -> dict[str, Path]:
    """Site pages read from outside ``docs/``: ``{src_uri: repository file}``."""
    pages = {"index.md": ROOT / "README.md"}
    for readme in sorted(ROOT.glob("exercises/lesson*/README.md")):
        pages[f"lessons/{readme.parent.name}.md"] = readme
    return pages


def navigation(docs_dir: Path) -> list:
    """Home, the learner's loop, the lessons, then the other docs pages."""
    lessons = [uri for uri in extra_pages() if uri.startswith("lessons/")]
    names = sorted(p.name for p in docs_dir.glob("*.md") if p.name != WORKFLOW)
    reference = [n for n in DOCS_FIRST if n in names] + [n for n in names if n not in DOCS_FIRST]
    return [{"Home": "index.md"}, {"The learner's loop and the board": WORKFLOW},
            {"Lessons": lessons}, {"Reference": reference}]


def fetch_mermaid() -> Path | None:
    """mermaid.min.js of MERMAID_VERSION, from the cache or fetched with ``npm pack``; None without npm."""
    if MERMAID_CACHE.is_file():
        return MERMAID_CACHE
    npm = shutil.which("npm")
    if npm is None:
        log.warning("npm not found: mermaid diagrams will load mermaid from unpkg.com when a page is opened")
        return None
    log.info(f"fetching mermaid {MERMAID_VERSION} with npm pack into {MERMAID_CACHE.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        with tarfile.open(next(Path(tmp).glob("mermaid-*.tgz"))) as archive:
            data = archive.extractfile("package/dist/mermaid.min.js").read()
    MERMAID_CACHE.parent.mkdir(parents=True, exist_ok=True)
    MERMAID_CACHE.write_bytes(data)
    return MERMAID_CACHE


class RepoLinks(Treeprocessor):
    """Point relative links and images at what carries their repository file on the site."""

    def __init__(self, md=None):
        super().__init__(md)
        self.site: dict[str, str] = {}  # repository path -> src_uri
        self.source = ""  # the repository path of the page being rendered
        self.page = ""  # its src_uri
        self.repo_url = ""

    def run(self, root) -> None:
        for element in root.iter():
            attr = {"a": "href", "img": "src"}.get(element.tag)
            if attr and element.get(attr):
                self.rewrite(element, attr)

    def rewrite(self, element, attr: str) -> None:
        """Rewrite one element's link (external links and in-page anchors are left alone)."""
        parts = urlsplit(element.get(attr))
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            return
        target = posixpath.normpath(posixpath.join(posixpath.dirname(self.source), unquote(parts.path)))
        if target.startswith("../"):
            return  # outside the repository: left for mkdocs to report
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        if target in self.site:
            element.set(attr, posixpath.relpath(self.site[target], posixpath.dirname(self.page) or ".") + fragment)
        elif self.repo_url:
            element.set(attr, f"{self.repo_url.rstrip('/')}/blob/main/{target}{fragment}")
        elif element.tag == "a":
            del element.attrib["href"]
            element.tag, element.attrib["title"] = "span", target


class RepoLinksExtension(Extension):
    """Registers RepoLinks ahead of mkdocs' own link processing (priority 0)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.processor = RepoLinks()

    def extendMarkdown(self, md) -> None:  # noqa: N802 (Python-Markdown's name)
        self.processor.md = md
        md.treeprocessors.register(self.processor, "aios_repo_links", 5)


LINKS = RepoLinksExtension()


def on_config(config):
    """Navigation, the link rewriter and, when available, the local mermaid."""
    config.nav = navigation(Path(config.docs_dir))
    config.markdown_extensions.append(LINKS)
    LINKS.processor.repo_url = config.repo_url or ""
    if fetch_mermaid():
        config.extra_javascript.append(MERMAID_URI)
    return config


def on_files(files, config):
    """Add the READMEs (and mermaid), then map every repository file to its place on the site."""
    for uri, path in extra_pages().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    if MERMAID_CACHE.is_file():
        files.append(File.generated(config, MERMAID_URI, abs_src_path=str(MERMAID_CACHE)))
    LINKS.processor.site = {Path(f.abs_src_path).resolve().relative_to(ROOT).as_posix(): f.src_uri
                            for f in files if f.abs_src_path and Path(f.abs_src_path).resolve().is_relative_to(ROOT)}
    return files


def on_page_markdown(markdown, page, config, files):
    """Tell the link rewriter which file is about to be rendered."""
    LINKS.processor.source = Path(page.file.abs_src_path).resolve().relative_to(ROOT).as_posix()
    LINKS.processor.page = page.file.src_uri
    return markdown
