"""`ptm sweep` on a local Ray: tasks planned and checked, failed ones retried once, finished ones not re-run,
and what it writes is what `ptm calibrate --from` and the calibration records read."""
import json
from pathlib import Path

import pytest

from ptmlib.book import sweep

ROOT = Path(__file__).resolve().parents[1]


def test_plan_covers_seeds_profiles_and_controls_and_checks_parameters():
    tasks = sweep.plan(ROOT, ["icl/pfn"], [0, 1], ["smoke", "full"], controls=True)
    labels = [(t.profile, t.label) for t in tasks]
    assert labels == [("smoke", "seed0"), ("smoke", "seed1"), ("smoke", "cut_to_1pct"),
                      ("full", "seed0"), ("full", "seed1"), ("full", "cut_to_1pct")]
    assert dict(tasks[2].params) == {"profile": "smoke", "seed": 0, "budget": 0.01, "control": "cut_to_1pct"}
    with pytest.raises(ValueError):
        sweep.plan(ROOT, ["icl/pfn"], [-1], ["smoke"], controls=False)


def test_a_task_that_fails_is_retried_once_then_reported():
    tasks = [sweep.Task("a/x", "smoke", "seed0", ()), sweep.Task("a/y", "smoke", "seed0", ())]
    calls = []
    outcome = {"a/x": [{"ok": False, "error": "kernel died", "claims": {}},
                       {"ok": True, "claims": {"c": {}}, "wall_s": 1.0}],
               "a/y": [{"ok": False, "error": "boom", "claims": {}}, {"ok": False, "error": "boom", "claims": {}}]}

    def submit(task):
        calls.append(task.chapter)
        return (task.chapter, len(calls))

    def wait(handles):
        chapter, _ = handles[0]
        return handles[0], outcome[chapter].pop(0)

    lines = []
    results = sweep.execute(tasks, submit, wait, retries=1, echo=lines.append)
    assert sorted(calls) == ["a/x", "a/x", "a/y", "a/y"]  # each tried twice, no more
    assert results["a/x@smoke/seed0"]["ok"] and results["a/y@smoke/seed0"]["error"] == "boom"
    assert any("FAILED: boom" in line for line in lines)


@pytest.mark.slow
def test_local_ray_sweep_runs_resumes_and_feeds_calibration(tmp_path, monkeypatch):
    """Two chapters x two seeds on a local Ray of 2 CPUs; a second sweep runs nothing; the entries merge into
    calibration records (written to a copy of the results folder, not the repository's)."""
    chapters = ["peft/interpretable_adaptation", "icl/pretraining_theory"]
    out = tmp_path / "sweep"
    lines = []
    first = sweep.sweep(ROOT, chapters, [0, 1], ["smoke"], out, num_cpus=2, echo=lines.append)
    assert len(first) == 4 and all(e["claims"] for e in first.values()), lines
    golden = json.loads((ROOT / "tests/golden/peft/interpretable_adaptation.claims.json").read_text())
    seed0 = first["peft/interpretable_adaptation@smoke/seed0"]["claims"]
    assert {c["id"]: c["measured"] for c in golden} == {k: v["measured"] for k, v in seed0.items()}
    assert (out / "smoke/seed1/icl/pretraining_theory.ipynb").is_file()

    again = []
    second = sweep.sweep(ROOT, chapters, [0, 1], ["smoke"], out, num_cpus=2, echo=again.append)
    assert again == ["4 task(s): 4 already done, 0 to run"] and second == first

    book = tmp_path / "book"  # calibrate --from writes into the book's results/: use a throwaway book root
    for name in ("_toc.yml", "chapters", "results"):
        src = ROOT / name
        (book / name).parent.mkdir(parents=True, exist_ok=True)
        import shutil
        (shutil.copytree if src.is_dir() else shutil.copy)(src, book / name)
    merged = sweep.merge_into_calibration(book, out, echo=lambda s: None)
    assert merged == sorted(chapters)
    rec = json.loads((book / "results/calibration/smoke/icl/pretraining_theory.json").read_text())
    for seed in ("0", "1"):
        assert rec["runs"][seed]["claims"] == first[f"icl/pretraining_theory@smoke/seed{seed}"]["claims"]
