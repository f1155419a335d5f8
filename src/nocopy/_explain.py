"""nocopy.explain(): what share() would do with each column, field or leaf, without doing it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, overload

from ._codec import Note, explain_notes
from ._shared import Shared
from ._text import render_table

__all__ = ["Explanation", "explain"]

_STATUS_ORDER = ("zero-copy", "converted", "pickled", "unsupported")


class Explanation:
    """The per-column report of `explain`: a sequence of rows, printed as a table.

    Each row is a ``Note`` with ``path`` (where in the object: ``['price']``,
    ``.index``, ``['a'][0]``...), ``dtype``, ``status`` (``"zero-copy"``,
    ``"converted"`` once at share, ``"pickled"`` or ``"unsupported"``) and
    ``detail``. Index it by position or by path.

    Examples
    --------
    >>> import numpy as np, nocopy
    >>> report = nocopy.explain({"a": np.arange(3)})
    >>> report[0].status, report.zero_copy
    ('zero-copy', True)
    """

    def __init__(self, notes: list[Note]) -> None:
        self._notes = list(notes)

    @property
    def zero_copy(self) -> bool:
        """True if every part is shared without any conversion or pickling."""
        return all(n.status == "zero-copy" for n in self._notes)

    @property
    def supported(self) -> bool:
        """True if share() would succeed without ``allow_pickle=True``."""
        return all(n.status in ("zero-copy", "converted") for n in self._notes)

    def __iter__(self) -> Iterator[Note]:
        return iter(self._notes)

    def __len__(self) -> int:
        return len(self._notes)

    @overload
    def __getitem__(self, key: int) -> Note: ...
    @overload
    def __getitem__(self, key: str) -> Note: ...
    def __getitem__(self, key: int | str) -> Note:
        if isinstance(key, str):
            for note in self._notes:
                if note.path == key:
                    return note
            raise KeyError(key)
        return self._notes[key]

    def summary(self) -> dict[str, int]:
        """Number of rows per status, e.g. ``{"zero-copy": 5, "converted": 1}``."""
        counts = Counter(note.status for note in self._notes)
        return {status: counts[status] for status in _STATUS_ORDER if counts[status]}

    def __str__(self) -> str:
        rows = [(n.path, n.dtype, n.status) for n in self._notes]
        lines = render_table(("path", "dtype", "status"), rows, rule=True, max_width=[40, 40, 12]).splitlines()
        # The detail runs on uncut after the table (a rule as wide as the longest one would fill the screen).
        width = len(lines[1])
        details = ["detail", "------", *(n.detail for n in self._notes)]
        table = "\n".join(f"{line.ljust(width)}  {detail}".rstrip() for line, detail in zip(lines, details, strict=True))
        counts = ", ".join(f"{k}: {v}" for k, v in self.summary().items())
        parts = f"{len(rows)} part" + ("" if len(rows) == 1 else "s")
        return f"{table}\n({parts}; {counts or 'nothing to share'})"

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(
            f"<tr><td><code>{escape(n.path)}</code></td><td>{escape(n.dtype)}</td>"
            f"<td>{escape(n.status)}</td><td>{escape(n.detail)}</td></tr>"
            for n in self._notes
        )
        return (
            "<table><thead><tr><th>path</th><th>dtype</th><th>status</th><th>detail</th>"
            f"</tr></thead><tbody>{cells}</tbody></table>"
        )


def explain(obj: Any, *, allow_pickle: bool = False) -> Explanation:
    """Report, per column/field, how `nocopy.share` would store *obj*.

    Nothing is copied and no segment is made. Each part is ``zero-copy``
    (get() returns a view of the shared pages), ``converted`` (changed once at
    share, e.g. an object column of str stored as Arrow large_string),
    ``pickled`` (only with ``allow_pickle=True``) or ``unsupported`` (share()
    would raise UnsupportedTypeError; the detail says why).

    Examples
    --------
    >>> import numpy as np, pandas as pd, nocopy
    >>> s = pd.Series(["a", "b"], dtype=object)
    >>> report = nocopy.explain(pd.DataFrame({"x": [1.0, 2.0], "s": s}))
    >>> report.summary()
    {'zero-copy': 3, 'converted': 1}
    >>> report["['s']"].status, report["['x']"].status
    ('converted', 'zero-copy')

    ``print(report)`` shows every part as a table: path, dtype, status and
    why (here: the object column of str is stored once as Arrow
    large_string, and ``get()`` returns it as pandas' ``str`` dtype).
    """
    if isinstance(obj, Shared):  # share() returns it as it is
        return Explanation([
            Note("<root>", f"Shared ({obj.kind})", "zero-copy",
                 "already in shared memory: share() returns the handle as it is")
        ])
    return Explanation(explain_notes(obj, allow_pickle=allow_pickle))
