"""The GPU check's CPU side: chapters packed as scripts run where the notebook stack is missing, report what
they did (claims, status, training runs), stop at a deadline, and compute what the notebook path computes."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from ptmlib.book import gpu

ROOT = Path(__file__).resolve().parents[1]


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, src, tags in cells:
        cell = nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
        cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    return nb


def test_script_injects_parameters_after_the_parameters_cell_and_drops_solutions():
    nb = _nb(("md", "# Title", ()), ("code", "budget = 1.0", ("parameters",)), ("code", "x = budget * 2", ()),
             ("code", "assert False  # an exercise", ("solution", "hide-cell")))
    script = gpu.chapter_script(nb, "part/name")
    assert "assert False" not in script and "# Title" not in script
    assert script.index("budget = 1.0") < script.index(gpu.INJECT) < script.index("x = budget * 2")
    ns = {}
    os.environ["PTM_PARAMS"] = json.dumps({"budget": 0.5})
    try:
        exec(compile(script, "part/name.py", "exec"), ns)
    finally:
        del os.environ["PTM_PARAMS"]
    assert ns["x"] == 1.0 and ns["chapter"] == "part/name"
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"):
        gpu.chapter_script(_nb(("code", "budget = 1.0", ())), "part/name")


CLAIM = {"chapter": "t/x", "id": "c", "kind": "reproduces", "paper": "P", "statement": "s", "measured": 0.0,
         "op": ">", "threshold": 0.0, "passed": True, "profile": "full", "seed": 0, "control": "", "paper_value": ""}


def _script(body: str) -> str:
    """A fake chapter: a parameters cell, then `body` (which sees `budget` and may write claims)."""
    return gpu.chapter_script(_nb(("code", "budget = 1.0", ("parameters",)), ("code", textwrap.dedent(body), ())), "t/x")


@pytest.fixture()
def fake_chapters(tmp_path):
    scripts = tmp_path / "scripts"
    (scripts / "t").mkdir(parents=True)
    write_claims = f"""
        import json, os
        claim = {CLAIM!r}
        claim["measured"] = budget
        claim["passed"] = PASSED
        json.dump([claim], open(os.environ["PTM_CLAIMS_OUT"], "w"))
    """
    trained = """
        import torch, ptmlib as ptm
        P = ptm.setup("smoke", quiet=True)
        ptm.train(torch.nn.Linear(2, 1), lambda g: torch.randn(4, 2, generator=g), lambda m, x: m(x).pow(2).mean(),
                  ptm.TrainConfig(num_steps=7), P, examples_per_step=4)
    """
    (scripts / "t" / "ok.py").write_text(_script(write_claims.replace("PASSED", "True") + trained))
    (scripts / "t" / "red.py").write_text(_script(write_claims.replace("PASSED", "False") + """
        from ptmlib.claims import ClaimsFailed
        raise ClaimsFailed("t/x: failed claims: c")
    """))
    (scripts / "t" / "crash.py").write_text(_script("{}[5]"))
    (scripts / "t" / "slow.py").write_text(_script("import time; time.sleep(600)"))
    return scripts


def test_run_reports_each_status_and_stops_at_the_deadline(fake_chapters, tmp_path):
    out = tmp_path / "out"
    lines = []
    rows = gpu.run(fake_chapters, out, ["t/ok", "t/red", "t/crash", "t/slow"], budget=0.25, jobs=4, deadline_s=60,
                   root=ROOT, echo=lines.append)
    by = {r.chapter: r for r in rows}
    assert by["t/ok"].status == "ok" and by["t/ok"].ok and by["t/ok"].claims_passed == 1
    assert json.loads((out / "t/ok.claims.json").read_text())[0]["measured"] == 0.25  # the budget reached the script
    assert (by["t/ok"].train_runs, by["t/ok"].train_steps) == (1, 7)
    assert by["t/red"].status == "claims failed" and by["t/red"].failed == ["c"] and not by["t/red"].ok
    assert by["t/crash"].status == "error" and "KeyError: 5" in by["t/crash"].error
    assert by["t/slow"].status == "timeout" and 59 < by["t/slow"].wall_s < 90
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["chapters"]] == ["ok", "claims failed", "error", "timeout"]
    assert summary["params"] == {"profile": "full", "budget": 0.25, "seed": 0} and summary["machine"]["cuda"] in (True, False)
    assert len(lines) == 4 and all(line.startswith("[") for line in lines)


def test_run_refuses_a_chapter_that_was_not_packed(fake_chapters, tmp_path):
    with pytest.raises(ValueError, match="no packed script for t/missing"):
        gpu.run(fake_chapters, tmp_path / "out", ["t/missing"], root=ROOT)


def _blocked(tmp_path: Path) -> Path:
    """A folder that shadows the notebook stack: importing any of it fails, as on a bare GPU box."""
    block = tmp_path / "block"
    (block / "IPython").mkdir(parents=True)
    for name in ("papermill", "jupytext", "nbformat", "nbclient", "myst_nb", "ipykernel"):
        (block / f"{name}.py").write_text(f"raise ImportError('{name} is not installed on this box')\n")
    (block / "IPython" / "__init__.py").write_text("raise ImportError('IPython is not installed on this box')\n")
    return block


@pytest.mark.slow
def test_a_packed_chapter_runs_without_the_notebook_stack_and_matches_its_golden(tmp_path):
    """peft/interpretable_adaptation through `ptm gpu-check --pack-only` and `python -m ptmlib.book.gpu run` with
    papermill, jupytext, nbformat, IPython and myst-nb unimportable: the same claims, to the last digit, as the golden."""
    chapter = "peft/interpretable_adaptation"
    out = tmp_path / "gpu-check"
    subprocess.run([sys.executable, "-m", "ptmlib.book.cli", "gpu-check", chapter, "--pack-only", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(_blocked(tmp_path))}
    proc = subprocess.run([sys.executable, "-m", "ptmlib.book.gpu", "run", str(out / "scripts"), chapter, "--out",
                           str(out / "run"), "--profile", "smoke"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours = json.loads((out / "run" / f"{chapter}.claims.json").read_text())
    golden = json.loads((ROOT / "tests/golden" / f"{chapter}.claims.json").read_text())
    assert [(c["id"], c["measured"]) for c in ours] == [(c["id"], c["measured"]) for c in golden]
