"""The ``nocopy://`` URI of a segment: its one format and its one (strict) parser.

A URI comes from anywhere (a file, a message, an attacker): every field is
checked against a closed pattern before anything is opened, and what it says
about writability is only a request (the segment itself decides, see the stores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..errors import SegmentCorruptError
from ._names import NAME_RE
from ._segment import Locator

__all__ = ["Described", "format_uri", "parse_uri"]

# The smallest segment: a header.
_MIN_SIZE = 48


@dataclass(frozen=True)
class Described:
    """What a URI says about a segment."""

    locator: Locator
    token: bytes
    size: int
    nbytes: int
    kind: str
    writable: bool
    pickled: bool


def format_uri(d: Described) -> str:
    """The URI of *d*; `parse_uri` gives *d* back."""
    loc = d.locator
    query = (
        f"pid={loc.pid}&fd={loc.fd}&sock={loc.sock}&token={d.token.hex()}"
        f"&size={d.size}&nbytes={d.nbytes}&kind={d.kind}"
        f"&w={int(d.writable)}&p={int(d.pickled)}"
    )
    return f"nocopy://{loc.store}/{loc.name}?{query}"


_URI_RE = re.compile(r"^nocopy://(memfd|posix)/([A-Za-z0-9-]{1,100})\?([A-Za-z0-9=&_.-]{0,600})$")
_QUERY_RE = {
    "pid": re.compile(r"^[0-9]{1,10}$"),
    "fd": re.compile(r"^(-1|[0-9]{1,10})$"),
    "sock": re.compile(r"^(nocopy-fds-[0-9]{1,10}-[0-9a-f]{32})?$"),
    "token": re.compile(r"^[0-9a-f]{32}$"),
    "size": re.compile(r"^[0-9]{1,19}$"),
    "nbytes": re.compile(r"^[0-9]{1,19}$"),
    "kind": re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"),
    "w": re.compile(r"^[01]$"),
    "p": re.compile(r"^[01]$"),
}


def _bad_uri(uri: object, why: str) -> SegmentCorruptError:
    return SegmentCorruptError(
        f"malformed nocopy URI {str(uri)[:120]!r}: {why}. Fix: pass the exact Shared.uri string "
        "of a live segment (nocopy://<memfd|posix>/<name>?pid=...&token=...)."
    )


def _query(uri: str, query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=len(_QUERY_RE))
    except ValueError as exc:
        raise _bad_uri(uri, f"bad query ({exc})") from None
    params = dict(pairs)
    if len(params) != len(pairs) or set(params) != set(_QUERY_RE):
        raise _bad_uri(uri, f"expected exactly the fields {', '.join(_QUERY_RE)}")
    for key, rx in _QUERY_RE.items():
        if not rx.fullmatch(params[key]):
            raise _bad_uri(uri, f"bad value for {key}")
    return params


def parse_uri(uri: str) -> Described:
    """What *uri* describes; SegmentCorruptError naming the problem if it is malformed."""
    if not isinstance(uri, str):
        raise _bad_uri(uri, f"expected str, got {type(uri).__name__}")
    m = _URI_RE.fullmatch(uri)  # fullmatch: "$" alone accepts a trailing newline
    if m is None:
        raise _bad_uri(uri, "it does not have the form nocopy://<store>/<name>?<query>")
    store, name, query = m.groups()
    if not NAME_RE.fullmatch(name):
        raise _bad_uri(uri, f"{name!r} is not a nocopy segment name")
    params = _query(uri, query)
    if store == "memfd" and int(params["fd"]) < 0:
        raise _bad_uri(uri, "a memfd segment needs its owner's fd")
    if int(params["size"]) < _MIN_SIZE:
        raise _bad_uri(uri, "size is smaller than a header")
    return Described(
        Locator(store, name, int(params["pid"]), int(params["fd"]), params["sock"]),
        token=bytes.fromhex(params["token"]), size=int(params["size"]), nbytes=int(params["nbytes"]),
        kind=params["kind"], writable=params["w"] == "1", pickled=params["p"] == "1",
    )
