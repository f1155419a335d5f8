"""The argument/result walk: each leaf replaced, unchanged containers kept as they are (identity)."""

from __future__ import annotations

import functools
from typing import Any

from nocopy._pool import _walk


class Leaf:
    pass


def _mark(x: Any) -> Any:
    return ("marked", x) if type(x) is Leaf else x


def test_walk_keeps_unchanged_containers_and_rebuilds_changed_ones_in_order() -> None:
    a = Leaf()
    plain = (1, "x", [2.0, None, {"k": b"v"}], {"d": (3,)})
    assert _walk.walk(plain, _mark) is plain
    assert _walk.walk(plain[2], _mark) is plain[2]

    value = (1, [2, a, 3], {"p": 4, "q": a, "r": (5,)}, a)
    out = _walk.walk(value, _mark)
    assert out == (1, [2, ("marked", a), 3], {"p": 4, "q": ("marked", a), "r": (5,)}, ("marked", a))
    assert type(out) is tuple and type(out[1]) is list and list(out[2]) == ["p", "q", "r"]
    assert out[2]["r"] is value[2]["r"]  # an unchanged part is not copied
    assert value == (1, [2, a, 3], {"p": 4, "q": a, "r": (5,)}, a)  # the input is left alone


def test_walk_stops_at_max_depth_and_goes_into_partials() -> None:
    a = Leaf()
    deep: Any = a
    for _ in range(_walk.MAX_DEPTH + 1):
        deep = [deep]
    assert _walk.walk(deep, _mark) is deep  # a container below MAX_DEPTH travels as it is
    assert _walk.walk(deep[0], _mark) == [[[[("marked", a)]]]]
    part = functools.partial(print, a, sep=a)
    out = _walk.walk(part, _mark)
    assert out.args == (("marked", a),) and out.keywords == {"sep": ("marked", a)}



def test_walk_calls_no_leaf_for_atomics_and_callables() -> None:
    # A task's function, ex.map's partial(_process_chunk, f) and plain items:
    # no leaf can change them, so the per-task walk calls none for them.
    seen: list[Any] = []

    def leaf(x: Any) -> Any:
        seen.append(x)
        return x

    value = (1, "s", print, functools.partial(len), [Leaf, _mark, str.upper], {"f": sum, "n": None})
    assert _walk.walk(value, leaf) is value
    assert _walk.walk(value[3], leaf) is value[3]
    assert seen == []
    leaf_obj = Leaf()
    assert _walk.walk((print, leaf_obj), leaf) == (print, leaf_obj) and seen == [leaf_obj]


def _call(fn: Any, *args: Any) -> Any:
    from multiprocessing.reduction import ForkingPickler

    from nocopy._pool import _task
    from nocopy._pool._cache import ShareCache

    call = _task.prepare(fn, args, {}, cache=ShareCache(), threshold=1 << 20, task_id=1, tag="0" * 16)
    return ForkingPickler.loads(ForkingPickler.dumps(call))()


def test_a_plain_result_comes_back_as_it_is_and_anything_else_in_a_reply() -> None:
    import pickle

    from nocopy._pool._results import Reply

    for plain in (5, "s", None, [1, 2.0, b"x"], (3,), [0] * 64):
        assert _call(functools.partial(lambda x: x, plain)) == plain
    for other in ([0] * 65, {"a": 1}, [[1]], (Leaf,)):
        reply = _call(functools.partial(lambda x: x, other))
        assert type(reply) is Reply and pickle.loads(reply.data) == other
