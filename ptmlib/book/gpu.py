"""The book at `full` on a machine that has a CUDA PyTorch and little else: chapters as plain scripts.

A rented GPU box (or the image of a GPU cluster) usually has torch, transformers and the scientific stack but
not the notebook stack (jupytext, papermill, ipykernel, myst-nb), and often another Python (3.12, 3.13). So
the GPU check runs chapters as scripts converted beforehand:

- `pack` (here, where jupytext is installed) writes each chapter's code cells, in order, as one Python
  file `<out>/<part>/<name>.py`: the parameters cell, then one line that applies the run's parameters from
  `$PTM_PARAMS` (as papermill would inject them), then the rest. Solution cells (exercises) are left out.
- `run` (there: the standard library and ptmlib's own dependencies) executes the scripts, several at once,
  each in its own process with a deadline, and writes per chapter the claims (`<id>.claims.json`, the
  format `ptm record` reads), the log, the training runs (`<id>.train.jsonl`: steps, time, throughput, MFU)
  and the peak device memory; `summary.json` holds one row per chapter, rewritten as each one ends, so an
  interrupted check keeps what finished.

`python -m ptmlib.book.gpu run SCRIPTS --out DIR` is the command for the GPU box (no `ptm` entry point
needed: the repository on `PYTHONPATH` is enough); `ptm gpu-check` packs and runs in one go here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

PRELUDE = '''\
# Converted from chapters/{chapter}.md by `ptm gpu-check` (ptmlib.book.gpu.pack); run by `python -m ptmlib.book.gpu run`.
import atexit as _atexit, json as _json, os as _os, sys as _sys


def _ptm_stats():  # peak device memory, read by the runner
    torch = _sys.modules.get("torch")
    if torch is not None and _os.environ.get("PTM_STATS_OUT") and torch.cuda.is_initialized():
        with open(_os.environ["PTM_STATS_OUT"], "w") as f:
            _json.dump({{"peak_mem_bytes": torch.cuda.max_memory_allocated()}}, f)


_atexit.register(_ptm_stats)
chapter = {chapter!r}
'''
INJECT = 'globals().update(_json.loads(_os.environ.get("PTM_PARAMS", "{}")))  # the run\'s parameters (papermill\'s injected cell)\n'


def chapter_script(nb: Any, chapter: str) -> str:
    """One chapter's code cells as a script (see the module docstring). Raises ValueError without a parameters cell."""
    parts, injected = [PRELUDE.format(chapter=chapter)], False
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "solution" in tags:
            continue
        parts.append(f"# %% cell {i}\n{cell.source.rstrip()}\n")
        if "parameters" in tags and not injected:
            parts.append(INJECT)
            injected = True
    if not injected:
        raise ValueError(f"{chapter}: no code cell tagged 'parameters'")
    return "\n".join(parts)


def pack(root: Path, chapters: Sequence[str], out: Path) -> list[Path]:
    """Write `out/<id>.py` for each chapter (needs jupytext: run where the book is installed)."""
    from ptmlib.book.runner import chapter_path, read_chapter

    paths = []
    for chapter in chapters:
        path = out / f"{chapter}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(chapter_script(read_chapter(chapter_path(root, chapter)), chapter))
        paths.append(path)
    return paths


@dataclass
class ChapterRun:
    """One chapter's result in `summary.json`."""

    chapter: str
    ok: bool = False
    status: str = "not run"  # ok | claims failed | error | timeout | not run
    error: str = ""
    wall_s: float = 0.0
    peak_mem_gb: float | None = None
    train_runs: int = 0
    train_steps: int = 0
    train_wall_s: float = 0.0
    mfu: float | None = None  # time-weighted over the chapter's training runs that report one
    claims_passed: int = 0
    claims_total: int = 0
    failed: list[str] = field(default_factory=list)


def summarise(chapter: str, out: Path, rc: int | None, wall: float, timed_out: bool) -> ChapterRun:
    """Read what a finished (or killed) chapter process left in `out`."""
    run = ChapterRun(chapter, wall_s=round(wall, 1))
    log = out / f"{chapter}.log"
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    claims = out / f"{chapter}.claims.json"
    if claims.is_file():
        rows = json.loads(claims.read_text())
        run.claims_total = len(rows)
        run.claims_passed = sum(r["passed"] for r in rows)
        run.failed = [r["id"] for r in rows if r["kind"] != "negative" and not r["passed"]]
    stats = out / f"{chapter}.stats.json"
    if stats.is_file():
        run.peak_mem_gb = round(json.loads(stats.read_text())["peak_mem_bytes"] / 2**30, 2)
    trains = out / f"{chapter}.train.jsonl"
    if trains.is_file():
        rows = [json.loads(x) for x in trains.read_text().splitlines() if x.strip()]
        run.train_runs = len(rows)
        run.train_steps = sum(r["steps"] for r in rows)
        run.train_wall_s = round(sum(r["wall_s"] for r in rows), 1)
        timed = [(r["mfu"], r["wall_s"]) for r in rows if r.get("mfu") is not None and r["wall_s"] > 0]
        if timed:
            run.mfu = sum(m * w for m, w in timed) / sum(w for _, w in timed)
    if timed_out:
        run.status, run.error = "timeout", f"stopped at the deadline after {wall:.0f} s"
    elif rc == 0:
        run.ok, run.status = True, "ok"
    elif claims.is_file() and any("ClaimsFailed" in x for x in lines[-3:]):
        run.status, run.error = "claims failed", lines[-1] if lines else ""
    else:
        run.status, run.error = "error", lines[-1] if lines else f"exit code {rc}"
    return run


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), device_mem_gb=round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def run(scripts: Path, out: Path, chapters: Sequence[str] | None = None, *, profile: str = "full",
        budget: float = 1.0, seed: int = 0, jobs: int = 1, deadline_s: float = 3600.0, threads: int = 1,
        root: Path | None = None, echo: Any = print) -> list[ChapterRun]:
    """Execute packed chapter scripts, `jobs` at a time; stop whatever still runs at `deadline_s` after the start.
    Writes `out/summary.json` after each chapter ends. Returns one `ChapterRun` per chapter, in order."""
    chapters = list(chapters or sorted(p.relative_to(scripts).with_suffix("").as_posix() for p in scripts.rglob("*.py")))
    if missing := [c for c in chapters if not (scripts / f"{c}.py").is_file()]:
        raise ValueError(f"no packed script for {', '.join(missing)} under {scripts}")
    root = (root or Path(__file__).resolve().parents[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, "budget": budget, "seed": seed}
    repo_path = str(root)
    env_base = {**os.environ, "PTM_PARAMS": json.dumps(params), "MPLBACKEND": "Agg", "PTM_PROGRESS": "0",
                "PTM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [repo_path, os.environ.get("PYTHONPATH")]))}
    head = {"machine": machine_info(), "params": params, "jobs": jobs, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results: dict[str, ChapterRun] = {c: ChapterRun(c) for c in chapters}
    pending, running = list(chapters), {}
    t_start = time.perf_counter()

    def write() -> None:
        rows = [asdict(results[c]) for c in chapters]
        (out / "summary.json").write_text(json.dumps({**head, "chapters": rows}, indent=1) + "\n")

    def finish(chapter: str, proc: subprocess.Popen, t0: float, timed_out: bool) -> None:
        results[chapter] = summarise(chapter, out, proc.returncode, time.perf_counter() - t0, timed_out)
        r = results[chapter]
        done = sum(x.status != "not run" for x in results.values())
        mem = f", peak {r.peak_mem_gb} GiB" if r.peak_mem_gb is not None else ""
        mfu = f", MFU {r.mfu:.1%}" if r.mfu is not None else ""
        echo(f"[{done}/{len(chapters)}] {chapter}: {r.status} in {r.wall_s:.0f} s, claims {r.claims_passed}/"
             f"{r.claims_total}{mem}{mfu}" + (f"; {r.error}" if r.error and r.status != "ok" else ""))
        write()

    write()
    while pending or running:
        while pending and len(running) < jobs:
            chapter = pending.pop(0)
            for suffix in (".claims.json", ".train.jsonl", ".stats.json"):
                (out / f"{chapter}{suffix}").unlink(missing_ok=True)
            (out / chapter).parent.mkdir(parents=True, exist_ok=True)
            env = {**env_base, "PTM_CLAIMS_OUT": str((out / f"{chapter}.claims.json").resolve()),
                   "PTM_TRAIN_LOG": str((out / f"{chapter}.train.jsonl").resolve()),
                   "PTM_STATS_OUT": str((out / f"{chapter}.stats.json").resolve())}
            cwd = root / "chapters" / chapter.split("/")[0]
            log = open(out / f"{chapter}.log", "w")
            proc = subprocess.Popen([sys.executable, str((scripts / f"{chapter}.py").resolve())], cwd=cwd if cwd.is_dir()
                                    else root, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[chapter] = (proc, time.perf_counter(), log)
        time.sleep(0.5)
        late = time.perf_counter() - t_start > deadline_s
        for chapter, (proc, t0, log) in list(running.items()):
            if late and proc.poll() is None:
                proc.kill()
                proc.wait()
                log.close()
                finish(chapter, proc, t0, timed_out=True)
                del running[chapter]
            elif proc.poll() is not None:
                log.close()
                finish(chapter, proc, t0, timed_out=False)
                del running[chapter]
        if late:
            pending.clear()
    write()
    return [results[c] for c in chapters]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptmlib.book.gpu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute packed chapter scripts (no notebook stack needed)")
    r.add_argument("scripts", type=Path)
    r.add_argument("ids", nargs="*")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--profile", default="full")
    r.add_argument("--budget", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("-j", "--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="torch threads per chapter")
    r.add_argument("--deadline", type=float, default=3600.0, help="seconds; chapters still running then are stopped")
    b = sub.add_parser("bench", help="the trainer benchmarks (GPT-2 small MFU; 16 tiny models batched vs a loop)")
    b.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "bench":
        from ptmlib.book.bench import trainer_benchmarks

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "trainer.json").write_text(json.dumps(trainer_benchmarks("full"), indent=1) + "\n")
        return 0
    try:
        rows = run(args.scripts, args.out, args.ids, profile=args.profile, budget=args.budget, seed=args.seed,
                   jobs=args.jobs, deadline_s=args.deadline, threads=args.threads)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = sum(r.ok for r in rows)
    print(f"{ok} of {len(rows)} chapters passed; summary in {args.out / 'summary.json'}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
