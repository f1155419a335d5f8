"""A Griffe extension for the API reference (mkdocs.yml loads it): public pages show what users call.

* A parameter whose default is a module constant (``share_threshold=DEFAULT_SHARE_THRESHOLD``)
  shows the constant's value (``1048576``): the name is private, the number is what a reader needs.
* ``nocopy.Shared`` is made by ``share()``/``attach()``, never by its constructor, whose parameters
  (a locator, a token, the owner's segment) are internals: its heading shows no signature. So is
  ``Explanation`` (made by ``explain()``).
"""

from __future__ import annotations

import ast
import operator
from typing import Any

import griffe

# Classes users get from a function and never construct.
NOT_CONSTRUCTED = {"nocopy._shared.Shared", "nocopy._explain.Explanation"}

_OPS = {ast.LShift: operator.lshift, ast.Mult: operator.mul, ast.Add: operator.add,
        ast.Sub: operator.sub, ast.Pow: operator.pow}


def _arithmetic(text: str) -> int | float | None:
    """The value of a constant expression such as ``1 << 20``; None for anything else."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(text)

    try:
        return value(ast.parse(text, mode="eval").body)  # type: ignore[no-any-return]
    except (SyntaxError, ValueError):
        return None


class NocopyReference(griffe.Extension):
    """Resolve constant defaults to their values; hide constructors users never call."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        for member in list(obj.members.values()):
            if member.is_alias:
                continue
            if member.is_class and member.path in NOT_CONSTRUCTED and "__init__" in member.members:
                del member.members["__init__"]
            if member.is_function:
                for param in member.parameters:
                    if isinstance(param.default, griffe.ExprName):
                        try:
                            target = param.default.resolved
                        except Exception:  # unresolvable: leave the name as it is
                            continue
                        if isinstance(target, griffe.Attribute) and target.value is not None:
                            number = _arithmetic(str(target.value))
                            if number is not None:
                                param.default = str(number)
            if member.is_module or member.is_class:
                self._walk(member)
