"""Rebuild ``assets/corpus/fortunes.txt`` from Debian's ``fortunes`` package.

    apt-get update && apt-get download fortunes fortunes-min
    for f in fortunes*.deb; do dpkg -x "$f" /tmp/fortunes; done
    python scripts/build_fortunes_corpus.py /tmp/fortunes/usr/share/games/fortunes

The tiny trained model (``python -m aios train-tiny``) reads the result, so training needs
no apt at all; this script only documents and repeats how the file was made. It keeps the
categories in :data:`CATEGORIES` (no ``fortunes-off``, no song lyrics, no quotes from
television or novels still in copyright, no IRC logs, no politics), cleans each fortune
(tabs and runs of spaces become one space, attribution lines become ``-- Name``) and
drops the ones that are ASCII art, too long, not plain ASCII, or crude
(:data:`CRUDE`). Output: one ``%% topic`` line per category, then its fortunes, each
followed by a ``%`` line. Licence and provenance: ``assets/corpus/NOTICE.md``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: Debian's fortune file -> the topic a user prompt names (see aios.fixtures.trained).
CATEGORIES = {
    "art": "art", "computers": "computers", "cookie": "life", "definitions": "words",
    "education": "school", "food": "food", "fortunes": "the future", "goedel": "logic",
    "humorists": "humor", "kids": "children", "law": "the law", "literature": "books",
    "love": "love", "magic": "magic", "medicine": "medicine", "miscellaneous": "anything",
    "news": "the news", "paradoxum": "paradoxes", "people": "people", "pets": "pets",
    "platitudes": "life", "riddles": "riddles", "science": "science", "sports": "sports",
    "tao": "the Way", "wisdom": "wisdom", "work": "work",
}

#: A fortune mentioning any of these is left out.
CRUDE = re.compile(
    r"\b(fuck\w*|shit\w*|cunt|bitch\w*|bastard\w*|whore\w*|nigg\w*|fag\w*|rape\w*|"
    r"penis\w*|vagina\w*|orgasm\w*|sex\w*|porn\w*|hell|damn\w*|ass|asshole\w*|crap)\b",
    re.IGNORECASE,
)
MAX_CHARS = 600


def clean(fortune: str) -> str | None:
    """One fortune, tidied; ``None`` if it should be left out."""
    lines = []
    for line in fortune.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line.startswith("--"):
            line = "-- " + line.lstrip("- ")
        lines.append(line)
    text = "\n".join(lines).strip()
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    if not text or len(text) > MAX_CHARS or not text.isascii() or CRUDE.search(text):
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.8 * len(text):  # ASCII art, tables, code
        return None
    return text


def build(fortune_dir: Path) -> str:
    """The corpus text for the categories found in ``fortune_dir``."""
    parts = []
    for name, topic in CATEGORIES.items():
        raw = (fortune_dir / name).read_text(encoding="latin-1")
        kept = [text for text in map(clean, raw.split("\n%\n")) if text]
        parts.append(f"%% {topic}\n" + "".join(f"{text}\n%\n" for text in kept))
    return "".join(parts)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = Path(__file__).resolve().parents[1] / "assets" / "corpus" / "fortunes.txt"
    text = build(Path(sys.argv[1]))
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {len(text):,} characters, {text.count(chr(10) + '%' + chr(10)):,} fortunes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
