"""nocopy: hand large NumPy, pandas, Arrow and Polars data to worker processes
through shared memory, zero-copy and safely.

Examples
--------
>>> import numpy as np, nocopy
>>> with nocopy.share(np.arange(10)) as ref:   # copied into shared memory once
...     int(ref.get().sum())                    # zero-copy view, in any process
45
"""

from . import errors
from ._codec import SharedSequence
from ._explain import explain
from ._inventory import cleanup, segments
from ._map import parallel_map
from ._pool import Pool, ProcessPoolExecutor
from ._shared import Shared, attach, empty, share, zeros
from ._version import __version__

__all__ = [
    "Pool",
    "ProcessPoolExecutor",
    "Shared",
    "SharedSequence",
    "__version__",
    "attach",
    "cleanup",
    "empty",
    "errors",
    "explain",
    "parallel_map",
    "segments",
    "share",
    "zeros",
]
