"""The trust split: learner code runs in a worker process, verdicts in the test process.

* :mod:`grader.remote.protocol`: the wire (pickles towards the worker, JSON and raw
  tensor bytes back: never a pickle from the worker);
* :mod:`grader.remote.worker`: the worker (``python -I grader/remote/worker.py``), which
  imports the learner's ``aios`` and only computes;
* :mod:`grader.remote.client`: the trusted side, whose import hook gives the tests proxy
  ``aios`` modules.

docs/classroom.md ("Trust model: the learner worker") explains the design.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LESSON_FOLDER = re.compile(r"lesson(\d+)")
#: Lessons whose tests import aios in the test process itself: none. (Lessons 14 and 15 run
#: their rank tasks and engine-side test code through ``learner_helper`` in the worker.)
DIRECT_LESSONS: frozenset[int] = frozenset()
#: The lessons whose learner code may use Hugging Face's model code: 0 (the environment check)
#: and 2 (running Qwen3 with transformers). Everywhere else, lesson 1's layers and model in plain
#: torch included, the worker refuses it (aios runs the model itself); the tests' side may
#: still use transformers for reference values.
LESSONS_WITH_HF_MODELS: frozenset[int] = frozenset({0, 2})


#: Library modules a learner worker imports as it starts, right after torch, while the tests start up
#: (grader/remote/worker.py, ``--preload``): the learner's code would import them at its first
#: request otherwise, after the tests' own imports instead of beside them. Hugging Face's model code
#: in the lessons that may use it; the tokenizer from lesson 8 on, where the engine loads one.
PRELOAD_HF_MODELS = ("transformers.modeling_utils", "transformers.models.auto.modeling_auto",
                     "transformers.models.qwen3.modeling_qwen3")
PRELOAD_TOKENIZER = ("transformers.models.auto.tokenization_auto", "transformers.tokenization_utils_tokenizers",
                     "transformers.tokenization_utils_fast", "transformers.models.qwen2.tokenization_qwen2",
                     "transformers.models.qwen2.tokenization_qwen2_fast")
FIRST_LESSON_WITH_TOKENIZER = 8


def preload_for(lessons: set[int]) -> list[str]:
    """The modules a worker for suites of ``lessons`` imports as it starts (see PRELOAD_HF_MODELS).
    A name this version of a library lacks is skipped there."""
    modules: list[str] = []
    if lessons & LESSONS_WITH_HF_MODELS:
        modules += PRELOAD_HF_MODELS
    if any(lesson >= FIRST_LESSON_WITH_TOKENIZER for lesson in lessons) or lessons & LESSONS_WITH_HF_MODELS:
        modules += PRELOAD_TOKENIZER
    return modules


def lessons_in(paths: list[str]) -> set[int]:
    """The lesson numbers of suite paths (``tests/lesson03``, ``grader/hidden/lesson03/x.py``)."""
    found = set()
    for path in paths:
        match = LESSON_FOLDER.search(str(path))
        if match is None:
            return set()  # not a lesson suite (tests/infra): runs as is
        found.add(int(match.group(1)))
    return found


def wanted(paths: list[str]) -> bool:
    """Whether a run over ``paths`` goes through the learner worker (``AIOS_REMOTE=0/1`` decides when set)."""
    forced = os.environ.get("AIOS_REMOTE")
    if forced in ("0", "1"):
        return forced == "1"
    lessons = lessons_in(paths)
    return bool(lessons) and not lessons & DIRECT_LESSONS


def child_env(paths: list[str], folder: Path) -> dict[str, str]:
    """What a child pytest needs in its environment to run ``paths`` through the worker."""
    lessons = lessons_in(paths)
    block = bool(lessons) and not lessons & LESSONS_WITH_HF_MODELS
    return {"AIOS_REMOTE": "1", "AIOS_REMOTE_LOG": str(Path(folder) / "worker.log"),
            "AIOS_REMOTE_BLOCK_HF": "1" if block else "0", "AIOS_REMOTE_PRELOAD": ",".join(preload_for(lessons))}
