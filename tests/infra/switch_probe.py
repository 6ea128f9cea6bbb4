"""Not collected on its own: test_switch.py runs it in a child pytest.

It checks that ``import aios`` resolves to ``$EXPECT_AIOS`` in the test process and
in a subprocess started from the repository root (where the learner's ``aios/``
would shadow any other tree if the switch did not win).
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_aios_comes_from_the_selected_tree():
    import aios

    expected = Path(os.environ["EXPECT_AIOS"]).resolve() / "__init__.py"
    assert Path(aios.__file__).resolve() == expected


def test_subprocess_imports_the_selected_tree():
    expected = Path(os.environ["EXPECT_AIOS"]).resolve() / "__init__.py"
    for cmd in ([sys.executable, "-c", "import aios; print(aios.__file__)"],
                [sys.executable, "-c", "import aios.probe_sub as m; print(m.__file__)"]):
        if "probe_sub" in cmd[-1] and not (expected.parent / "probe_sub.py").exists():
            continue
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        assert Path(out).resolve().is_relative_to(expected.parent), (cmd, out)
