"""The book as a whole: the `ptm` command, goldens vs chapters, an end-to-end run, nbval, the build."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ptmlib.book import runner as book
from ptmlib.book.cli import main, parse_assignment

PTM = [sys.executable, "-m", "ptmlib.book.cli"]


def run_ptm(args, root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ptm_list_prints_chapter_ids_in_book_order(root, capsys, monkeypatch):
    code, out, _ = run_ptm(["list"], root, capsys, monkeypatch)
    assert code == 0 and out.splitlines() == book.chapter_ids(root)
    assert out.splitlines()[0] == "icl/linear_regression"


@pytest.mark.parametrize("args,message", [
    (["run", "icl/nope"], "unknown chapter 'icl/nope'; known: icl/linear_regression"),
    (["run", "icl/linear_regression", "--profile", "fast"], "unknown profile 'fast'; allowed: smoke, full, auto"),
    (["run", "icl/linear_regression", "-p", "gpt_steps"], "malformed -p 'gpt_steps'"),
    (["run", "icl/linear_regression", "-p", "depth=3"], "unknown parameter(s) ['depth']"),
    (["run", "icl/linear_regression", "--seed", "x"], "invalid int value"),
    (["run", "icl/linear_regression", "--seed", "-1"], "seed must be a non-negative int"),
    (["frobnicate"], "invalid choice"),
    (["bless", "icl/nope"], "unknown chapter"),
    (["record", "no/such/run", "--card", "H100"], "no claims files under no/such/run"),
    (["record", "no/such/run"], "the following arguments are required: --card"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(root, capsys, monkeypatch, args, message):
    code, out, err = run_ptm(args, root, capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_parse_assignment_reads_literals():
    assert parse_assignment("gpt_steps=300") == ("gpt_steps", 300)
    assert parse_assignment("pair_tokens=False") == ("pair_tokens", False)
    assert parse_assignment("name=abc") == ("name", "abc")


@pytest.mark.parametrize("chapter", book.chapter_ids(Path(__file__).resolve().parents[1]))
def test_golden_code_matches_its_chapter(root, chapter):
    golden = root / book.GOLDEN_DIR / f"{chapter}.ipynb"
    assert golden.is_file(), f"no golden for {chapter}: run `ptm bless {chapter}`"
    gold = nbformat.read(golden, as_version=4)
    assert book.code_cells(gold) == book.code_cells(book.read_chapter(root / "chapters" / f"{chapter}.md")), \
        f"{chapter} changed since its golden was blessed: run `ptm bless {chapter}`"
    injected = [c for c in gold.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "smoke"' in injected[0].source and "seed = 0" in injected[0].source
    claims = json.loads((root / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())
    assert claims and all(c["passed"] and c["profile"] == "smoke" for c in claims)


def test_every_chapter_has_a_parameters_cell_with_the_book_conventions(root):
    for chapter in book.chapter_ids(root):
        params = book.parameters(book.read_chapter(root / "chapters" / f"{chapter}.md"))
        assert params["profile"] == "auto" and params["seed"] == 0 and params["budget"] == 1.0
        assert all(v is None for k, v in params.items() if k not in ("profile", "seed", "budget"))


def test_papermill_run_with_another_seed_passes_its_claims(root, tmp_path):
    proc = subprocess.run(PTM + ["run", "icl/linear_regression", "--profile", "smoke", "--seed", "1",
                                 "--out", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"icl/linear_regression: ok in \d+\.\d s", proc.stdout)
    claims = json.loads((tmp_path / "icl" / "linear_regression.claims.json").read_text())
    assert claims and all(c["passed"] and c["seed"] == 1 for c in claims)
    assert (tmp_path / "icl" / "linear_regression.ipynb").is_file()


def _nbval(notebook: Path, root: Path) -> subprocess.CompletedProcess:
    (notebook.parent / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                           "--nbval-current-env", "--nbval-sanitize-with", str(root / "tests" / "nbval_sanitize.cfg"),
                           str(notebook)], cwd=notebook.parent, capture_output=True, text=True)


def _golden_prefix(root: Path, tmp_path: Path, marker: str) -> tuple[nbformat.NotebookNode, int]:
    """The golden of icl/linear_regression cut after the first cell whose output contains `marker`."""
    nb = nbformat.read(root / book.GOLDEN_DIR / "icl" / "linear_regression.ipynb", as_version=4)
    for i, cell in enumerate(nb.cells):
        text = "".join(o.get("text", "") for o in cell.get("outputs", []))
        if marker in text:
            nb.cells = nb.cells[: i + 1]
            return nb, i
    raise AssertionError(f"no output with {marker!r} in the golden")


def test_nbval_fails_when_a_metric_in_a_golden_changes_and_ignores_masked_text(root, tmp_path):
    nb, i = _golden_prefix(root, tmp_path, "learned step = ")
    wall = next(j for j, c in enumerate(nb.cells) if any("trained " in o.get("text", "") for o in c.get("outputs", [])))
    for out in [o for o in nb.cells[wall].outputs if "text" in o]:  # masked by the sanitizer: must still pass
        out["text"] = re.sub(r"in \d+\.\d s", "in 999.9 s", out["text"])
    ok_path = tmp_path / "ok" / "nb.ipynb"
    ok_path.parent.mkdir()
    nbformat.write(nb, ok_path)
    ok = _nbval(ok_path, root)
    assert ok.returncode == 0, ok.stdout[-3000:]

    for out in [o for o in nb.cells[i].outputs if "text" in o]:  # a real metric changed: must fail
        out["text"] = re.sub(r"learned step = (\d\.\d+)", lambda m: f"learned step = {float(m[1]) + 0.01:.4f}",
                             out["text"])
    bad_path = tmp_path / "bad" / "nb.ipynb"
    bad_path.parent.mkdir()
    nbformat.write(nb, bad_path)
    bad = _nbval(bad_path, root)
    assert bad.returncode == 1 and "learned step" in bad.stdout, bad.stdout[-3000:]


def test_book_builds_from_the_goldens_with_zero_warnings(built_book):
    html, proc = built_book
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "warning" not in proc.stderr.lower(), proc.stderr[-5000:]
    chapter = (html / "chapters" / "icl" / "linear_regression.html").read_text()
    assert "ptm-scorecard" in chapter and "5/5 claims passed" in chapter
    assert chapter.count("<img") >= 2 and "Garg" in chapter  # figures and resolved citations
    assert "report.html" in (html / "intro.html").read_text()
    report = (html / "report.html").read_text()
    assert "lsa_equals_gd" in report and "pass" in report and 'id="ptm-part-filter"' in report
    assert (html / "bibliography.html").is_file()


def test_built_book_serves_mathjax_itself_and_writes_each_inline_script_once(built_book):
    html, _ = built_book
    chapter = (html / "chapters" / "icl" / "linear_regression.html").read_text()
    assert '<script defer="defer" src="../../_static/mathjax/tex-chtml.js"></script>' in chapter
    assert "cdn.jsdelivr" not in chapter and (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 1e6
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()  # the glyphs
    assert chapter.count("const THEBE_JS_URL") == 1 and chapter.count("var togglebuttonSelector") == 1
