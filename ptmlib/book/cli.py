"""`ptm`: list, run, bless, report, record, build and benchmark the book's chapters.

Bad input (an unknown chapter, profile or parameter, a malformed `-p`) prints one line on stderr
and exits with status 2; a failing notebook or claim exits with status 1.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Sequence

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
    run = sub.add_parser("run", help="execute one chapter (jupytext -> papermill)")
    run.add_argument("chapter")
    run.add_argument("--profile", default=None, help="smoke | full | auto (default: the chapter's, auto)")
    run.add_argument("--seed", type=int, default=None, help="default: the chapter's, 0")
    run.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", type=Path, default=Path("_build/runs"))
    bless = sub.add_parser("bless", help="re-execute chapters at smoke and store their golden notebooks")
    bless.add_argument("chapters", nargs="*")
    sub.add_parser("report", help="write the reproduction report page (report.md)")
    rec = sub.add_parser("record", help="record a full-profile run's claims in results/full.yml for the report")
    rec.add_argument("run_dir", type=Path, help="the --out folder of `ptm run ... --profile full`")
    rec.add_argument("--card", required=True, help='the GPU the run used, e.g. "NVIDIA H100 80GB HBM3"')
    rec.add_argument("--date", default=None, help="date of the run, YYYY-MM-DD (default: today)")
    build = sub.add_parser("build", help="build the HTML book (executes chapters at the auto profile)")
    build.add_argument("--from-goldens", action="store_true", help="render the stored golden notebooks, no execution")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: _build)")
    student = sub.add_parser("student", help="write student notebooks: no solutions, no outputs")
    student.add_argument("chapters", nargs="*")
    student.add_argument("--out", type=Path, default=Path("_build/student"))
    bench = sub.add_parser("bench", help="smoke wall time per chapter and the training loop's overhead")
    bench.add_argument("chapters", nargs="*")
    bench.add_argument("--skip-chapters", action="store_true")
    return p


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
        check_ids([args.chapter])
        params = dict(parse_assignment(a) for a in args.params)
        for flag in ("profile", "seed"):
            if getattr(args, flag) is not None:
                if flag in params and params[flag] != getattr(args, flag):
                    raise UsageError(f"--{flag} {getattr(args, flag)} and -p {flag}={params[flag]!r} disagree")
                params[flag] = getattr(args, flag)
        try:
            res = book.run_chapter(root, args.chapter, args.out, params)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        return _report_run(res)
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
        return _build(root, args.from_goldens, args.out)
    if args.cmd == "student":
        from ptmlib.book.student import write_student

        for path in write_student(root, check_ids(args.chapters), args.out):
            print(path)
        return 0
    if args.cmd == "bench":
        from ptmlib.book.bench import run_benchmarks

        return run_benchmarks(root, [] if args.skip_chapters else check_ids(args.chapters))
    raise UsageError(f"unknown command {args.cmd!r}")  # pragma: no cover


def _report_run(res: Any) -> int:
    verdict = "ok" if res.ok else f"FAILED {res.error}".rstrip()
    print(f"{res.chapter}: {verdict} in {res.wall_s:.1f} s -> {res.notebook}")
    return 0 if res.ok else 1


def _build(root: Path, from_goldens: bool, out: Path | None) -> int:
    from ptmlib.book import runner as book
    from ptmlib.book.report import write_report

    write_report(root)
    if from_goldens:
        src = book.stage_goldens(root, root / "_build" / "staging")
        proc = book.build_html(src, out or root / "_build" / "goldens")
        return _finish_build(proc)
    proc = book.build_html(root, out)  # executes the chapters (cache), writing their claims
    if proc.returncode == 0:
        write_report(root)  # now with this build's claims
        proc = book.build_html(root, out)
    return _finish_build(proc)


def _finish_build(proc: Any) -> int:
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-8000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
