"""`ptm`: list, run, bless, report, record, build and benchmark the book's chapters; open them in JupyterLab.

Bad input (an unknown chapter, profile or parameter, a malformed `-p`) prints one line on stderr
and exits with status 2; a failing notebook or claim exits with status 1.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ptmlib.profiles import PROFILES

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        raise UsageError(message)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is a Python literal if it parses as one, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise UsageError(f"malformed -p {text!r}: expected key=value with an identifier key")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def _parser() -> _Parser:
    p = _Parser(prog="ptm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("list", help="chapter ids in book order")
    run = sub.add_parser("run", help="execute chapters (jupytext -> papermill), one line per chapter as it ends")
    run.add_argument("chapters", nargs="*", metavar="ID")
    run.add_argument("--all", action="store_true", help="every chapter, in book order")
    run.add_argument("-j", "--jobs", type=int, default=None,
                     help="chapters at once (default: one per core at smoke, one at full)")
    run.add_argument("--profile", default=None, help="smoke | full | auto (default: the chapter's, auto)")
    run.add_argument("--seed", type=int, default=None, help="default: the chapter's, 0")
    run.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", type=Path, default=Path("_build/runs"))
    run.add_argument("--control", default=None, metavar="NAME",
                     help="run under one of the chapter's CONTROLS (every reproduction must fail); 'all': each of them")
    cal = sub.add_parser("calibrate", help="run chapters at several seeds and under their controls; record the claims "
                                            "in results/calibration/")
    _add_selection(cal)
    cal.add_argument("-j", "--jobs", type=int, default=None, help="runs at once (default: one per core)")
    cal.add_argument("--no-controls", action="store_true", help="seeds only")
    cal.add_argument("--from", dest="from_dir", type=Path, default=None, metavar="OUT",
                     help="run nothing: merge what `ptm sweep --out OUT` wrote into the calibration records")
    sw = sub.add_parser("sweep", help="chapters x seeds x profiles as tasks on Ray (local by default, or a cluster), "
                                      "into one folder that ptm calibrate --from and ptm record read")
    _add_selection(sw)
    sw.add_argument("--profiles", default="smoke", help="smoke, full or smoke,full")
    sw.add_argument("--controls", action="store_true", help="also each declared control (seed 0)")
    sw.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    sw.add_argument("-j", "--jobs", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    sw.add_argument("--out", type=Path, default=Path("_build/sweep"))
    bless = sub.add_parser("bless", help="re-execute chapters at smoke and store their golden notebooks")
    bless.add_argument("chapters", nargs="*")
    sub.add_parser("report", help="write the reproduction report page (report.md)")
    rec = sub.add_parser("record", help="record a full-profile run's claims in results/full.yml for the report")
    rec.add_argument("run_dir", type=Path, help="the --out folder of `ptm run ... --profile full`")
    rec.add_argument("--card", required=True, help='the GPU the run used, e.g. "NVIDIA H100 80GB HBM3"')
    rec.add_argument("--date", default=None, help="date of the run, YYYY-MM-DD (default: today)")
    build = sub.add_parser("build", help="run every chapter (as `ptm run --all`), then render the HTML book once")
    build.add_argument("--profile", default="auto")
    build.add_argument("-j", "--jobs", type=int, default=None)
    build.add_argument("--from-goldens", action="store_true", help="render the stored golden notebooks, no execution")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: the repository: _build/html)")
    student = sub.add_parser("student", help="write student notebooks: no solutions, no outputs")
    student.add_argument("chapters", nargs="*")
    student.add_argument("--out", type=Path, default=Path("_build/student"))
    bench = sub.add_parser("bench", help="wall time per chapter (smoke: and the training loop's overhead; full: peak "
                                         "memory and MFU too, and the trainer benchmarks)")
    bench.add_argument("chapters", nargs="*")
    bench.add_argument("--profile", default="smoke", choices=["smoke", "full"])
    bench.add_argument("--skip-chapters", action="store_true")
    bench.add_argument("--out", type=Path, default=Path("_build/bench-full"), help="full: where results go")
    gpu = sub.add_parser("gpu-check", help="every chapter at full as converted scripts (timings, memory, MFU, claims) "
                                           "plus the trainer benchmarks, into one folder that `ptm record` takes")
    gpu.add_argument("chapters", nargs="*", metavar="ID", help="default: every chapter")
    gpu.add_argument("--out", type=Path, default=Path("_build/gpu-check"))
    gpu.add_argument("-j", "--jobs", type=int, default=1, help="chapters at once on the GPU")
    gpu.add_argument("--budget", type=float, default=1.0)
    gpu.add_argument("--deadline", type=float, default=5400.0, help="seconds; chapters still running then are stopped")
    gpu.add_argument("--pack-only", action="store_true",
                     help="only write the scripts (OUT/scripts), to run elsewhere: python -m ptmlib.book.gpu run")
    gpu.add_argument("--skip-bench", action="store_true", help="no trainer benchmarks")
    lab = sub.add_parser("lab", help="JupyterLab at the repository root, chapters open as notebooks")
    lab.add_argument("--port", type=int, default=None, help="default: Jupyter's, 8888 (or the next free one)")
    lab.add_argument("--ip", default=None, help="address to listen on (default: localhost)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser (a remote machine)")
    return p


def _add_selection(p: argparse.ArgumentParser) -> None:
    """Chapter ids or --all, and the seeds (calibrate, sweep)."""
    p.add_argument("chapters", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every chapter, in book order")
    p.add_argument("--seeds", default="0-9", help="e.g. 0-9 (default) or 0,3,5")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _dispatch(args)
    except UsageError as exc:
        print(f"ptm: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


def _dispatch(args: argparse.Namespace) -> int:
    from ptmlib.book import runner as book
    from ptmlib.paths import repo_root

    try:
        root = repo_root()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    ids = book.chapter_ids(root)

    def check_ids(chosen: list[str]) -> list[str]:
        for c in chosen:
            if c not in ids:
                raise UsageError(f"unknown chapter {c!r}; known: {', '.join(ids)}")
        return chosen or ids

    if args.cmd == "list":
        print("\n".join(ids))
        return 0
    if args.cmd == "run":
        if args.all and args.chapters:
            raise UsageError("give chapter ids or --all, not both")
        if not args.all and not args.chapters:
            raise UsageError("give one or more chapter ids, or --all")
        chosen = ids if args.all else check_ids(args.chapters)
        params = dict(parse_assignment(a) for a in args.params)
        for flag in ("profile", "seed"):
            if getattr(args, flag) is not None:
                if flag in params and params[flag] != getattr(args, flag):
                    raise UsageError(f"--{flag} {getattr(args, flag)} and -p {flag}={params[flag]!r} disagree")
                params[flag] = getattr(args, flag)
        jobs = _jobs(args.jobs, params.get("profile", "auto"))
        try:
            if args.control:
                return _run_controls(root, chosen, args.out, params, args.control, jobs)
            results = book.run_many(root, chosen, args.out, params, jobs=jobs)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        for res in results:
            print(f"  {res.chapter} -> {res.notebook}")
        return 0 if all(r.ok for r in results) else 1
    if args.cmd == "calibrate":
        from ptmlib.book.calibrate import calibrate, parse_seeds

        if args.from_dir is not None:
            from ptmlib.book.sweep import merge_into_calibration

            if not args.from_dir.is_dir():
                raise UsageError(f"no sweep folder {args.from_dir}")
            merged = merge_into_calibration(root, args.from_dir)
            print(f"merged the sweep's runs of {len(merged)} chapter(s) into results/calibration/: {', '.join(merged)}")
            return 0
        if args.all == bool(args.chapters):
            raise UsageError("give chapter ids or --all (one of them)")
        chosen = ids if args.all else check_ids(args.chapters)
        try:
            seeds = parse_seeds(args.seeds)
            records = calibrate(root, chosen, seeds, jobs=_jobs(args.jobs, "smoke"), controls=not args.no_controls)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        bad = [(c, s) for c, r in records.items() for s, e in {**r["runs"], **r["controls"]}.items() if not e["ok"]]
        for c, s in bad:
            print(f"  not ok: {c} {'seed ' + s if s.isdigit() else 'control ' + s}")
        return 1 if bad else 0
    if args.cmd == "sweep":
        from ptmlib.book.calibrate import parse_seeds
        from ptmlib.book.sweep import sweep

        if args.all == bool(args.chapters):
            raise UsageError("give chapter ids or --all (one of them)")
        profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
        if not profiles or set(profiles) - {"smoke", "full"}:
            raise UsageError(f"--profiles takes smoke, full or smoke,full; got {args.profiles!r}")
        if args.jobs is not None and args.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        try:
            results = sweep(root, ids if args.all else check_ids(args.chapters), parse_seeds(args.seeds), profiles,
                            args.out, controls=args.controls, address=args.address, num_cpus=args.jobs)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        failed = [t for t, e in results.items() if not e.get("claims")]
        for t in failed:
            print(f"  failed: {t}: {results[t].get('error')}")
        return 1 if failed else 0
    if args.cmd == "bless":
        status = 0
        for c in check_ids(args.chapters):
            status |= _report_run(book.bless(root, c))
        from ptmlib.book.report import write_report

        write_report(root)
        return status
    if args.cmd == "report":
        from ptmlib.book.report import write_report

        print(write_report(root))
        return 0
    if args.cmd == "record":
        from ptmlib.book.report import RECORDED, record

        try:
            rows = record(root, args.run_dir, args.card, args.date)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        print(f"recorded {len(rows)} full-profile claim(s) from {len(set(r['chapter'] for r in rows))} chapter(s) "
              f"in {RECORDED}")
        return 0
    if args.cmd == "build":
        return _build(root, args.from_goldens, args.out, args.profile, args.jobs)
    if args.cmd == "student":
        from ptmlib.book.student import write_student

        for path in write_student(root, check_ids(args.chapters), args.out):
            print(path)
        return 0
    if args.cmd == "bench":
        from ptmlib.book.bench import run_benchmarks

        chosen = [] if args.skip_chapters else check_ids(args.chapters)
        if args.profile == "full":
            return _gpu_check(root, chosen, args.out, jobs=1, budget=1.0, deadline=5400.0, pack_only=False, bench=True)
        return run_benchmarks(root, chosen)
    if args.cmd == "gpu-check":
        return _gpu_check(root, check_ids(args.chapters), args.out, args.jobs, args.budget, args.deadline,
                          args.pack_only, bench=not args.skip_bench)
    if args.cmd == "lab":
        return _lab(root, args.port, args.ip, not args.no_browser)
    raise UsageError(f"unknown command {args.cmd!r}")  # pragma: no cover


def _gpu_check(root: Path, chapters: list[str], out: Path, jobs: int, budget: float, deadline: float,
               pack_only: bool, bench: bool) -> int:
    """`ptm gpu-check` / `ptm bench --profile full`: pack the chapters as scripts, run the trainer benchmarks,
    then the chapters at full (see ptmlib.book.gpu)."""
    import json

    from ptmlib.book import gpu

    if jobs < 1 or budget <= 0 or deadline <= 0:
        raise UsageError("--jobs, --budget and --deadline must be positive")
    scripts = out / "scripts"
    gpu.pack(root, chapters, scripts)
    print(f"packed {len(chapters)} chapter(s) as scripts in {scripts}")
    if pack_only:
        print(f"run them where the GPU is: PYTHONPATH=<repo> python -m ptmlib.book.gpu run {scripts} --out <dir> -j N")
        return 0
    if bench:
        from ptmlib.book.bench import trainer_benchmarks

        (out / "trainer.json").write_text(json.dumps(trainer_benchmarks("full"), indent=1) + "\n")
    rows = gpu.run(scripts, out, chapters, budget=budget, jobs=jobs, deadline_s=deadline, root=root) if chapters else []
    print(f"{sum(r.ok for r in rows)} of {len(rows)} chapters passed at full; record them with: "
          f"ptm record {out} --card \"<GPU name>\"")
    return 0 if all(r.ok for r in rows) else 1


def _lab(root: Path, port: int | None, ip: str | None, browser: bool) -> NoReturn:
    """`ptm lab`: check the input and the environment, then become the JupyterLab server (never returns)."""
    from ptmlib.book import lab

    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if ip is not None and not ip.strip():
        raise UsageError("--ip must not be empty")
    if not lab.jupyterlab_installed():
        raise UsageError("JupyterLab or jupytext is not installed in this environment: run `make install`")
    lab.start(root, port=port, ip=ip, browser=browser)


def _run_controls(root: Path, chapters: list[str], out: Path, params: dict[str, Any], control: str, jobs: int) -> int:
    """`ptm run ID... --control NAME|all`: each chapter under its control(s); exit 1 unless every reproduction failed."""
    from ptmlib.book import runner as book

    status = 0
    for c in chapters:
        nb = book.read_chapter(book.chapter_path(root, c))
        names = list(book.control_table(nb)) if control == "all" else [control]
        if not names:
            raise UsageError(f"{c} declares no CONTROLS")
        for name in names:
            res = book.run_chapter(root, c, out / "controls" / name, book.control_params(nb, c, name, params))
            status |= _report_run(res)
    return status


def _report_run(res: Any) -> int:
    print(f"{res.line()} -> {res.notebook}")
    return 0 if res.ok else 1


def _jobs(jobs: int | None, profile: Any) -> int:
    from ptmlib.book import runner as book

    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return jobs or book.default_jobs(profile)


def _build(root: Path, from_goldens: bool, out: Path | None, profile: str = "auto", jobs: int | None = None) -> int:
    """Run every chapter through papermill (or take the goldens), write the report, render the HTML once."""
    import time

    from ptmlib.book import runner as book
    from ptmlib.book.report import write_report

    status = 0
    if from_goldens:
        executed = root / book.GOLDEN_DIR
    else:
        executed = root / book.RUNS_DIR
        results = book.run_many(root, book.chapter_ids(root), executed, {"profile": profile}, jobs=_jobs(jobs, profile))
        if failed := [r for r in results if not r.ok]:
            print("failed: " + "; ".join(r.line() for r in failed), file=sys.stderr)
            status = 1
    write_report(root)
    src = book.stage_notebooks(root, executed, root / "_build" / "staging")
    t0 = time.perf_counter()
    print("rendering the HTML book (execution off) ...", flush=True)
    proc = book.build_html(src, out or (root / "_build" / "goldens" if from_goldens else root))
    print(f"rendered in {time.perf_counter() - t0:.0f} s", flush=True)
    return _finish_build(proc) or status


def _finish_build(proc: Any) -> int:
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-8000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
