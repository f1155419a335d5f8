"""Text for people: the one byte-size formatter, the age formatter and the one table renderer.

A leaf module (it imports nothing from nocopy), so every layer can use it:
error messages, the command line, ``explain()`` and the benchmark.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["format_age", "format_bytes", "format_handle", "render_table", "with_article"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float | None) -> str:
    """*n* bytes in binary units: ``512 B``, ``1 MiB``, ``4.4 MiB``, ``2.5 TiB``; ``-`` for None.

    Whole numbers of a unit print without a decimal (sizes chosen as powers of
    two read as they were chosen: ``256 MiB``), others with one. Negative
    amounts (a difference of two sizes) keep their sign.

    Examples
    --------
    >>> format_bytes(1 << 20), format_bytes(4_400_000), format_bytes(None)
    ('1 MiB', '4.2 MiB', '-')
    """
    if n is None:
        return "-"
    x = float(n)
    unit = _UNITS[0]
    for unit in _UNITS:
        # Round first: 1023.96 KiB must print as "1 MiB", not "1024.0 KiB".
        if abs(round(x, 1)) < 1024 or unit == _UNITS[-1]:
            break
        x /= 1024
    return f"{x:.0f} {unit}" if x == int(x) else f"{x:.1f} {unit}"


def format_handle(cls: str, kind: str, about: str, nbytes: int, where: str, *states: str) -> str:
    """The repr of every nocopy handle (`nocopy.Shared`, ``nocopy.ray.Ref``): one short line.

    *kind* is the type name, *about* its shape and dtype (``_kinds.describe``,
    empty when not known yet), *where* the segment or object it names,
    *states* words such as ``closed``.

    Examples
    --------
    >>> format_handle("nocopy.Shared", "ndarray", "float64 (1000, 1000)", 8_000_000, "memfd:nocopy-1")
    '<nocopy.Shared ndarray float64 (1000, 1000) 7.6 MiB at memfd:nocopy-1>'
    """
    words = [cls, kind, about, format_bytes(nbytes), f"at {where}", *states]
    return "<" + " ".join(w for w in words if w) + ">"


# Words spelt with a vowel but said with a consonant ("a uint8"), and the
# reverse ("an ndarray": en-dee-array).
_SAID_WITH_CONSONANT = ("uint", "uni", "use", "one")
_SAID_WITH_VOWEL = ("nd",)


def with_article(word: str) -> str:
    """*word* after "a" or "an" as it is said: ``an ndarray``, ``a DataFrame``, ``an Index``.

    Examples
    --------
    >>> with_article("ndarray"), with_article("DataFrame"), with_article("int"), with_article("uint8")
    ('an ndarray', 'a DataFrame', 'an int', 'a uint8')
    """
    low = word.lower()
    vowel = low[:1] in tuple("aeiou") and not low.startswith(_SAID_WITH_CONSONANT)
    return f"{'an' if vowel or low.startswith(_SAID_WITH_VOWEL) else 'a'} {word}"


def format_age(seconds: float) -> str:
    """``42s``, ``3m12s``, ``5h03m``, ``2d04h``: two units at most.

    Examples
    --------
    >>> format_age(42), format_age(192), format_age(18_180), format_age(187_200)
    ('42s', '3m12s', '5h03m', '2d04h')
    """
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    rule: bool = False,
    max_width: Sequence[int | None] = (),
) -> str:
    """Columns padded to their widest cell, two spaces apart, trailing blanks stripped.

    *right*: indexes of the columns aligned right (numbers). *rule*: a line of
    dashes under the header. *max_width*: per-column caps (None: no cap);
    a longer cell is cut and ends with ``…``.

    Examples
    --------
    >>> print(render_table(["name", "size"], [["a", "1 MiB"], ["bb", "12 KiB"]], right={1}))
    name    size
    a      1 MiB
    bb    12 KiB
    """
    caps = list(max_width) + [None] * (len(header) - len(max_width))
    table = [[_clip(str(cell), cap) for cell, cap in zip(row, caps, strict=True)] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [_line(row, widths, right) for row in table]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _line(cells: Sequence[str], widths: Sequence[int], right: Collection[int]) -> str:
    padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
    return "  ".join(padded).rstrip()


def _clip(text: str, cap: int | None) -> str:
    return text if cap is None or len(text) <= cap else text[: cap - 1] + "…"
