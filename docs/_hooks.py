"""mkdocs hooks for nocopy's documentation site (see mkdocs.yml).

Under ``mkdocs build --strict`` every warning logged here fails the build, so:

* every public name (``nocopy.__all__``, ``nocopy.errors.__all__``,
  ``nocopy.ray.__all__``, ``nocopy.joblib.__all__`` and the public members of
  the public classes) must have a docstring, and
* every public name must be rendered by a ``::: identifier`` directive of its
  own on an API reference page (a class's directive covers its members),

which mkdocstrings alone does not check (it renders an undocumented name as a
bare signature, and never notices a name nobody asked for).

It also lets ``benchmarks.md`` include BENCHMARKS.md verbatim: that file sits
at the repository root and points at its images as ``docs/<name>.png``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.nocopy")

ROOT = Path(__file__).resolve().parent.parent
# The modules whose __all__ is the public API.
PUBLIC_MODULES = ["nocopy", "nocopy.errors", "nocopy.ray", "nocopy.joblib", "nocopy.torch"]
# Public by __all__ but not API objects with a docstring of their own.
NOT_DOCUMENTED = {"nocopy.__version__", "nocopy.errors"}
# Public names still without a docstring, owned by src/'s maintainers: this list must end empty
# (a name listed here that has gained a docstring is an error too, so the list only shrinks).
MISSING_DOCSTRINGS = {
    "nocopy.ray.RayMapBackend.abort",
    "nocopy.ray.RayMapBackend.prepare",
    "nocopy.ray.RayMapBackend.release",
    "nocopy.ray.RayMapBackend.submit",
}


def _public_names() -> dict[str, Any]:
    """Identifier -> griffe object of every public name and public class member."""
    package = griffe.load("nocopy", search_paths=[str(ROOT / "src")], resolve_aliases=True)
    names: dict[str, Any] = {}
    for module_path in PUBLIC_MODULES:
        module = package if module_path == "nocopy" else package[module_path.removeprefix("nocopy.")]
        for name in module.exports or []:
            ident = f"{module_path}.{name}"
            if ident in NOT_DOCUMENTED:
                continue
            obj = module[name]
            names[ident] = obj
            if obj.is_class:
                for member_name, member in obj.members.items():
                    # Inherited and private members are documented where they are defined.
                    if member_name.startswith("_") or member.is_alias:
                        continue
                    if member.is_attribute and not member.docstring:
                        continue  # plain annotations (exception attributes) are described by the class
                    names[f"{ident}.{member_name}"] = member
    return names


def _directives(docs_dir: Path) -> set[str]:
    found: set[str] = set()
    for page in (docs_dir / "reference").glob("*.md"):
        found.update(re.findall(r"^::: (\S+)", page.read_text(), re.M))
    return found


def on_pre_build(config: Any) -> None:
    """Fail the strict build on an undocumented or unrendered public name."""
    names = _public_names()
    rendered = _directives(Path(config["docs_dir"]))
    for ident in sorted(MISSING_DOCSTRINGS - names.keys()):
        log.warning("%s in MISSING_DOCSTRINGS is not a public name (any more)", ident)
    for ident, obj in sorted(names.items()):
        docstring = obj.docstring.value.strip() if obj.docstring else ""
        if not docstring and ident not in MISSING_DOCSTRINGS:
            log.warning("public name %s has no docstring (%s)", ident, obj.canonical_path)
        if docstring and ident in MISSING_DOCSTRINGS:
            log.warning("%s has a docstring now: remove it from MISSING_DOCSTRINGS", ident)
        # A class's directive renders its members; a module's directive does not count, so
        # every public name has a directive of its own and a new one cannot go unnoticed.
        parent = ident.rsplit(".", 1)[0]
        if ident not in rendered and not (parent in names and parent in rendered):
            log.warning("public name %s is not on any API reference page (docs/reference/*.md)", ident)


# Pages that are a repository file included as it is (one source for both).
INCLUDES = {
    "benchmarks.md": ("BENCHMARKS.md", "<!-- BENCHMARKS.md, from its second line -->"),
    "changelog.md": ("CHANGELOG.md", "<!-- CHANGELOG.md, from its second line -->"),
}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Include BENCHMARKS.md / CHANGELOG.md in their pages, ``docs/<image>`` links made page-relative."""
    if page.file.src_uri not in INCLUDES:
        return markdown
    source, marker = INCLUDES[page.file.src_uri]
    if marker not in markdown:
        log.warning("%s lost its include line %r", page.file.src_uri, marker)
        return markdown
    body = (ROOT / source).read_text().split("\n", 1)[1]  # its own "# ..." title
    return markdown.replace(marker, re.sub(r"\]\(docs/", "](", body))
