"""The ``nocopy://`` URI of a segment: its one format and its one (strict) parser.

A URI comes from anywhere (a file, a message, an attacker): every field is
checked against a closed pattern before anything is opened, and what it says
about writability is only a request (the segment itself decides, see the stores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..errors import InvalidURIError
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
# Each field's closed pattern, and what it must be (said to whoever mistyped it).
_QUERY_RE = {
    "pid": (re.compile(r"^[0-9]{1,10}$"), "the owner's process id (digits)"),
    "fd": (re.compile(r"^(-1|[0-9]{1,10})$"), "a descriptor number (digits, or -1)"),
    "sock": (re.compile(r"^(nocopy-fds-[0-9]{1,10}-[0-9a-f]{32})?$"), "empty or nocopy-fds-<pid>-<32 hex digits>"),
    "token": (re.compile(r"^[0-9a-f]{32}$"), "32 lowercase hex digits"),
    "size": (re.compile(r"^[0-9]{1,19}$"), "a byte count (digits)"),
    "nbytes": (re.compile(r"^[0-9]{1,19}$"), "a byte count (digits)"),
    "kind": (re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"), "a type name (a Python identifier, up to 64 characters)"),
    "w": (re.compile(r"^[01]$"), "0 or 1"),
    "p": (re.compile(r"^[01]$"), "0 or 1"),
}
_STORES = ("memfd", "posix")
_SCHEME = "nocopy://"


def _bad_uri(uri: object, why: str) -> InvalidURIError:
    return InvalidURIError(
        f"malformed nocopy URI {str(uri)[:120]!r}: {why}. Fix: pass the exact Shared.uri string "
        "of a live segment (nocopy://<memfd|posix>/<name>?pid=...&token=...)."
    )


def _why_malformed(uri: str) -> str:
    """What makes *uri* miss the URI's form, said as precisely as can be."""
    if uri != uri.strip():
        return "it has spaces or a line break around it"
    if not uri.startswith(_SCHEME):
        return f"it does not start with {_SCHEME}"
    store, _, rest = uri[len(_SCHEME):].partition("/")
    if store not in _STORES:
        return f"the store {store[:20]!r} is neither {' nor '.join(_STORES)}"
    name, question, _ = rest.partition("?")
    if not NAME_RE.fullmatch(name):
        return f"{name[:60]!r} is not a nocopy segment name (nocopy-<pid>-<start>-<32 hex digits>)"
    if not question:
        return "it has no query (?pid=...&token=...): it was cut short"
    return "its query holds a character a nocopy URI never has, or is too long"


def _query(uri: str, query: str) -> dict[str, str]:
    fields = ", ".join(_QUERY_RE)
    if query.count("&") >= len(_QUERY_RE):
        raise _bad_uri(uri, f"it has {query.count('&') + 1} fields where a nocopy URI has exactly {fields}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, max_num_fields=len(_QUERY_RE))
    except ValueError as exc:
        raise _bad_uri(uri, f"bad query ({exc})") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        twice = sorted({k for k, _ in pairs if [p for p, _ in pairs].count(k) > 1})
        raise _bad_uri(uri, f"the field {', '.join(twice)} is given twice")
    missing, unknown = [k for k in _QUERY_RE if k not in params], sorted(set(params) - set(_QUERY_RE))
    if missing or unknown:
        said = [f"missing {', '.join(missing)}"] if missing else []
        said += [f"unknown {', '.join(repr(k[:20]) for k in unknown)}"] if unknown else []
        raise _bad_uri(uri, f"{'; '.join(said)} (a nocopy URI has exactly the fields {fields})")
    for key, (rx, what) in _QUERY_RE.items():
        if not rx.fullmatch(params[key]):
            raise _bad_uri(uri, f"{key}={params[key][:40]!r} is not {what}")
    return params


class _NotAStringURI(InvalidURIError, TypeError):
    """A URI that is not a str: a TypeError as Python raises for a wrong type, and still
    an InvalidURIError (a NocopyError), as every hostile URI gets."""


def parse_uri(uri: str) -> Described:
    """What *uri* describes; InvalidURIError naming the problem if it is malformed
    (also a TypeError if it is not a string)."""
    if not isinstance(uri, str):
        raise _NotAStringURI(
            f"a nocopy URI is a str, not {type(uri).__qualname__}. Fix: pass the Shared.uri string "
            "(or pass the Shared itself, which pickles)."
        )
    m = _URI_RE.fullmatch(uri)  # fullmatch: "$" alone accepts a trailing newline
    if m is None:
        raise _bad_uri(uri, _why_malformed(uri))
    store, name, query = m.groups()
    if not NAME_RE.fullmatch(name):
        raise _bad_uri(uri, f"{name!r} is not a nocopy segment name (nocopy-<pid>-<start>-<32 hex digits>)")
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
