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
from ._explain import Explanation, explain
from ._inventory import Segment, cleanup, segments
from ._map import parallel_map, shutdown_parallel_map_workers
from ._pool import Pool, ProcessPoolExecutor
from ._shared import Shared, attach, empty, share, zeros
from ._version import __version__

__all__ = [
    "Explanation",
    "Pool",
    "ProcessPoolExecutor",
    "Segment",
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
    "shutdown_parallel_map_workers",
    "zeros",
]
