import json
import shutil

import nbformat

from ptmlib.book import strip_volatile
from ptmlib.report import render, write_report


def _row(profile, measured, passed, seed=0):
    return {"id": "gap", "chapter": "icl/linear_regression", "paper": "garg2022icl", "statement": "small gap",
            "measured": measured, "threshold": 0.1, "op": "<", "passed": passed, "profile": profile, "seed": seed,
            "paper_value": "≈ 0"}


def _book(tmp_path, root):
    book = tmp_path / "book"
    (book / "chapters" / "icl").mkdir(parents=True)
    shutil.copy2(root / "_toc.yml", book / "_toc.yml")
    (book / "chapters" / "icl" / "linear_regression.md").write_text("# x\n")
    return book


def test_report_puts_each_profile_in_its_column(tmp_path, root, monkeypatch):
    book = _book(tmp_path, root)
    golden = book / "tests" / "golden" / "icl"
    golden.mkdir(parents=True)
    (golden / "linear_regression.claims.json").write_text(json.dumps([_row("smoke", 0.05, True)]))
    runs = tmp_path / "claims"  # PTM_CLAIMS_DIR (conftest)
    (runs / "full" / "icl").mkdir(parents=True)
    (runs / "full" / "icl" / "linear_regression.json").write_text(json.dumps([_row("full", 0.25, False)]))
    text = render(book)
    line = next(l for l in text.splitlines() if l.startswith("| `gap`"))
    assert line == ("| `gap` | {cite:p}`garg2022icl` | small gap | ≈ 0 | 0.05 (< 0.1): pass | "
                    "0.25 (< 0.1): **FAIL** |")
    assert write_report(book).read_text() == text


def test_report_without_claims_says_so(tmp_path, root):
    assert "No chapter has recorded claims yet." in render(_book(tmp_path, root))


def test_strip_volatile_removes_run_metadata_and_fixes_cell_ids(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("hi")]
    nb.metadata["papermill"] = {"duration": 3.2}
    nb.cells[0].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    strip_volatile(path)
    out = nbformat.read(path, as_version=4)
    assert "papermill" not in out.metadata and "execution" not in out.cells[0].metadata
    assert out.cells[0].metadata["tags"] == ["parameters"] and [c.id for c in out.cells] == ["cell-0", "cell-1"]
