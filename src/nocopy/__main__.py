"""``python -m nocopy ...``: the same command line as the ``nocopy`` script."""

from ._cli import main

raise SystemExit(main())
