"""PyTorch: a map-style Dataset over data in shared memory, for ``DataLoader(num_workers=N)``.

``pip install 'nocopy[torch]'``. A Dataset holding its data as Python objects
(a list of samples, a DataFrame) is copied into every DataLoader worker: under
fork because merely reading an object writes its reference count, so
copy-on-write duplicates its page (pytorch/pytorch#13246); under spawn and
forkserver because the Dataset is pickled to each worker. `SharedDataset`
puts the data in shared memory once; every worker maps the same pages.

Examples
--------
>>> import torch, nocopy.torch
>>> ds = nocopy.torch.SharedDataset({"x": torch.arange(6.0).reshape(3, 2),
...                                  "y": torch.tensor([0, 1, 0])})
>>> len(ds), ds[1]
(3, {'x': tensor([2., 3.]), 'y': tensor(1)})
>>> ds.close()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ._shared import Shared, share

try:
    from torch.utils.data import Dataset
except ImportError as exc:  # pragma: no cover - torch is an extra
    raise ImportError("nocopy.torch needs PyTorch. Fix: pip install 'nocopy[torch]'") from exc

__all__ = ["SharedDataset"]


class _FrameRows:
    """Row *i* of a pandas or Polars DataFrame as ``{column: value}``, each column read once per process."""

    def __init__(self, frame: Any) -> None:
        # Columns that index by position without building a row: pandas' NumPy-backed columns
        # as their arrays (views), its others as pandas' arrays; Polars' as `_polars_column`s.
        if type(frame).__module__.partition(".")[0] == "polars":
            self.columns = {col.name: _polars_column(col) for col in frame.get_columns()}
        else:
            self.columns = {
                name: col.to_numpy() if type(col.dtype).__module__ == "numpy" else col.array
                for name, col in frame.items()
            }
        self.length = len(frame)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[Any, Any]:
        return {name: values[index] for name, values in self.columns.items()}


def _polars_column(series: Any) -> Any:
    """A Polars Series, indexable by position: a NumPy view when it is numbers without nulls
    (zero-copy, and ``[i]`` is fast), else the Series (``[i]`` is its Python value, None for null)."""
    if series.dtype.is_numeric() and series.null_count() == 0:
        try:
            return series.to_numpy(allow_copy=False)
        except Exception:  # chunked, or otherwise not viewable as one array: index the Series
            return series
    return series


def _rows(data: Any) -> Any:
    """*data* (what get() gave) made indexable by sample: each leaf's ``[i]`` is sample i's part."""
    if isinstance(data, tuple | list):
        return type(data)(_rows(v) for v in data)
    if isinstance(data, dict):
        return {k: _rows(v) for k, v in data.items()}
    kind = (type(data).__module__.partition(".")[0], type(data).__name__)
    if kind in {("pandas", "DataFrame"), ("polars", "DataFrame")}:
        return _FrameRows(data)
    if kind == ("pandas", "Series"):
        return data.to_numpy() if type(data.dtype).__module__ == "numpy" else data.array
    if kind == ("polars", "Series"):
        return _polars_column(data)
    return data


def _sampler(rows: Any) -> Callable[[int], Any]:
    """A function of *i* giving sample *i* of *rows* (what `_rows` made), built once per process.

    DataLoader calls it for every sample: the structure is walked here, once,
    not per sample (each leaf's own ``__getitem__``, bound; a pair as a pair).
    """
    if isinstance(rows, tuple | list):
        parts = [_sampler(v) for v in rows]
        if isinstance(rows, tuple) and len(parts) == 2:
            first, second = parts
            return lambda i: (first(i), second(i))
        if isinstance(rows, tuple):  # share() gives plain tuples and lists (it refuses namedtuples)
            return lambda i: tuple([part(i) for part in parts])
        return lambda i: [part(i) for part in parts]
    if isinstance(rows, dict):
        items = [(k, _sampler(v)) for k, v in rows.items()]
        return lambda i: {k: part(i) for k, part in items}
    getter: Callable[[int], Any] = rows.__getitem__
    return getter


def _lengths(rows: Any, path: str = "") -> dict[str, int]:
    """The number of samples of each leaf, by where it is in the data."""
    if isinstance(rows, tuple | list):
        return {k: n for i, v in enumerate(rows) for k, n in _lengths(v, f"{path}[{i}]").items()}
    if isinstance(rows, dict):
        return {k: n for key, v in rows.items() for k, n in _lengths(v, f"{path}[{key!r}]").items()}
    try:
        return {path or "the data": len(rows)}
    except TypeError:
        raise TypeError(
            f"SharedDataset: {path or 'the data'} ({type(rows).__name__}) has no samples to index. "
            "Fix: pass tensors, arrays, DataFrames, Series or sequences of samples (or a tuple, "
            "list or dict of them, all of one length)."
        ) from None


class SharedDataset(Dataset[Any]):
    """A map-style torch Dataset whose data lives in shared memory, read zero-copy by every worker.

    *data* is a tensor, a NumPy array, a pandas or Polars DataFrame or Series, a sequence
    of samples that `nocopy.share` stores (a list of ``str``...), or a tuple,
    list or dict of those, all of one length; or a `nocopy.Shared` of one.
    ``dataset[i]`` is sample *i* in the same structure: ``x[i]`` of a tensor or
    array, ``{column: value}`` of a DataFrame's row *i* (a null is None or pandas' NA), ``(x[i], y[i])`` of a
    tuple ``(x, y)``, passed to *transform* when given (which runs in the
    worker, on a copy-on-write view: it may modify it).

    The data is shared once, here (unless it is a `Shared` already); the
    Dataset pickles to a small handle, so DataLoader workers under fork,
    spawn and forkserver all map the same pages, and a worker's writes stay
    its own. The segment lives until `close` (or until the Dataset is
    garbage collected): keep the Dataset while any DataLoader over it runs.

    Examples
    --------
    >>> import numpy as np, torch, nocopy.torch
    >>> ds = nocopy.torch.SharedDataset((np.arange(4.0), torch.arange(4)))
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=2)
    >>> [y.tolist() for x, y in loader]
    [[0, 1], [2, 3]]
    >>> ds.close()
    """

    def __init__(
        self,
        data: Any,
        *,
        transform: Callable[[Any], Any] | None = None,
        backend: Literal["memfd", "posix"] | None = None,
    ) -> None:
        self._owned = not isinstance(data, Shared)
        self._ref: Shared[Any] = share(data, backend=backend)
        self.transform = transform
        rows = _rows(self._ref.get(private=True))
        lengths = _lengths(rows)
        if len(set(lengths.values())) > 1:
            self._close_own()
            described = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(
                f"SharedDataset: the parts of the data differ in length ({described}). "
                "Fix: pass parts with one sample per index each."
            )
        self._len = next(iter(lengths.values()))
        self._pid = os.getpid()
        self._rows: Any = rows
        self._sample: Callable[[int], Any] | None = _sampler(rows)

    @property
    def shared(self) -> Shared[Any]:
        """The `nocopy.Shared` handle of the data."""
        return self._ref

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Any:
        sample = self._sample
        if sample is None or self._pid != os.getpid():
            sample = self._open()
        item = sample(index)
        return item if self.transform is None else self.transform(item)

    def _open(self) -> Callable[[int], Any]:
        # A new process (a DataLoader worker): its own copy-on-write view, once.
        self._rows = _rows(self._ref.get(private=True))
        self._sample = _sampler(self._rows)
        self._pid = os.getpid()
        return self._sample

    def __getstate__(self) -> Mapping[str, Any]:
        # The handle travels (a few hundred bytes), never the data or the views.
        return {"ref": self._ref, "transform": self.transform, "len": self._len}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._ref = state["ref"]
        self.transform = state["transform"]
        self._len = state["len"]
        self._owned = False
        self._rows = None
        self._sample = None
        self._pid = -1

    def _close_own(self) -> None:
        if self._owned:
            self._ref.close()

    def close(self) -> None:
        """Free the shared data if this Dataset shared it (views taken stay valid). Idempotent."""
        self._close_own()
        self._rows = None
        self._sample = None

    def __enter__(self) -> SharedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
