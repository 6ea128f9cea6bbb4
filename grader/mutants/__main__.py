"""``python -m grader.mutants`` is ``python -m grader mutants``."""

import sys

from grader.mutants.run import main

sys.exit(main())
