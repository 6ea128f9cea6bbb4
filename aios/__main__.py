"""``python -m aios``: run the command line (see :mod:`aios.cli`)."""

from aios.cli import main

raise SystemExit(main())
