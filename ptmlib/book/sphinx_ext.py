"""A Sphinx extension for the book's HTML: the `{constant}` role, and one fix for an upstream bug.

`` {constant}`0.25` `` renders as plain text. It marks a number in the prose as a true constant (a paper's
number, a closed form, a setting) rather than a result of the run, which the typed-number test exempts:
every result reaches the prose through glue.

The fix, for an upstream bug that the browser test found:
Sphinx 7.4 re-adds an extension's inline scripts when it starts writing (`filename or ''`), while the
first copy was added with `filename=None`; the two are not recognised as equal, so every page carried
sphinx-thebe's `const THEBE_JS_URL = ...` twice and the browser logged "Identifier 'THEBE_JS_URL' has
already been declared". This drops exact duplicates from each page's script list.
"""
from __future__ import annotations

from typing import Any


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """`scripts` without repeats, where a missing filename (None or '') counts as one; order kept."""
    seen, kept = set(), []
    for js in scripts:
        key = (getattr(js, "filename", js) or "", getattr(js, "priority", 0),
               tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    return kept


def _dedupe(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def constant_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
               content: Any = None) -> tuple[list[Any], list[Any]]:
    """`{constant}`text`` -> the text itself."""
    from docutils import nodes

    return [nodes.Text(text)], []


def setup(app: Any) -> dict[str, Any]:
    app.add_role("constant", constant_role)
    app.connect("html-page-context", _dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
