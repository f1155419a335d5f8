"""Every error's "Fix:" names something that exists, and the fix it suggests works where it is given.

* Every string in src/ that holds a "Fix:" is read from the source (f-strings with their
  placeholders): each public name (``nocopy.share``, ``nocopy.ray.put``, ``Shared.uri``),
  keyword (``pass allow_pickle=True``, ``get(private=True)``), command (``nocopy gc``),
  extra (``pip install 'nocopy[ray]'``) and environment variable (``NOCOPY_SHM_DIR``) it
  names must exist.
* Every nocopy error that src/ makes gives a fix: each construction of a class of
  ``nocopy.errors`` has a "Fix:" in its message (literally, or in the local variable the
  message is built in), so the walk above covers every error class.
* The unsupported-data error suggests ``allow_pickle=True`` only where pickling would work,
  and, raised by ``parallel_map`` (which takes no ``allow_pickle``), the fix that works there.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import re
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nocopy
from nocopy.errors import UnsupportedTypeError

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "nocopy"


def _text(node: ast.AST) -> str | None:
    """A string literal's text; an f-string's with ``{}`` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def fix_texts() -> list[tuple[str, str]]:
    """(where, the text after "Fix:") of every string literal in src/ that gives a fix."""
    out: list[tuple[str, str]] = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = _text(node)
            if text and "Fix:" in text:
                where = f"{path.relative_to(SRC)}:{node.lineno}"  # type: ignore[attr-defined]
                # An f-string's constant parts are visited too: each text once.
                out.extend(p for p in ((where, part) for part in text.split("Fix:")[1:]) if p not in out)
    return out


def _public_parameters() -> set[str]:
    """Every parameter name of a public callable (and of the public classes' methods)."""
    names: set[str] = set()
    objs: list[Any] = [getattr(nocopy, n) for n in nocopy.__all__]
    objs += [getattr(nocopy.Shared, n) for n in dir(nocopy.Shared) if not n.startswith("_")]
    for optional in ("nocopy.ray", "nocopy.joblib"):
        if importlib.util.find_spec(optional.split(".")[1]) is not None:
            module = importlib.import_module(optional)
            objs += [getattr(module, n) for n in module.__all__]
    for obj in objs:
        try:
            names |= set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            pass
    return names


def _resolve(dotted: str) -> bool:
    """Whether ``nocopy.<dotted>`` (a module, then attributes) exists."""
    parts = dotted.split(".")
    obj: Any = nocopy
    for i, part in enumerate(parts):
        if not hasattr(obj, part):
            module = ".".join(["nocopy", *parts[: i + 1]])
            if importlib.util.find_spec(module) is None:
                return False
            try:
                obj = importlib.import_module(module)
            except ImportError:  # an optional dependency missing here: it exists
                return True
            continue
        obj = getattr(obj, part)
    return True


def _cli_options() -> dict[str, set[str]]:
    from nocopy._bench.cli import _parser as bench_parser
    from nocopy._cli import _parser as nocopy_parser

    commands: dict[str, set[str]] = {}
    for prefix, parser in (("", nocopy_parser()), ("bench ", bench_parser())):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    commands[prefix + name] = {o for a in sub._actions for o in a.option_strings}
    return commands


def test_there_are_fixes_to_check() -> None:
    assert len(fix_texts()) >= 40


def test_every_fix_names_something_that_exists() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    parameters = _public_parameters()
    commands = _cli_options()
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    wrong = []
    for where, fix in fix_texts():
        for dotted in re.findall(r"\bnocopy\.([A-Za-z_][\w.]*\w)", fix):
            if not _resolve(dotted):
                wrong.append(f"{where}: nocopy.{dotted}")
        for attr in re.findall(r"\bShared\.(\w+)", fix):
            if not hasattr(nocopy.Shared, attr):
                wrong.append(f"{where}: Shared.{attr}")
        for name in re.findall(r"\b([a-z_]+)=(?:True|False|'|\{\}|\()", fix):
            if name not in parameters:
                wrong.append(f"{where}: a parameter {name}=")
        for extra in re.findall(r"nocopy\[(\w+)\]", fix):
            if extra not in extras:
                wrong.append(f"{where}: the extra nocopy[{extra}]")
        # A command is quoted (`nocopy gc --dry-run`) or follows "run".
        for command, options in re.findall(r"(?:`|\brun )nocopy ((?:bench )?[a-z]+)((?: --[a-z-]+)*)", fix):
            if command not in commands:
                wrong.append(f"{where}: the command nocopy {command}")
            else:
                wrong += [f"{where}: nocopy {command} {o}" for o in options.split() if o not in commands[command]]
        for var in re.findall(r"\bNOCOPY_[A-Z_]+", fix):
            if source.count(f'"{var}"') == 0:
                wrong.append(f"{where}: the environment variable {var} (nothing reads it)")
    assert not wrong, "\n".join(wrong)


def _literal_text(node: ast.AST) -> str:
    return "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _assigned(scope: ast.AST) -> dict[str, str]:
    """The literal text each local name of *scope* is given (a message built in steps: msg = ...; msg += ...)."""
    out: dict[str, str] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value is not None:
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    out[target.id] = out.get(target.id, "") + _literal_text(node.value)
    return out


def _error_classes() -> set[str]:
    """The error classes of nocopy.errors: not the root (never raised itself), not the warnings."""
    return {n for n in nocopy.errors.__all__
            if n != "NocopyError" and not issubclass(getattr(nocopy.errors, n), Warning)}


def error_constructions() -> list[tuple[str, str, bool]]:
    """(where, class, whether its message gives a fix) of every nocopy error src/ constructs."""
    classes = _error_classes()
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        scope_of: dict[ast.AST, ast.AST] = {}  # each node -> its innermost function (or the module)
        for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
            for node in ast.walk(scope):
                scope_of[node] = scope  # inner functions come later in the walk and win
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if not isinstance(node, ast.Call) or name not in classes:
                continue
            local = _assigned(scope_of[node])
            text = "".join(_literal_text(a) for a in node.args)
            text += "".join(local.get(n.id, "") for a in node.args for n in ast.walk(a) if isinstance(n, ast.Name))
            out.append((f"{path.relative_to(SRC)}:{node.lineno}", name, "Fix:" in text))
    return out


def test_every_error_nocopy_makes_gives_a_fix() -> None:
    made = error_constructions()
    assert {cls for _, cls, _ in made} == _error_classes(), "a class never made?"
    assert [f"{where}: {cls}" for where, cls, fix in made if not fix] == []


def test_the_check_catches_a_fix_that_names_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk above really looks: a made-up name in a fix fails it."""
    monkeypatch.setattr(sys.modules[__name__], "fix_texts",
                        lambda: [("x.py:1", " pass allow_pickles=True, or nocopy.sharing(x); `nocopy gc --now`")])
    with pytest.raises(AssertionError) as info:
        test_every_fix_names_something_that_exists()
    text = str(info.value)
    assert "allow_pickles=" in text and "nocopy.sharing" in text and "--now" in text


# --- the unsupported-data error ---------------------------------------------------------------


@pytest.mark.parametrize("obj", [(i for i in range(3)), threading.Lock(), memoryview(b"abc")],
                         ids=["generator", "lock", "memoryview"])
def test_unpicklable_data_is_not_told_to_pass_allow_pickle(obj: Any) -> None:
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.share(obj)
    message = str(info.value)
    assert "allow_pickle" not in message and "dicts to" not in message and "Fix: convert it" in message
    with pytest.raises(UnsupportedTypeError, match="cannot even be pickled"):
        nocopy.share(obj, allow_pickle=True)  # what the old message suggested


def _frame_with_dicts() -> Any:
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"x": np.arange(4.0), "meta": [{"a": i} for i in range(4)]})


def test_a_dict_column_names_the_column_once_and_a_fix_that_works() -> None:
    df = _frame_with_dicts()
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.share(df)
    message = str(info.value)
    assert message.startswith("cannot share column 'meta' of dtype object holding dict:")
    assert "['meta']" not in message and "one column per key" in message
    assert "pass allow_pickle=True" in message
    with nocopy.share(df, allow_pickle=True) as ref:
        assert ref.get()["meta"][3] == {"a": 3}


def _rows(frame: Any) -> int:
    return len(frame)


def test_parallel_map_names_the_fix_that_works_with_parallel_map() -> None:
    df = _frame_with_dicts()
    with pytest.raises(UnsupportedTypeError) as info:
        nocopy.parallel_map(_rows, df, chunks=2, workers=1)
    message = str(info.value)
    assert "pass allow_pickle=True" not in message  # parallel_map takes no allow_pickle
    assert "allow_pickle" not in inspect.signature(nocopy.parallel_map).parameters
    assert "nocopy.share(data, allow_pickle=True) and pass parallel_map the handle" in message
    with nocopy.share(df, allow_pickle=True) as ref:  # ...and doing what it says works
        assert nocopy.parallel_map(_rows, ref, chunks=2, workers=1) == [2, 2]
    # share() itself still names its own keyword afterwards.
    with pytest.raises(UnsupportedTypeError, match="pass allow_pickle=True"):
        nocopy.share(df)


def test_explain_counts_one_part_in_the_singular() -> None:
    assert str(nocopy.explain(np.arange(3))).splitlines()[-1] == "(1 part; zero-copy: 1)"


def test_a_type_name_takes_the_article_it_is_said_with() -> None:
    from nocopy._text import with_article

    with pytest.raises(MemoryError) as info:
        nocopy.empty((1 << 50,), "u1")  # more than any machine has: refused before allocating
    assert "for an ndarray of 1024 TiB" in str(info.value)
    said = [with_article(w) for w in ("ndarray", "DataFrame", "Index", "int", "uint8", "object")]
    assert said == ["an ndarray", "a DataFrame", "an Index", "an int", "a uint8", "an object"]
