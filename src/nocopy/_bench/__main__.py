"""``python -m nocopy._bench seed|scaling ...`` (the same as ``nocopy bench ...``)."""

import sys

from .cli import main

# Spawned workers import the parent's main module as __mp_main__: only the
# real entry point may run the benchmark.
if __name__ == "__main__":
    sys.exit(main())
