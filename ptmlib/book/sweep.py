"""`ptm sweep`: chapters x seeds x profiles (and controls) as tasks on Ray, one results folder.

Ray is the ecosystem's engine for spreading Python work over the cores and GPUs of one machine or of a
cluster. With no address a local Ray starts on this machine: one task per CPU core at `smoke` (each
chapter uses one torch thread), one task per GPU at `full`. `--address` (e.g. `ray://head:10001` or
`auto`) uses a running cluster whose workers have the book installed at the same path.

Each task runs one chapter through the same path as `ptm run` (papermill) and writes, under `out`:
`<profile>/<label>/<chapter>.ipynb` and `.claims.json` (label `seed3` or the control's name) and
`<profile>/<label>/<chapter>.entry.json` (the record `ptm calibrate` keeps: ok, seconds, each claim, the
chapter's code digest). A task whose entry exists is not run again, so a restarted sweep does only what
is left; a task that fails without reaching its scorecard is retried once, then reported by id.
`ptm calibrate --from OUT` merges the entries into the calibration records; `ptm record OUT/full/seed0`
records a full-profile seed for the report.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ptmlib.book import runner


@dataclass(frozen=True)
class Task:
    chapter: str
    profile: str  # "smoke" | "full"
    label: str  # "seed3" or a control's name (run at seed 0)
    params: tuple[tuple[str, Any], ...]  # the run's parameters, as `ptm run -p` would pass them

    @property
    def id(self) -> str:
        return f"{self.chapter}@{self.profile}/{self.label}"

    def entry_path(self, out: Path) -> Path:
        return out / self.profile / self.label / f"{self.chapter}.entry.json"


def plan(root: Path, chapters: Sequence[str], seeds: Iterable[int], profiles: Sequence[str], controls: bool) -> list[Task]:
    """Every (chapter, profile, seed) and, with `controls`, each declared control at seed 0; parameters are
    checked (`runner.check_parameters`) before anything runs."""
    tasks = []
    for chapter in chapters:
        nb = runner.read_chapter(runner.chapter_path(root, chapter))
        for profile in profiles:
            runs = [(f"seed{s}", {"profile": profile, "seed": s}) for s in seeds]
            if controls:
                runs += [(name, runner.control_params(nb, chapter, name, {"profile": profile, "seed": 0}))
                         for name in runner.control_table(nb)]
            for label, params in runs:
                runner.check_parameters(nb, chapter, params)
                tasks.append(Task(chapter, profile, label, tuple(sorted(params.items()))))
    return tasks


def run_task(root: Path, task: Task, out: Path) -> dict[str, Any]:
    """Run one task (papermill, as `ptm run`) and write its entry; returns the entry."""
    from ptmlib.book.calibrate import _entry

    folder = out / task.profile / task.label
    res = runner.run_chapter(root, task.chapter, folder, dict(task.params))
    nb = runner.read_chapter(runner.chapter_path(root, task.chapter))
    entry = {"task": task.id, "chapter": task.chapter, "profile": task.profile, "label": task.label,
             "params": dict(task.params), "digest": runner.chapter_digest(nb), **_entry(res)}
    path = task.entry_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def finished(entry: dict[str, Any]) -> bool:
    """A task is done when its chapter reached the scorecard (claims recorded), whether they passed or not."""
    return bool(entry.get("claims"))


def execute(tasks: list[Task], submit: Callable[[Task], Any], wait: Callable[[list[Any]], tuple[Any, dict]],
            retries: int = 1, echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Submit every task, collect entries as they finish, resubmit a task that did not reach its scorecard up
    to `retries` times. `submit(task) -> handle`; `wait(handles) -> (handle, entry)` for one finished handle.
    Returns {task id: last entry}."""
    pending = {submit(t): (t, 0) for t in tasks}
    results: dict[str, dict[str, Any]] = {}
    done = 0
    while pending:
        handle, entry = wait(list(pending))
        task, tries = pending.pop(handle)
        if not finished(entry) and tries < retries:
            echo(f"retrying {task.id}: {entry.get('error') or 'no claims'}")
            pending[submit(task)] = (task, tries + 1)
            continue
        done += 1
        results[task.id] = entry
        status = "ok" if entry.get("ok") else ("claims failed" if finished(entry) else f"FAILED: {entry.get('error')}")
        echo(f"[{done}/{len(tasks)}] {task.id}: {status} in {entry.get('wall_s', 0):.0f} s")
    return results


def sweep(root: Path, chapters: Sequence[str], seeds: Iterable[int], profiles: Sequence[str], out: Path, *,
          controls: bool = False, address: str | None = None, num_cpus: int | None = None,
          echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run the plan on Ray (see the module docstring). Returns {task id: entry}, the skipped ones included."""
    import ray

    out = out.resolve()
    tasks = plan(root, chapters, seeds, profiles, controls)
    results, todo = {}, []
    for t in tasks:
        path = t.entry_path(out)
        entry = json.loads(path.read_text()) if path.is_file() else None
        if entry and finished(entry) and entry.get("digest") == runner.chapter_digest(
                runner.read_chapter(runner.chapter_path(root, t.chapter))):
            results[t.id] = entry
        else:
            todo.append(t)
    echo(f"{len(tasks)} task(s): {len(results)} already done, {len(todo)} to run")
    if not todo:
        return results
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        remote = ray.remote(run_task)

        def submit(t: Task) -> Any:
            need = {"num_gpus": 1, "num_cpus": 1} if t.profile == "full" and gpus else {"num_cpus": 1}
            return remote.options(**need, max_retries=0).remote(root, t, out)

        def wait(handles: list[Any]) -> tuple[Any, dict]:
            ready, _ = ray.wait(handles, num_returns=1)
            try:
                return ready[0], ray.get(ready[0])
            except Exception as exc:  # a worker that died: a failed task with its reason
                return ready[0], {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                                  "claims": {}, "wall_s": 0.0}

        t0 = time.perf_counter()
        results.update(execute(todo, submit, wait, echo=echo))
        echo(f"{len(todo)} task(s) in {time.perf_counter() - t0:.0f} s on Ray "
             f"({ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus:.0f} GPUs)")
    finally:
        ray.shutdown()
    return results


def merge_into_calibration(root: Path, out: Path, echo: Callable[[str], None] = print) -> list[str]:
    """`ptm calibrate --from OUT`: add the sweep's entries to `results/calibration/<profile>/<chapter>.json`
    (seed runs and control runs), keeping only entries made by the chapter's current code. Returns the chapters."""
    from ptmlib.book.calibrate import _save, fresh_record

    records: dict[tuple[str, str], dict[str, Any]] = {}
    stale = 0
    for path in sorted(out.glob("*/*/**/*.entry.json")):
        e = json.loads(path.read_text())
        key = (e["chapter"], e["profile"])
        if key not in records:
            records[key] = fresh_record(root, e["chapter"], e["profile"])
        rec = records[key]
        if e["digest"] != rec["digest"]:
            stale += 1
            continue
        body = {k: e[k] for k in ("ok", "wall_s", "error", "claims")}
        if e["params"].get("control"):
            rec["controls"][e["label"]] = {"overrides": {k: v for k, v in e["params"].items()
                                                         if k not in ("profile", "seed", "control")}, **body}
        else:
            rec["runs"][str(e["params"]["seed"])] = body
    import datetime

    for rec in records.values():
        rec["date"] = datetime.date.today().isoformat()
        _save(root, rec)
    if stale:
        echo(f"{stale} entr{'y' if stale == 1 else 'ies'} made by older code of their chapter: not merged")
    return sorted({c for c, _ in records})
