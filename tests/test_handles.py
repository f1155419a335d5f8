"""Handles as a user meets them: what their repr says, when two are equal, how a mistyped URI fails.

* One repr for `nocopy.Shared` and ``nocopy.ray.Ref``: kind, dtype and shape (rows x columns of
  a frame, length of a sequence), size, and the segment or object it names.
* Equality and hash follow the segment: the owner's handle, its pickled copies and
  ``attach(uri)`` are equal; other segments, other types and another ``p=`` permission are not.
* ``backend=`` is a ``Literal`` of the stores (mypy refuses ``backend="nope"``).
* A string that is not a URI is `InvalidURIError`, a ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy.errors import InvalidURIError, NocopyError, SegmentCorruptError

ROOT = Path(__file__).resolve().parent.parent


# --- the repr --------------------------------------------------------------------------------


def _about(ref: Any) -> str:
    """The repr without the size and the segment: ``<nocopy.Shared ndarray float64 (3,)``."""
    return re.sub(r" [0-9.]+ (B|KiB|MiB|GiB) at .*", "", repr(ref))


def test_the_repr_says_kind_dtype_shape_size_and_segment() -> None:
    with nocopy.share(np.zeros((1000, 1000))) as ref:
        assert repr(ref) == (
            f"<nocopy.Shared ndarray float64 (1000, 1000) 7.6 MiB at {ref.backend}:{ref.name}>"
        )
    assert repr(ref).endswith(" closed>")


@pytest.mark.parametrize(("make", "said"), [
    (lambda: np.arange(3, dtype="i4"), "ndarray int32 (3,)"),
    (lambda: np.rec.fromarrays([np.arange(2), np.arange(2.0)], names="a,b"), "recarray record[2 fields] (2,)"),
    (lambda: ["a", "b", None], "list len 3"),
    (lambda: {"x": np.arange(2)}, "dict 1 key"),
], ids=["array", "records", "list", "dict"])
def test_the_repr_of_each_kind(make: Any, said: str) -> None:
    with nocopy.share(make()) as ref:
        assert _about(ref) == f"<nocopy.Shared {said}"


def test_frames_are_rows_x_columns() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": np.arange(1000), "b": 1.0, "c": "x"})
    with nocopy.share(frame) as ref, nocopy.share(frame["b"]) as col:
        assert _about(ref) == "<nocopy.Shared DataFrame 1000x3"
        assert _about(col) == "<nocopy.Shared Series float64 (1000,)"
    pa = pytest.importorskip("pyarrow")
    with nocopy.share(pa.table({"a": [1, 2]})) as table, nocopy.share(pa.array([1, 2])) as arr:
        assert _about(table) == "<nocopy.Shared Table 2x1"
        assert _about(arr) == "<nocopy.Shared Int64Array int64 len 2"


def test_outputs_say_writable_and_the_shape_travels_with_the_handle() -> None:
    with nocopy.zeros((4, 3), "i4") as out:
        assert _about(out) == "<nocopy.Shared ndarray int32 (4, 3)"
        assert repr(out).endswith(" writable>")
        copy = pickle.loads(pickle.dumps(out))  # what a worker receives
        assert repr(copy) == repr(out)


def test_an_attached_handle_learns_the_shape_at_its_first_get() -> None:
    with nocopy.share(np.zeros((2, 5))) as ref:
        attached = nocopy.attach(ref.uri)  # the URI does not carry the shape
        assert _about(attached) == "<nocopy.Shared ndarray"
        attached.get()
        assert repr(attached) == repr(ref)


def test_the_repr_is_short_and_never_fails() -> None:
    from nocopy._kinds import describe

    class Odd:
        shape = (1, 2)

        @property
        def dtype(self) -> Any:
            raise RuntimeError("no dtype here")

    assert describe(Odd()) == ""
    assert len(describe(np.zeros((1,) * 32))) <= 48


def test_ray_refs_share_the_formatter_and_compare_by_object() -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    import ray

    import nocopy.ray

    object_ref = ray.ObjectRef.from_random()
    ref = nocopy.ray.Ref(object_ref, "ndarray", 8000, 8128, False, "float64 (1000,)")
    assert repr(ref) == f"<nocopy.ray.Ref ndarray float64 (1000,) 7.8 KiB at ray:{object_ref.hex()}>"
    same = nocopy.ray.Ref(ray.ObjectRef(object_ref.binary()), "ndarray", 8000, 8128, False)
    assert same == ref and hash(same) == hash(ref)
    assert nocopy.ray.Ref(object_ref, "ndarray", 8000, 8128, True) != ref  # another permission
    assert nocopy.ray.Ref(ray.ObjectRef.from_random(), "ndarray", 8000, 8128, False) != ref


# --- equality ----------------------------------------------------------------------------------


def test_handles_to_one_segment_are_equal_and_hash_alike() -> None:
    with nocopy.share(np.arange(10)) as ref, nocopy.share(np.arange(10)) as other:
        copies = [ref, pickle.loads(pickle.dumps(ref)), nocopy.attach(ref.uri)]
        assert all(c == ref for c in copies) and len({hash(c) for c in copies}) == 1
        assert len({*copies, other}) == 2
        assert other != ref  # equal data, another segment
        assert ref != ref.uri and ref != 42  # another type


def test_the_permission_to_unpickle_is_part_of_a_handles_identity() -> None:
    with nocopy.share({"a": np.arange(3), "f": [object]}, allow_pickle=True) as ref:
        assert "p=1" in ref.uri
        without = nocopy.attach(ref.uri.replace("p=1", "p=0"))
        assert without != ref and nocopy.attach(ref.uri) == ref


# --- backend= is typed ---------------------------------------------------------------------------


def _literal_values(annotation: Any) -> set[Any]:
    """The values of every Literal in *annotation* (``Literal["a", "b"] | None`` -> {"a", "b"})."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return set().union(*(_literal_values(a) for a in typing.get_args(annotation)))


def test_the_backend_literals_are_the_backends() -> None:
    """Written out in each signature (the API reference shows them), and kept equal to the registries."""
    from nocopy._map import _BACKENDS, _LAZY_BACKENDS
    from nocopy._store import BACKENDS

    for fn in (nocopy.share, nocopy.empty, nocopy.zeros):
        assert _literal_values(typing.get_type_hints(fn)["backend"]) == set(BACKENDS), fn
    assert _literal_values(typing.get_type_hints(nocopy.Shared.backend.fget)["return"]) == set(BACKENDS)
    assert _literal_values(typing.get_type_hints(nocopy.parallel_map)["backend"]) == {*_BACKENDS, *_LAZY_BACKENDS}


@pytest.mark.slow
def test_mypy_refuses_an_unknown_backend(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    (tmp_path / "use.py").write_text(
        "import numpy as np\nimport nocopy\n\n"
        "nocopy.share(np.zeros(3), backend='posix')\n"
        "nocopy.share(np.zeros(3), backend='nope')\n"
        "nocopy.parallel_map(sum, np.zeros(3), backend='procs')\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
         "--follow-imports=silent", str(tmp_path / "use.py")],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
        env={"MYPYPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["5", "6"], out.stdout + out.stderr
    assert all("arg-type" in line for line in errors), out.stdout


# --- a mistyped URI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uri() -> Any:
    ref = nocopy.share(np.arange(4))
    yield ref.uri
    ref.close()


MISTAKES = {
    "the store": (lambda u: u.replace("://memfd/", "://shm/").replace("://posix/", "://shm/"),
                  "the store 'shm' is neither memfd nor posix"),
    "the scheme": (lambda u: u.replace("nocopy://", "nocopy:/"), "it does not start with nocopy://"),
    "spaces": (lambda u: u + "\n", "it has spaces or a line break around it"),
    "cut short": (lambda u: u.split("?")[0], "it has no query"),
    "the name": (lambda u: u.replace("nocopy-", "nocopy-x", 1), "is not a nocopy segment name"),
    "a misspelt field": (lambda u: u.replace("token=", "tokn="), "missing token; unknown 'tokn'"),
    "a field twice": (lambda u: u.replace("&w=0", "&pid=1"), "the field pid is given twice"),
    "a value": (lambda u: re.sub(r"token=[0-9a-f]+", "token=XYZ", u), "token='XYZ' is not 32 lowercase hex digits"),
    "too many fields": (lambda u: u + "&x=1", "it has 10 fields where a nocopy URI has exactly pid, fd"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistyped_uri_is_a_value_error_naming_the_mistake(uri: str, mistake: str) -> None:
    mutate, said = MISTAKES[mistake]
    with pytest.raises(InvalidURIError) as info:
        nocopy.attach(mutate(uri))
    assert isinstance(info.value, ValueError) and isinstance(info.value, NocopyError)
    assert not isinstance(info.value, SegmentCorruptError)  # nothing is corrupt: the string is wrong
    assert said in str(info.value)
    assert "Fix: pass the exact Shared.uri string" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is InvalidURIError and str(again) == str(info.value)
