"""Time zones, units, and pandas' scalars (Timestamp, Timedelta, NA, NaT)."""

from __future__ import annotations

import datetime as _dt
import functools
import zoneinfo
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _compat

if TYPE_CHECKING:
    from .._registry import DecodeFn, Decoder, Encoder

__all__ = ["DECODERS", "TZ_KINDS", "UNITS", "encode_scalar", "tz_from_json", "tz_to_json"]

UNITS = ("s", "ms", "us", "ns")
TZ_KINDS = " (nocopy stores time zones by tz database name, e.g. 'Europe/Paris', or as fixed offsets)"


@functools.cache
def _tz_names() -> frozenset[str]:
    # A set, not a pattern: pandas resolves "dateutil/<name>" with
    # dateutil.tz.gettz, which opens any absolute path (a FIFO there hangs
    # get(), /proc/self/mem fails), so only tz database keys are accepted.
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def _tz_accepted(name: str) -> bool:
    return name.removeprefix("dateutil/") in _tz_names()


def tz_to_json(tz: Any) -> Any:
    """A JSON form of a tz that rebuilds an equal DatetimeTZDtype, or None if unknown.

    None too for a tz readers would refuse (e.g. a dateutil tz read from a
    file path): share() fails at once rather than every get().
    """
    if isinstance(tz, _dt.timezone):
        offset = tz.utcoffset(None)
        return {"offset": int(offset.total_seconds())}
    name = _compat.tz_name(tz)
    return name if isinstance(name, str) and _tz_accepted(name) else None


def tz_from_json(dec: Decoder, spec: Any) -> Any:
    if isinstance(spec, str) and _tz_accepted(spec):
        return spec
    if isinstance(spec, dict) and type(spec.get("offset")) is int and abs(spec["offset"]) < 86400:
        if spec["offset"] == 0:
            return _dt.UTC
        return _dt.timezone(_dt.timedelta(seconds=spec["offset"]))
    raise dec.corrupt(f"bad time zone {spec!r:.60} (not a name from the tz database)")


def encode_scalar(enc: Encoder, obj: Any, path: str) -> Any:
    """The node of a pandas scalar, or None if *obj* is not one."""
    pd = _compat.pandas()
    if obj is pd.NA:
        return {"k": "pd.na"}
    if obj is pd.NaT:
        return {"k": "pd.nat"}
    if isinstance(obj, pd.Timestamp):
        node: dict[str, Any] = {"k": "pd.ts", "v": int(obj.asm8.view("i8")), "unit": obj.unit}
        if obj.tz is not None:
            tz = tz_to_json(obj.tz)
            if tz is None:
                return enc.unsupported(obj, path, f"Timestamp with time zone {obj.tz!r}{TZ_KINDS}")
            node["tz"] = tz
        return node
    if isinstance(obj, pd.Timedelta):
        return {"k": "pd.tdelta", "v": int(obj.asm8.view("i8")), "unit": obj.unit}
    return None


def _value_unit(dec: Decoder, node: dict[str, Any], what: str) -> tuple[int, Any]:
    value, unit = node.get("v"), node.get("unit")
    if type(value) is not int or unit not in UNITS:
        raise dec.corrupt(f"bad {what}")
    return value, unit


def _dec_timestamp(dec: Decoder, node: dict[str, Any]) -> Any:
    value, unit = _value_unit(dec, node, "timestamp")
    ts = _compat.pandas().Timestamp(np.datetime64(value, unit))
    if "tz" in node:
        ts = ts.tz_localize("UTC").tz_convert(tz_from_json(dec, node["tz"]))
    return ts


def _dec_timedelta(dec: Decoder, node: dict[str, Any]) -> Any:
    value, unit = _value_unit(dec, node, "timestamp")
    return _compat.pandas().Timedelta(np.timedelta64(value, unit))


def _dec_na(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compat.pandas().NA


def _dec_nat(dec: Decoder, node: dict[str, Any]) -> Any:
    return _compat.pandas().NaT


DECODERS: dict[str, DecodeFn] = {
    "pd.na": _dec_na,
    "pd.nat": _dec_nat,
    "pd.ts": _dec_timestamp,
    "pd.tdelta": _dec_timedelta,
}
