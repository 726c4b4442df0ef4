import json
import shutil

import nbformat
import pytest

from ptmlib.book.runner import strip_volatile
from ptmlib.book.report import RECORDED, load_recorded, part_label, record, render, write_report


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


def _golden(book, rows):
    golden = book / "tests" / "golden" / "icl"
    golden.mkdir(parents=True, exist_ok=True)
    (golden / "linear_regression.claims.json").write_text(json.dumps(rows))


def _line(text, claim="gap"):
    lines = text.splitlines()
    i = lines.index(f"  - `{claim}`: small gap")
    return lines[i - 2: i + 4]


def test_report_puts_each_profile_in_its_column(tmp_path, root, monkeypatch):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    runs = tmp_path / "claims"  # PTM_CLAIMS_DIR (conftest)
    (runs / "full" / "icl").mkdir(parents=True)
    (runs / "full" / "icl" / "linear_regression.json").write_text(json.dumps([_row("full", 0.25, False)]))
    text = render(book)
    assert _line(text) == ["* - I", "  - {doc}`icl/linear_regression <chapters/icl/linear_regression>`",
                           "  - `gap`: small gap", "  - {cite:p}`garg2022icl`: ≈ 0", "  - 0.05 (< 0.1): pass (golden, seed 0)",
                           "  - 0.25 (< 0.1): **FAIL** (this machine, seed 0, not recorded)"]
    assert "**1 claims in 1 chapters.** Smoke: 1 of 1 pass. Full: 1 recorded, 0 pass." in text
    assert '<option value="I">Part I. In-context learning theory</option>' in text
    assert '<option value="II">' not in text  # only parts that have claims
    assert write_report(book).read_text() == text


def test_a_local_smoke_run_at_another_seed_is_labelled_as_such(tmp_path, root):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    assert _line(render(book))[4] == "  - 0.05 (< 0.1): pass (golden, seed 0)"
    run = book / "_build" / "runs" / "icl"  # what `ptm run` and `make book` write
    run.mkdir(parents=True)
    (run / "linear_regression.claims.json").write_text(json.dumps([_row("smoke", 0.07, True, seed=3)]))
    assert _line(render(book))[4] == "  - 0.07 (< 0.1): pass (this machine, seed 3)"


def test_recorded_full_runs_are_merged_with_their_card_and_date(tmp_path, root):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    run = tmp_path / "gpu-run" / "icl"
    run.mkdir(parents=True)
    (run / "linear_regression.claims.json").write_text(json.dumps([_row("full", 0.02, True, seed=0)]))
    rows = record(book, tmp_path / "gpu-run", "NVIDIA H100 80GB HBM3", "2026-11-27")
    assert [(r["id"], r["card"], r["date"]) for r in rows] == [("gap", "NVIDIA H100 80GB HBM3", "2026-11-27")]
    assert load_recorded(book)[0]["measured"] == 0.02
    assert _line(render(book))[-1] == "  - 0.02 (< 0.1): pass (NVIDIA H100 80GB HBM3, 2026-11-27, seed 0)"
    (run / "linear_regression.claims.json").write_text(json.dumps([_row("full", 0.03, True)]))
    record(book, tmp_path / "gpu-run", "NVIDIA H200", "2026-12-01")  # a newer run replaces the old one
    assert [(r["measured"], r["card"]) for r in load_recorded(book)] == [(0.03, "NVIDIA H200")]


@pytest.mark.parametrize("rows,card,date,message", [
    ([_row("smoke", 0.05, True)], "H100", "2026-11-27", "only full-profile runs are recorded"),
    ([], "H100", "2026-11-27", "no claims files"),
    ([_row("full", 0.05, True)], " ", "2026-11-27", "card must name the GPU"),
    ([_row("full", 0.05, True)], "H100", "27/11/2026", "Invalid isoformat"),
])
def test_record_refuses_what_is_not_a_full_run(tmp_path, root, rows, card, date, message):
    book = _book(tmp_path, root)
    run = tmp_path / "run"
    run.mkdir()
    if rows:
        (run / "x.claims.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=message):
        record(book, run, card, date)
    assert not (book / RECORDED).exists()


def test_the_repository_record_file_loads_and_every_row_is_a_full_claim_of_a_real_chapter(root):
    from ptmlib.book.runner import chapter_ids

    rows = load_recorded(root)  # raises on a malformed row
    assert all(r["chapter"] in chapter_ids(root) and r["profile"] == "full" for r in rows)


def test_part_label_shortens_part_captions_only():
    assert part_label("Part III. Adapting pretrained models") == "III"
    assert part_label("Back matter") == "Back matter"


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
