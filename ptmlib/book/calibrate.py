"""`ptm calibrate`: run chapters over seeds (and under their controls) and record every claim's value.

The record, `results/calibration/smoke/<chapter>.json`, is keyed by the chapter's code (`chapter_digest`):
a chapter whose computation changed is recalibrated from scratch; thresholds and wording may change
without a new calibration. Each run is written as soon as it ends, so an interrupted calibration keeps
what it finished and a rerun skips the seeds already recorded for the same code.
"""
from __future__ import annotations

import datetime
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from ptmlib.book import runner
from ptmlib.claims import CALIBRATION_DIR, load_claims

SEEDS = tuple(range(10))


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,3,5' or '0-4,10' -> sorted seed list; `ValueError` in one line otherwise."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"seeds must look like 0-9 or 0,3,5; got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be non-negative; got {text!r}")
    return sorted(seeds)


def record_path(root: Path, chapter: str, profile: str = "smoke") -> Path:
    return root / CALIBRATION_DIR / profile / f"{chapter}.json"


def load_record(root: Path, chapter: str, profile: str = "smoke") -> dict[str, Any] | None:
    path = record_path(root, chapter, profile)
    return json.loads(path.read_text()) if path.is_file() else None


def fresh_record(root: Path, chapter: str, profile: str = "smoke") -> dict[str, Any]:
    """The chapter's record if it was made from the current code, else a new empty one."""
    from ptmlib.train import source_digest

    digest = runner.chapter_digest(runner.read_chapter(runner.chapter_path(root, chapter)))
    rec = load_record(root, chapter, profile)
    if rec is None or rec.get("digest") != digest:
        rec = {"chapter": chapter, "profile": profile, "digest": digest, "runs": {}, "controls": {}}
    rec["library"] = source_digest()
    return rec


def _save(root: Path, rec: dict[str, Any]) -> None:
    path = record_path(root, rec["chapter"], rec["profile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    rec["runs"] = dict(sorted(rec["runs"].items(), key=lambda kv: int(kv[0])))
    path.write_text(json.dumps(rec, indent=1) + "\n")


def _entry(res: runner.RunResult) -> dict[str, Any]:
    rows = load_claims(res.claims) if res.claims.is_file() else []
    return {"ok": res.ok, "wall_s": round(res.wall_s, 1), "error": res.error,
            "claims": {r["id"]: {"kind": r["kind"], "measured": r["measured"], "op": r["op"],
                                 "threshold": r["threshold"], "passed": r["passed"]} for r in rows}}


def _task(args: tuple[Path, str, dict[str, Any], Path]) -> runner.RunResult:
    root, chapter, params, out = args
    return runner.run_chapter(root, chapter, out, params)


def calibrate(root: Path, chapters: list[str], seeds: list[int], jobs: int = 1, controls: bool = True,
              echo: Callable[..., Any] = print) -> dict[str, dict[str, Any]]:
    """Run every chapter at every seed (smoke) and, with `controls`, once under each declared control (seed 0);
    record each run in the chapter's calibration file as it ends. Returns the records by chapter."""
    records = {c: fresh_record(root, c) for c in chapters}
    tasks: list[tuple[str, dict[str, Any], str]] = []
    for c in chapters:
        nb = runner.read_chapter(runner.chapter_path(root, c))
        todo = [s for s in seeds if not records[c]["runs"].get(str(s), {}).get("ok")]  # new seeds, and failed ones again
        mine = [(c, {"profile": "smoke", "seed": s}, f"seed {s}") for s in todo]
        if controls:
            mine += [(c, runner.control_params(nb, c, name, {"profile": "smoke", "seed": 0}), name)
                     for name in runner.control_table(nb)]
        for _, params, _ in mine:  # every parameter is checked before the first kernel starts
            runner.check_parameters(nb, c, params)
        tasks += mine
        if skipped := len(seeds) - len(todo):
            echo(f"{c}: {skipped} seed(s) already recorded ok for this code, skipped", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = [(root, c, p, Path(tmp) / f"{i}") for i, (c, p, _) in enumerate(tasks)]
        with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(tasks) or 1))) as pool:
            futures = {pool.submit(_task, a): t for a, t in zip(args, tasks)}
            for i, fut in enumerate(as_completed(futures), 1):
                c, params, label = futures[fut]
                res = fut.result()
                rec = records[c]
                if params.get("control"):
                    rec["controls"][label] = {"overrides": {k: v for k, v in params.items()
                                                            if k not in ("profile", "seed", "control")}, **_entry(res)}
                else:
                    res.seed = params["seed"]
                    rec["runs"][str(params["seed"])] = _entry(res)
                rec["date"] = datetime.date.today().isoformat()
                _save(root, rec)
                echo(f"[{i}/{len(tasks)}] {res.line()}", flush=True)
    echo(f"{len(tasks)} runs in {time.perf_counter() - t0:.0f} s (jobs={jobs})", flush=True)
    from ptmlib.book.bench import record_time

    for c, rec in records.items():
        walls = [r["wall_s"] for r in rec["runs"].values() if r["claims"]]  # ran to its scorecard, pass or fail
        if len(walls) >= 3:
            record_time(root, c, "smoke", statistics.median(walls),
                        f"median of {len(walls)} seeds in ptm calibrate -j {jobs}")
    return records


def values(rec: dict[str, Any], claim_id: str) -> list[float]:
    """A claim's measured values over the recorded seeds, in seed order."""
    return [r["claims"][claim_id]["measured"] for r in rec["runs"].values() if claim_id in r["claims"]]
