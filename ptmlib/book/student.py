"""Student notebooks: each chapter as a plain `.ipynb` without its worked solutions.

A solution is a MyST admonition whose title starts with "Solution" or "Answers" (the worked exercises and
the answers to the check questions, rendered as closed dropdowns in the book) or any cell tagged `solution`. `student_notebook` drops them, clears outputs and execution
counts, and puts a header cell in front naming the chapter and how to run it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ptmlib.book import runner as book

# ":::{admonition} Solution ..." up to the first line that is only ":::" (code fences inside are kept
# whole: they never contain such a line)
SOLUTION = re.compile(r"^:::\{admonition\} (?:Solution|Answers).*?^:::[ \t]*$\n?", re.DOTALL | re.MULTILINE)
HEADER = """# Student notebook: {title}

Chapter `{chapter}` of *an executable curriculum on pretrained models*, without its worked solutions and
the answers to its check questions.
Run it top to bottom: the first code cell holds the parameters (`profile="smoke"` runs on a laptop CPU in
about a minute, `profile="full"` is meant for one GPU). Every experiment ends with claims; a failing
claim stops the notebook. The exercises at the end are yours; the book has the solutions.
"""


def _title(nb: Any) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "untitled"


def student_notebook(root: Path, chapter: str) -> Any:
    """The chapter's notebook with solutions removed, outputs cleared and a header cell first."""
    import nbformat

    nb = book.read_chapter(book.chapter_path(root, chapter))
    cells = []
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            cell.source = SOLUTION.sub("", cell.source).rstrip("\n")
            if not cell.source.strip():
                continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    header = nbformat.v4.new_markdown_cell(HEADER.format(title=_title(nb), chapter=chapter))
    nb.cells = [header] + cells
    nb.metadata.pop("jupytext", None)
    return nb


def write_student(root: Path, chapters: Sequence[str], out: Path) -> list[Path]:
    """Write `out/<id>.ipynb` for each chapter; returns the paths."""
    import nbformat

    paths = []
    for chapter in chapters:
        path = out / f"{chapter}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student_notebook(root, chapter), path)
        paths.append(path)
    return paths
