"""The command line's names for :mod:`nocopy._text` (kept while ``_ls``, ``_gc`` and ``_doctor`` import them).

New code imports ``format_bytes``, ``format_age`` and ``render_table`` from
``nocopy._text`` directly; this module goes once nothing imports it.
"""

from __future__ import annotations

from .._text import format_age as age
from .._text import format_bytes as size
from .._text import render_table as table

__all__ = ["age", "size", "table"]
