import json
import shutil

import nbformat
import pytest

from ptmlib.book.runner import strip_volatile
from ptmlib.book.report import RECORDED, load_recorded, part_label, record, render, write_report


def _row(profile, measured, passed, seed=0, kind="reproduces", id="gap", control=""):
    return {"id": id, "chapter": "icl/linear_regression", "kind": kind, "paper": "garg2022icl", "statement": "small gap",
            "measured": measured, "threshold": 0.1, "op": "<", "passed": passed, "profile": profile, "seed": seed,
            "paper_value": "≈ 0", "control": control}


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
    return lines[i - 3: i + 4]


def test_report_puts_each_profile_in_its_column(tmp_path, root, monkeypatch):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    runs = tmp_path / "claims"  # PTM_CLAIMS_DIR (conftest)
    (runs / "full" / "icl").mkdir(parents=True)
    (runs / "full" / "icl" / "linear_regression.json").write_text(json.dumps([_row("full", 0.25, False)]))
    text = render(book)
    assert _line(text) == ["* - I", "  - {doc}`icl/linear_regression <chapters/icl/linear_regression>`",
                           "  - reproduction", "  - `gap`: small gap", "  - {cite:p}`garg2022icl`: ≈ 0", "  - 0.05 (< 0.1): pass (golden, seed 0)",
                           "  - 0.25 (< 0.1): **FAIL** (this machine, seed 0, not recorded)"]
    assert ("**1 reproductions in 1 chapters.** Smoke: 1 of 1 pass at seed 0; 0 pass at all ten calibration seeds; "
            "0 fail under every control of their chapter. Full: 1 recorded, 0 pass.") in text
    assert '<option value="I">Part I. In-context learning theory</option>' in text
    assert '<option value="II">' not in text  # only parts that have claims
    assert write_report(book).read_text() == text


def test_a_local_smoke_run_at_another_seed_is_labelled_as_such(tmp_path, root):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    assert _line(render(book))[5] == "  - 0.05 (< 0.1): pass (golden, seed 0)"
    run = book / "_build" / "runs" / "icl"  # what `ptm run` and `make book` write
    run.mkdir(parents=True)
    (run / "linear_regression.claims.json").write_text(json.dumps([_row("smoke", 0.07, True, seed=3)]))
    assert _line(render(book))[5] == "  - 0.07 (< 0.1): pass (this machine, seed 3)"


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
    assert part_label("Part 0. Orientation") == "0"
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


def test_headline_counts_reproductions_only_and_the_strip_shows_seeds_threshold_and_controls(tmp_path, root):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True), _row("smoke", 0.01, True, kind="check", id="bytes"),
                   _row("smoke", 0.5, False, kind="negative", id="paper_method")])
    cal = book / "results" / "calibration" / "smoke" / "icl"
    cal.mkdir(parents=True)
    runs = {str(s): {"ok": True, "claims": {"gap": {"measured": 0.05 + s / 1000}}} for s in range(10)}
    (cal / "linear_regression.json").write_text(json.dumps(
        {"runs": runs, "controls": {"cut_to_1pct": {"ok": True, "claims": {"gap": {"measured": 0.9}}}}}))
    run = book / "_build" / "runs" / "controls" / "cut_to_1pct" / "icl"  # a control run is not a result
    run.mkdir(parents=True)
    (run / "linear_regression.claims.json").write_text(json.dumps([_row("smoke", 0.9, False, control="cut_to_1pct")]))
    text = render(book)
    assert ("**1 reproductions in 1 chapters.** Smoke: 1 of 1 pass at seed 0; 1 pass at all ten calibration seeds; "
            "1 fail under every control of their chapter.") in text
    assert "Besides: 1 checks (1 pass at smoke) and 1 negative results" in text
    line = _line(text)[5]
    assert line.startswith("  - 0.05 (< 0.1): pass (golden, seed 0) <svg class=\"ptm-strip\"")
    assert line.count("<circle") == 10 and line.count(">×</text>") == 1 and 'stroke="#d62728"' in line
    assert "seeds 0-9: 0.05 to 0.059; threshold &lt; 0.1; control cut_to_1pct: 0.9" in line
    neg = _line(text, "paper_method")
    assert neg[2] == "  - negative result" and neg[5] == "  - 0.5 (< 0.1): not reproduced (golden, seed 0)"


def test_run_times_come_from_the_bench_record_into_the_syllabus(tmp_path, root):
    from ptmlib.book.bench import record_time
    from ptmlib.book.report import TIMES_END, TIMES_START, syllabus_with_times
    from ptmlib.profiles import run_times

    book = _book(tmp_path, root)
    assert run_times("icl/linear_regression", book) == {"smoke": "not measured yet", "full": "not yet run on a GPU"}
    record_time(book, "icl/linear_regression", "smoke", 31.26, "median of 10 seeds in ptm calibrate -j 2")
    smoke = run_times("icl/linear_regression", book)["smoke"]
    assert smoke.startswith("31 s on a ") and "CPU (median of 10 seeds in ptm calibrate -j 2, 20" in smoke
    text = syllabus_with_times(book, f"intro\n{TIMES_START}\nold table\n{TIMES_END}\nafter\n")
    assert "old table" not in text and text.startswith("intro\n") and text.endswith(f"{TIMES_END}\nafter\n")
    assert f"| {{doc}}`chapters/icl/linear_regression` | {smoke} | not yet run on a GPU |" in text
    assert syllabus_with_times(book, "no markers") == "no markers"


def test_the_syllabus_run_times_are_current(root):
    from ptmlib.book.report import syllabus_with_times

    text = (root / "syllabus.md").read_text()
    assert syllabus_with_times(root, text) == text, "run `ptm report` to refresh the syllabus's run times"


def test_a_local_run_in_an_older_claims_format_is_skipped_not_fatal(tmp_path, root, capsys):
    book = _book(tmp_path, root)
    _golden(book, [_row("smoke", 0.05, True)])
    run = book / "_build" / "runs" / "icl"
    run.mkdir(parents=True)
    old = {k: v for k, v in _row("smoke", 0.07, True, seed=3).items() if k not in ("kind", "control")}
    (run / "linear_regression.claims.json").write_text(json.dumps([old]))
    assert _line(render(book))[5] == "  - 0.05 (< 0.1): pass (golden, seed 0)"
    assert "older claims format" in capsys.readouterr().out


def test_paper_cell_cites_the_paper_or_says_none_for_a_check_of_our_own():
    from ptmlib.book.report import paper_cell

    assert paper_cell({"paper": "garg2022what", "paper_value": "0.5"}) == "{cite:p}`garg2022what`: 0.5"
    assert paper_cell({"paper": "garg2022what", "paper_value": ""}) == "{cite:p}`garg2022what`: -"
    assert paper_cell({"paper": "", "paper_value": "qualitative"}) == "-"  # no empty {cite:p}`` (a Sphinx error)
    assert paper_cell({"paper": None}) == "-"
