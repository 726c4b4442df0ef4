"""Student notebooks: no solution survives, nothing else is lost, and the notebook still runs."""
import os
import re

import nbformat
import pytest

from ptmlib.book import runner as book
from ptmlib.book.student import student_notebook, write_student


def _solution_lines(source: str) -> list[str]:
    """Lines found only in a chapter's solution admonitions (prose and code), not elsewhere in it."""
    pattern = re.compile(r"^:::\{admonition\} (?:Solution|Answers).*?^:::[ \t]*$", re.DOTALL | re.MULTILINE)
    rest = pattern.sub("", source)
    return [line.strip() for b in pattern.findall(source) for line in b.splitlines()[2:-1]
            if len(line.strip()) > 20 and line.strip() not in rest]


@pytest.mark.parametrize("chapter", book.chapter_ids(book.Path(__file__).resolve().parents[1]))
def test_student_notebook_has_no_solution_and_keeps_the_rest(root, chapter):
    source = book.chapter_path(root, chapter).read_text()
    secret = _solution_lines(source)
    assert secret, f"{chapter} has no solution to hide"
    nb = student_notebook(root, chapter)
    text = "\n".join(cell.source for cell in nb.cells)
    assert "Solution" not in text and ":class: dropdown" not in text
    for line in secret:
        assert line not in text, f"solution text survived in {chapter}: {line!r}"
    assert nb.cells[0].source.startswith("# Student notebook:") and f"`{chapter}`" in nb.cells[0].source
    assert "## Exercises" in text and "## Summary" in text
    original = [c.source for c in book.read_chapter(book.chapter_path(root, chapter)).cells
                if c.cell_type == "code" and "solution" not in c.metadata.get("tags", [])]
    assert [c.source for c in nb.cells if c.cell_type == "code"] == original  # only solution cells removed
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_a_student_notebook_runs_at_smoke(root, tmp_path, monkeypatch):
    import papermill

    [path] = write_student(root, ["peft/interpretable_adaptation"], tmp_path)
    monkeypatch.setenv("PTM_CLAIMS_OUT", str(tmp_path / "claims.json"))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(path), str(out), parameters={"profile": "smoke", "chapter": "peft/interpretable_adaptation"},
                               cwd=str(root / "chapters" / "peft"),
                               progress_bar=False, log_output=False, kernel_name="python3")
    ran = nbformat.read(out, as_version=4)
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code")
    assert (tmp_path / "claims.json").is_file()
    assert os.path.getsize(tmp_path / "claims.json") > 10
