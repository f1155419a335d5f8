"""Functions as people write them: lambdas, closures and notebook functions reach the workers.

``pickle`` sends a function by reference (module + name), which the worker
looks up. That fails for a lambda and a closure (no name to look up), and for
a function defined in an interactive ``__main__`` (a notebook cell, ``python
-c``, a REPL): the worker's ``__main__`` is not the caller's, so the lookup
fails there -- under fork too, for a function defined after the workers
started. Those functions (and classes defined inside a function) are pickled
*by value* with cloudpickle instead; everything else is pickled exactly as the
standard library does, so its behaviour and speed are unchanged. The same
holds for results on their way back (a task may return a closure).

cloudpickle is a dependency but is imported only here, and only when a task
really holds such a function: importing it costs ~25 ms, more than the rest of
``import nocopy`` after numpy. A task is first pickled the stdlib's way; only
if that fails, or if ``__main__`` is interactive, is it pickled again with
`TaskPickler`, whose override sends those functions by value.

A function that cannot be sent even by value (it captures a lock, an open
file, a socket...) raises ``pickle.PicklingError`` naming the function, the
captured name and its type, and the fix.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .._text import with_article

__all__ = ["TaskPickler", "dumps", "interactive_main"]


def interactive_main() -> bool:
    """Whether ``__main__`` is a notebook, REPL or ``-c``: workers cannot import it by name or path."""
    main = sys.modules.get("__main__")
    if main is None:
        return False
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None) or "<"  # "<stdin>": no file to import either
    return not spec_name and path.startswith("<")


def _needs_value(obj: Any) -> bool:
    """Whether a function or class cannot be found by name in a worker (pickle would fail)."""
    qualname = getattr(obj, "__qualname__", "")
    module = getattr(obj, "__module__", None)
    if "<locals>" in qualname or "<lambda>" in qualname:
        return True
    if module == "__main__" and interactive_main():
        return True
    if module is None or not (isinstance(obj, types.FunctionType) or module == "__main__"):
        return False
    # A function whose name no longer leads to it (redefined, deleted, made by exec());
    # in __main__ also a class, or a function that never was one of its names (a notebook
    # cell run by a kernel, exec() with its own globals): the worker could not find it.
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is not obj


class TaskPickler(ForkingPickler):
    """The stdlib's ``ForkingPickler``, sending lambdas, closures and notebook functions by value."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and _needs_value(obj):
            return pickle.loads, (_by_value(obj),)
        return NotImplemented


def _by_value(obj: Any) -> bytes:
    import cloudpickle  # only now: see the module docstring

    try:
        return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise pickle.PicklingError(_cannot_send(obj, exc)) from exc


def _captured(fn: Any) -> dict[str, Any]:
    """What *fn* takes with it: closure variables and the globals its code names."""
    out: dict[str, Any] = {}
    code = getattr(fn, "__code__", None)
    if code is None:
        return out
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            out[f"closure variable {name!r}"] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    module_globals = getattr(fn, "__globals__", {})
    for name in code.co_names:
        if name in module_globals:
            value = module_globals[name]
            if not isinstance(value, types.ModuleType):
                out[f"global {name!r}"] = value
    return out


def _cannot_send(obj: Any, exc: BaseException) -> str:
    import cloudpickle

    what = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    culprit = ""
    for label, value in _captured(obj).items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            culprit = f" It captures {label}, {with_article(type(value).__qualname__)}, which cannot be pickled."
            break
    return (
        f"cannot send the function {what} to a worker process: pickling it by value failed "
        f"({type(exc).__name__}: {exc}).{culprit} Fix: create that object inside the function "
        "(each worker then makes its own), or pass what it needs as arguments; a lock, an open "
        "file or a connection cannot travel to another process."
    )


def dumps(obj: Any) -> bytes:
    """Pickle a task's payload: the stdlib's way, else with the by-value fallback for functions."""
    if not interactive_main():
        buf = io.BytesIO()
        try:
            ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
            return buf.getvalue()
        except Exception:  # pickled again below: its error is the one raised
            pass
    buf = io.BytesIO()
    TaskPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()
