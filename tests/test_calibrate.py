"""Controls and seed calibration: `ptm run --control`, `ptm calibrate`, the chapter digest, and the
book-wide rules (every reproduction fails under its chapter's controls; thresholds clear the seed spread)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from ptmlib.book import runner as book
from ptmlib.book.calibrate import load_record, parse_seeds
from test_book import _demo_book, run_ptm

SIGMAS = 2.5  # a threshold sits at least this many seed standard deviations from the seed mean


def test_parse_seeds():
    assert parse_seeds("0-9") == list(range(10)) and parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-2,10") == [0, 1, 2, 10] and parse_seeds("4") == [4]
    for bad in ("a", "", "3-x", "-1"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)


def _nb(source: str):
    import jupytext

    return jupytext.reads(source, fmt="md:myst")


CHAPTER = """```{{code-cell}} ipython3
CONTROLS = {{"cut": {{"budget": 0.01}}}}
x = train(steps={steps})  # a comment
print(x)
ptm.glue("x", x)
card.claim("c", kind="{kind}", paper="p", statement="{statement}", measured=x, op=">", threshold={threshold})
```
"""


def test_chapter_digest_ignores_wording_thresholds_comments_and_display_but_not_computation():
    base = book.chapter_digest(_nb(CHAPTER.format(steps=10, kind="reproduces", statement="s", threshold=1)))
    same = CHAPTER.format(steps=10, kind="check", statement="other words", threshold=0.5).replace("# a comment", "")
    assert book.chapter_digest(_nb(same)) == base
    assert book.chapter_digest(_nb(same.replace('print(x)\n', ''))) == base
    assert book.chapter_digest(_nb(CHAPTER.format(steps=11, kind="check", statement="s", threshold=1))) != base
    assert book.chapter_digest(_nb(same.replace("measured=x", "measured=2 * x"))) != base
    assert book.control_table(_nb(same)) == {"cut": {"budget": 0.01}}


def test_control_params_and_unknown_controls():
    nb = _nb(CHAPTER.format(steps=1, kind="reproduces", statement="s", threshold=1))
    assert book.control_params(nb, "x/y", "cut", {"seed": 3, "budget": 1.0}) == {"seed": 3, "budget": 0.01,
                                                                                 "control": "cut"}
    with pytest.raises(ValueError, match="unknown control 'nope' for x/y; declared: cut"):
        book.control_params(nb, "x/y", "nope", {})


@pytest.mark.slow
def test_ptm_run_control_and_calibrate_on_a_demo_book(tmp_path, capsys, monkeypatch):
    demo = _demo_book(tmp_path / "book")
    code, out, _ = run_ptm(["run", "demo/ok", "--control", "tiny", "--out", str(tmp_path / "c")], demo, capsys,
                           monkeypatch)
    assert code == 0 and "demo/ok [control tiny]: ok" in out and "reproductions failed 1/1" in out, out
    code, out, _ = run_ptm(["run", "demo/ok", "--control", "all", "--out", str(tmp_path / "c")], demo, capsys,
                           monkeypatch)  # n=9 under "big": the claim still passes, so the control run fails
    assert code == 1 and "[control big]: FAILED" in out and "still passing under the control: n_at_least_3" in out
    code, _, err = run_ptm(["run", "demo/ok", "--control", "nope"], demo, capsys, monkeypatch)
    assert code == 2 and "unknown control 'nope'" in err

    code, out, _ = run_ptm(["calibrate", "demo/ok", "--seeds", "0-2", "-j", "2", "--no-controls"], demo, capsys,
                           monkeypatch)
    assert code == 0 and "[3/3]" in out, out
    rec = load_record(demo, "demo/ok")
    assert sorted(rec["runs"]) == ["0", "1", "2"] and rec["controls"] == {}
    assert rec["runs"]["1"]["claims"]["n_at_least_3"]["measured"] == 3 and rec["runs"]["1"]["ok"]
    code, out, _ = run_ptm(["calibrate", "demo/ok", "--seeds", "0-3", "-j", "1"], demo, capsys, monkeypatch)
    assert "3 seed(s) already recorded ok for this code, skipped" in out and "[3/3]" in out  # seed 3 + 2 controls
    rec = load_record(demo, "demo/ok")
    assert sorted(rec["runs"]) == ["0", "1", "2", "3"] and rec["controls"]["tiny"]["ok"]
    assert not rec["controls"]["big"]["ok"] and code == 1
    bench = json.loads((demo / "results" / "bench.json").read_text())["chapters"]["demo/ok"]["smoke"]
    assert bench["seconds"] > 0 and "median of 4 seeds in ptm calibrate -j 1" in bench["how"]
    path = demo / "results" / "calibration" / "smoke" / "demo" / "ok.json"
    broken = json.loads(path.read_text())
    broken["runs"]["1"].update(ok=False, error="KeyError: 'tiny'")  # e.g. a solution cell that read a stale record
    path.write_text(json.dumps(broken))
    code, out, _ = run_ptm(["calibrate", "demo/ok", "--seeds", "0-1", "--no-controls"], demo, capsys, monkeypatch)
    assert "1 seed(s) already recorded ok" in out and "[1/1]" in out and load_record(demo, "demo/ok")["runs"]["1"]["ok"]
    src = demo / "chapters" / "demo" / "ok.md"
    src.write_text(src.read_text().replace("P.n + 0 * seed", "P.n + 0 * seed * 2"))  # the computation changed
    run_ptm(["calibrate", "demo/ok", "--seeds", "0", "--no-controls"], demo, capsys, monkeypatch)
    assert sorted(load_record(demo, "demo/ok")["runs"]) == ["0"]  # recalibrated from scratch


# ---- the book's own calibration (results/calibration/smoke): fast checks on the recorded files ----

def _chapters(root: Path) -> list[str]:
    return book.chapter_ids(root)


def _golden_claims(root: Path, chapter: str) -> list[dict]:
    return json.loads((root / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())


def test_every_chapter_is_calibrated_at_seeds_0_to_9_for_its_current_code(root):
    for chapter in _chapters(root):
        rec = load_record(root, chapter)
        assert rec is not None, f"{chapter}: no calibration; run `ptm calibrate {chapter}`"
        nb = book.read_chapter(book.chapter_path(root, chapter))
        assert rec["digest"] == book.chapter_digest(nb), f"{chapter}: its computation changed since calibration"
        missing = [s for s in range(10) if str(s) not in rec["runs"] or not rec["runs"][str(s)]["claims"]]
        assert not missing, f"{chapter}: seeds {missing} not calibrated"
        assert set(rec["controls"]) == set(book.control_table(nb)), f"{chapter}: controls not all calibrated"


# Chapters that do not yet reproduce two findings at smoke, and why: each needs a better experiment (issue 17),
# not fewer claims. The test fails when a chapter joins this list without being named here, and when a named one
# is fixed, so the list stays true.
BELOW_TWO_REPRODUCTIONS: dict[str, str] = {}  # none since session 6


def test_every_chapter_declares_controls_and_at_least_two_reproductions(root):
    below = {}
    for chapter in _chapters(root):
        nb = book.read_chapter(book.chapter_path(root, chapter))
        n = [c["kind"] for c in _golden_claims(root, chapter)].count("reproduces")
        if n < 2:
            below[chapter] = n
        if n:
            assert book.control_table(nb), f"{chapter}: no CONTROLS"
    assert set(below) == set(BELOW_TWO_REPRODUCTIONS), below


def test_thresholds_clear_the_seed_spread_and_every_control_fails_every_reproduction(root):
    """For each reproduction and check (threshold from the golden, i.e. the current chapter): every calibration
    seed passes, and the threshold lies >= SIGMAS seed standard deviations from the seed mean on the passing side;
    every recorded control run fails every reproduction."""
    problems = []
    for chapter in _chapters(root):
        rec = load_record(root, chapter) or {"runs": {}, "controls": {}}
        for claim in _golden_claims(root, chapter):
            if claim["kind"] == "negative":
                continue
            values = [r["claims"][claim["id"]]["measured"] for r in rec["runs"].values() if claim["id"] in r["claims"]]
            if len(values) < 10:
                problems.append(f"{chapter}/{claim['id']}: {len(values)} calibration values")
                continue
            sign = 1 if claim["op"] in (">", ">=") else -1
            mean, sd = statistics.mean(values), statistics.stdev(values)
            worst = min(sign * v for v in values) * sign
            if not all(book.claim_holds(v, claim["op"], claim["threshold"]) for v in values):
                problems.append(f"{chapter}/{claim['id']}: a seed fails (worst {worst:.4g} vs {claim['threshold']})")
            elif sign * (mean - claim["threshold"]) < SIGMAS * sd:
                problems.append(f"{chapter}/{claim['id']}: threshold {claim['threshold']} is within {SIGMAS} sd of "
                                f"the seed mean {mean:.4g} (sd {sd:.3g})")
            if claim["kind"] == "reproduces":
                for name, run in rec["controls"].items():
                    c = run["claims"].get(claim["id"])
                    if c is None or book.claim_holds(c["measured"], claim["op"], claim["threshold"]):
                        problems.append(f"{chapter}/{claim['id']}: control {name} gives "
                                        f"{'nothing' if c is None else format(c['measured'], '.4g')}: it must fail")
    assert not problems, "\n".join(problems)


def test_the_digest_reads_the_same_code_the_same_on_every_python():
    """ast.dump differs between interpreters (3.12 added empty type_params, 3.13 drops empty fields); the digest's
    canonical dump leaves out empty and None fields, so 3.11 and 3.13 key a chapter alike (checked on both)."""
    import ast

    from ptmlib.book.runner import canonical_dump

    tree = ast.parse("def f(x=None):\n    return x")
    assert canonical_dump(tree) == ("Module(body=[FunctionDef(name='f',args=arguments(args=[arg(arg='x')],"
                                    "defaults=[Constant()]),body=[Return(value=Name(id='x',ctx=Load()))])])")
    assert canonical_dump(ast.parse("y = f(1)")) != canonical_dump(ast.parse("y = f(2)"))
