"""No typed run numbers: every number the run produces reaches the prose through glue (`ptmlib.book.prose`)."""
from __future__ import annotations

import json

import nbformat
import pytest

from ptmlib.book import runner as book
from ptmlib.book.prose import significant, typed_numbers


def _golden(outputs: list[str], glued: dict[str, str] | None = None) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs]
    for name, value in (glued or {}).items():
        cell.outputs.append(nbformat.v4.new_output("display_data", data={"text/plain": value},
                                                   metadata={"scrapbook": {"name": name}}))
    finish = nbformat.v4.new_code_cell("card.finish()")
    finish.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "gap 0.3047 < 0.5"},
                                             execution_count=1)]
    nb.cells = [cell, finish]
    return nb


def _chapter(*markdown: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(m) for m in markdown]
    return nb


def test_significant_digits():
    assert [significant(t) for t in ("0.065", "1.50", "0.5", "12.25", "0.0")] == [2, 3, 1, 4, 1]


def test_a_typed_run_number_is_found_and_glue_const_code_and_thresholds_are_not():
    golden = _golden(["accuracy 0.6051 after 300 steps\n", "loss 1.2345\n"], glued={"levi": "'0.605'"})
    typed = typed_numbers(_chapter("LEVI reaches 0.61 here, and the loss ends at 1.234 (truncated)."), golden,
                          [0.6051])
    assert [t.split(" (")[0] for t in typed] == ["cell 0: 0.61", "cell 0: 1.234"]
    clean = _chapter("LEVI reaches {glue:text}`levi`; the paper reports {constant}`0.605`; `x = 0.6051` is code; "
                     "the threshold is 0.5 and 0.3047 is the scorecard's own line; one digit: 0.6.")
    assert typed_numbers(clean, golden, [0.6051]) == []
    # two significant digits: flagged when printed verbatim or a claim/glue rounds to it, not by a loose match
    assert typed_numbers(_chapter("about 1.2 nats"), golden, []) == []
    assert typed_numbers(_chapter("about 1.2 nats"), _golden(["gap 1.2\n"]), []) != []


def test_no_chapter_types_a_number_its_run_prints_or_glues(root):
    problems = []
    for chapter in book.chapter_ids(root):
        nb = book.read_chapter(book.chapter_path(root, chapter))
        golden = nbformat.read(root / book.GOLDEN_DIR / f"{chapter}.ipynb", as_version=4)
        claims = json.loads((root / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())
        problems += [f"{chapter}: {t}" for t in typed_numbers(nb, golden, [c["measured"] for c in claims])]
    assert not problems, "typed run numbers (glue them, or mark a true constant {constant}`x`):\n" + "\n".join(problems)
