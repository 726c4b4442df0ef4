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
    assert out.splitlines()[0] == "orientation/why_pretrain"


@pytest.mark.parametrize("args,message", [
    (["run", "icl/nope"], "unknown chapter 'icl/nope'; known: orientation/why_pretrain"),
    (["run", "icl/linear_regression", "--profile", "fast"], "unknown profile 'fast'; allowed: smoke, full, auto"),
    (["run", "icl/linear_regression", "-p", "gpt_steps"], "malformed -p 'gpt_steps'"),
    (["run", "icl/linear_regression", "-p", "depth=3"], "unknown parameter 'depth' for icl/linear_regression"),
    (["run", "icl/linear_regression", "-p", "gpt_width=abc"], "knob 'gpt_width' must be int"),
    (["run", "icl/linear_regression", "-p", "budget=0"], "budget must be a positive number"),
    (["run", "icl/linear_regression", "-p", "seed=1.5"], "seed must be a non-negative int, got 1.5"),
    (["run", "icl/linear_regression", "--seed", "1", "-p", "seed=2"], "--seed 1 and -p seed=2 disagree"),
    (["run"], "give one or more chapter ids, or --all"),
    (["run", "--all", "icl/pfn"], "give chapter ids or --all, not both"),
    (["run", "--all", "-j", "0"], "--jobs must be >= 1"),
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
    assert f'chapter = "{chapter}"' in injected[0].source  # the runner names the chapter, nobody types it
    claims = json.loads((root / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())
    assert claims and all(c["profile"] == "smoke" and c["control"] == "" for c in claims)
    assert all(c["passed"] for c in claims if c["kind"] != "negative")  # a negative result may go either way


def test_every_chapter_has_a_parameters_cell_with_the_book_conventions(root):
    for chapter in book.chapter_ids(root):
        path = root / "chapters" / f"{chapter}.md"
        assert book.parameters(path) == {"profile": "auto", "seed": 0, "budget": 1.0, "knobs": {}}, chapter
        nb = book.read_chapter(path)
        table = book.knob_table(nb)
        assert table and all({"smoke", "full"} <= set(v) <= {"smoke", "full", "scaled"} for v in table.values())
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert source.count("ptm.chapter(globals(), KNOBS)") == 1 and "ptm.Scorecard(" not in source, chapter
        assert f'"{chapter}"' not in source  # the id is derived, not typed


@pytest.mark.slow
def test_papermill_run_at_a_seed_outside_the_calibration_passes_its_claims(root, tmp_path):
    proc = subprocess.run(PTM + ["run", "icl/linear_regression", "--profile", "smoke", "--seed", "12",
                                 "--out", str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\[1/1\] icl/linear_regression: ok in \d+\.\d s, claims (\d+)/\1", proc.stdout)
    assert "without encryption" not in proc.stderr and "unknown parameter" not in proc.stderr
    claims = json.loads((tmp_path / "icl" / "linear_regression.claims.json").read_text())
    assert claims and all(c["passed"] and c["seed"] == 12 for c in claims)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_book_builds_from_the_goldens_with_zero_warnings(built_book):
    html, proc = built_book
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "warning" not in proc.stderr.lower(), proc.stderr[-5000:]
    chapter = (html / "chapters" / "icl" / "linear_regression.html").read_text()
    assert "ptm-scorecard" in chapter and "5/5 reproductions and 0/0 checks passed" in chapter
    assert chapter.count("<img") >= 2 and "Garg" in chapter  # figures and resolved citations
    assert "report.html" in (html / "intro.html").read_text()
    report = (html / "report.html").read_text()
    assert "lsa_equals_gd" in report and "pass" in report and 'id="ptm-part-filter"' in report
    assert (html / "bibliography.html").is_file()


@pytest.mark.slow
def test_built_book_serves_mathjax_itself_and_writes_each_inline_script_once(built_book):
    html, _ = built_book
    chapter = (html / "chapters" / "icl" / "linear_regression.html").read_text()
    assert re.search(r'<script defer="defer" src="\.\./\.\./_static/mathjax/tex-chtml\.js(\?v=\w+)?"></script>', chapter)
    assert "cdn.jsdelivr" not in chapter and (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 1e6
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()  # the glyphs
    assert chapter.count("const THEBE_JS_URL") == 1 and chapter.count("var togglebuttonSelector") == 1


DEMO = """---
jupytext:
  text_representation: {{extension: .md, format_name: myst}}
kernelspec: {{display_name: Python 3, language: python, name: python3}}
---
# Demo {name}

```{{code-cell}} ipython3
:tags: [parameters]

profile = "auto"
seed = 0
budget = 1.0
knobs = {{}}
```

```{{code-cell}} ipython3
import ptmlib as ptm

KNOBS = {{"n": {{"smoke": 3, "full": 5}}}}
CONTROLS = {{"tiny": {{"n": 1}}, "big": {{"n": 9}}}}
P, card = ptm.chapter(globals(), KNOBS)
card.claim("n_at_least_{need}", kind="reproduces", paper="demo", statement="n", measured=P.n + 0 * seed, op=">=",
           threshold={need})
card.finish()
```

```{{code-cell}} ipython3
:tags: [solution]

assert P.n >= 3  # an exercise's answer, true at the chapter's own scale; a control run leaves it out
```
"""


def _demo_book(tmp_path: Path) -> Path:
    """A two-chapter book: demo/ok passes its claim, demo/bad fails `n_at_least_4` at smoke."""
    (tmp_path / "chapters" / "demo").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nparts:\n- caption: Demo\n  chapters:\n"
                                       "  - file: chapters/demo/ok\n  - file: chapters/demo/bad\n")
    (tmp_path / "chapters" / "demo" / "ok.md").write_text(DEMO.format(name="ok", need=3))
    (tmp_path / "chapters" / "demo" / "bad.md").write_text(DEMO.format(name="bad", need=4))
    return tmp_path


@pytest.mark.slow
def test_run_all_runs_chapters_in_parallel_with_one_line_each_and_names_the_failing_claim(tmp_path, capsys,
                                                                                           monkeypatch):
    demo = _demo_book(tmp_path / "book")
    code, out, err = run_ptm(["run", "--all", "--profile", "smoke", "-j", "2", "--out", str(tmp_path / "runs")],
                             demo, capsys, monkeypatch)
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert code == 1 and sorted(ln[:5] for ln in lines) == ["[1/2]", "[2/2]"], out + err
    assert any("demo/ok: ok in" in ln and "claims 1/1" in ln for ln in lines)
    assert any("demo/bad: FAILED" in ln and "claims 0/1" in ln and "failing claim(s): n_at_least_4" in ln
               for ln in lines)
    assert "1 of 2 chapters passed" in out and "(jobs=2)" in out
    claims = json.loads((tmp_path / "runs" / "demo" / "ok.claims.json").read_text())
    assert claims[0]["chapter"] == "demo/ok" and claims[0]["passed"]  # the id came from the runner
    code, _, _ = run_ptm(["run", "demo/ok", "--profile", "smoke", "-p", "n=4", "--out", str(tmp_path / "r2")],
                         demo, capsys, monkeypatch)
    assert code == 0 and json.loads((tmp_path / "r2" / "demo" / "ok.claims.json").read_text())[0]["measured"] == 4


def test_the_chapter_id_is_derived_from_the_runner_or_the_jupyter_server(monkeypatch, tmp_path):
    from ptmlib.profiles import chapter_id

    assert chapter_id({"chapter": "icl/pfn"}) == "icl/pfn"
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/book/chapters/peft/lora_and_adapters.md")
    assert chapter_id({}) == "peft/lora_and_adapters"
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert chapter_id({"__vsc_ipynb_file__": "/x/tests/golden/icl/pfn.ipynb"}) == "icl/pfn"
    assert chapter_id({"__session__": "/x/_build/student/peft/merging_and_arithmetic.ipynb"}) == "peft/merging_and_arithmetic"
    monkeypatch.chdir(tmp_path)
    assert chapter_id({}) == f"{tmp_path.name}/notebook"


def test_staged_chapters_offer_the_executed_and_the_student_notebook(root, tmp_path):
    stage = book.stage_notebooks(root, root / book.GOLDEN_DIR, tmp_path / "stage")
    for chapter in book.chapter_ids(root):
        nb = nbformat.read(stage / "chapters" / f"{chapter}.ipynb", as_version=4)
        [cell] = [c for c in nb.cells if "ptm-downloads" in c.metadata.get("tags", [])]
        flat = chapter.replace("/", "-")
        assert f"downloads/{flat}.ipynb>" in cell.source and f"downloads/{flat}-student.ipynb>" in cell.source
        lines = cell.source.split("\n")  # right under the title, before any prose
        title = next(i for i, ln in enumerate(lines) if ln.startswith("# "))
        assert lines[title + 1] == "" and lines[title + 2].startswith("{download}`Download this chapter")
        executed = nbformat.read(stage / "downloads" / f"{flat}.ipynb", as_version=4)
        student = nbformat.read(stage / "downloads" / f"{flat}-student.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
        assert not any(c.get("outputs") for c in student.cells if c.cell_type == "code")
        assert not any("solution" in c.metadata.get("tags", []) for c in student.cells)
