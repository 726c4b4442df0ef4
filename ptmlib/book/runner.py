"""The book as a set of executable chapters: ids, conversion, execution, goldens, the HTML build.

A chapter id is its path under `chapters/` without `.md` (e.g. `icl/linear_regression`); the book
order is the order of `_toc.yml`. Chapters are MyST-markdown notebooks: jupytext converts them, and
papermill executes them with the parameters cell overridden.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

GOLDEN_DIR = Path("tests") / "golden"
RUNS_DIR = Path("_build") / "runs"  # `ptm run` and `make book` write executed chapters and their claims here
VOLATILE_METADATA = ("papermill", "execution")


def chapter_ids(root: Path) -> list[str]:
    """Chapter ids in book order, read from `_toc.yml` (entries under `chapters/` only)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    ids = [f.removesuffix(".md").removeprefix("chapters/") for f in files if f.startswith("chapters/")]
    return [i for i in ids if (root / "chapters" / f"{i}.md").is_file()]


def chapter_parts(root: Path) -> dict[str, str]:
    """{chapter id: caption of its part in `_toc.yml`} (e.g. "Part I. In-context learning theory")."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    ids = set(chapter_ids(root))
    parts = {}
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            chapter = str(entry.get("file", "")).removesuffix(".md").removeprefix("chapters/")
            if chapter in ids:
                parts[chapter] = str(part.get("caption", ""))
    return parts


def chapter_path(root: Path, chapter: str) -> Path:
    """The source file of a chapter; `ValueError` naming the known ids if there is none."""
    ids = chapter_ids(root)
    if chapter not in ids:
        raise ValueError(f"unknown chapter {chapter!r}; known: {', '.join(ids)}")
    return root / "chapters" / f"{chapter}.md"


def read_chapter(path: Path) -> Any:
    """The chapter as an nbformat notebook (jupytext)."""
    import jupytext

    return jupytext.read(path)


def parameters(path: Path) -> dict[str, Any]:
    """Names and default values of the chapter's parameters cell (`papermill.inspect_notebook`)."""
    import tempfile

    import nbformat
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        nb_path = path
        if path.suffix == ".md":  # papermill reads .ipynb: convert the MyST chapter first
            nb_path = Path(tmp) / f"{path.stem}.ipynb"
            nbformat.write(read_chapter(path), nb_path)
        found = papermill.inspect_notebook(str(nb_path))
    if not found:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    return {name: ast.literal_eval(spec["default"]) for name, spec in found.items()}


def _literal(nb: Any, name: str) -> dict[str, Any]:
    """A top-level `NAME = {...}` literal dict in the chapter's code, read without running it ({} if absent)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
                return ast.literal_eval(node.value)
    return {}


def knob_table(nb: Any) -> dict[str, dict[str, Any]]:
    """The chapter's `KNOBS = {...}` table, read from its source (a literal dict), without running it."""
    return _literal(nb, "KNOBS")


def control_table(nb: Any) -> dict[str, dict[str, Any]]:
    """The chapter's `CONTROLS = {name: {parameter: value}}`: the runs under which every reproduction must fail."""
    return _literal(nb, "CONTROLS")


def control_params(nb: Any, chapter: str, control: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with the named control's overrides applied (the control wins) and `control` set; `ValueError`
    for a control the chapter does not declare."""
    table = control_table(nb)
    if control not in table:
        raise ValueError(f"unknown control {control!r} for {chapter}; declared: {', '.join(table) or 'none'}")
    return {**params, **table[control], "control": control}


_CLAIM_WORDING = ("kind", "paper", "statement", "threshold", "paper_value")
_SHOW_ONLY = ("print", "glue", "display")  # statements that only show a value: they do not change what is measured


def chapter_digest(nb: Any) -> str:
    """sha256 of what a chapter computes: its code cells (not solutions, not papermill's injected cell), parsed,
    with comments, `print`/`glue`/`display` statements and the wording and thresholds of `card.claim(...)` calls
    removed, so re-wording a claim, gluing a number or setting a threshold from the calibration keeps the key, and
    any change to what is measured changes it."""
    import hashlib

    class Strip(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
            call = node.value
            if isinstance(call, ast.Call):
                name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
                if name in _SHOW_ONLY:
                    return None
            return self.generic_visit(node)

        def visit_Call(self, node: ast.Call) -> ast.AST:
            self.generic_visit(node)
            if isinstance(node.func, ast.Attribute) and node.func.attr == "claim":
                node.keywords = [k for k in node.keywords if k.arg not in _CLAIM_WORDING]
            return node

    h = hashlib.sha256()
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "injected-parameters" in tags or "solution" in tags:
            continue
        tree = Strip().visit(ast.parse(cell.source))
        h.update(canonical_dump(tree).encode())
    return h.hexdigest()


def canonical_dump(node: Any) -> str:
    """`ast.dump` made the same on every Python from 3.11: fields that are None or empty are left out (3.13's
    dump drops them, 3.12 added empty `type_params`), so a chapter's digest does not depend on the interpreter."""
    if isinstance(node, ast.AST):
        parts = [f"{f}={canonical_dump(v)}" for f in node._fields
                 if (v := getattr(node, f, None)) is not None and not (isinstance(v, list) and not v)]
        return f"{type(node).__name__}({','.join(parts)})"
    if isinstance(node, list):
        return "[" + ",".join(canonical_dump(x) for x in node) + "]"
    return repr(node)


def check_parameters(nb: Any, chapter: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `ptm run` parameters against the chapter before any kernel starts and return papermill's
    parameters: `profile`, `seed`, `budget`, the chapter id and a `knobs` dict of the knob overrides.
    `ValueError` in one line for an unknown name, a wrong type or a bad value."""
    from ptmlib.profiles import resolve_profile

    table = knob_table(nb)
    base = {k: v for k, v in params.items() if k in ("profile", "seed", "budget")}
    knobs = dict(params.get("knobs") or {})
    for key, value in params.items():
        if key in ("profile", "seed", "budget", "knobs", "control"):
            continue
        if key not in table:
            allowed = ", ".join(["profile", "seed", "budget", *table])
            raise ValueError(f"unknown parameter {key!r} for {chapter}; allowed: {allowed}")
        knobs[key] = value
    resolve_profile(base.get("profile", "auto"), seed=base.get("seed", 0), budget=base.get("budget", 1.0),
                    knobs=table, overrides=knobs, cuda_available=False)
    out = {**base, "knobs": knobs, "chapter": chapter}
    if params.get("control"):
        if params["control"] not in control_table(nb):
            raise ValueError(f"unknown control {params['control']!r} for {chapter}; "
                             f"declared: {', '.join(control_table(nb)) or 'none'}")
        out["control"] = params["control"]
    return out


def claim_holds(measured: float, op: str, threshold: float) -> bool:
    """Whether `measured <op> threshold` holds (NaN never does): the test `card.claim` applies."""
    import math

    from ptmlib.claims import OPS

    return math.isfinite(measured) and bool(OPS[op](measured, threshold))


def code_cells(nb: Any) -> list[str]:
    """The source of every code cell except papermill's injected-parameters cell."""
    return [c.source.strip() for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


@dataclass
class RunResult:
    chapter: str
    ok: bool
    wall_s: float
    notebook: Path
    claims: Path
    error: str = ""
    passed: int = 0  # claims that passed
    total: int = 0  # claims recorded
    failed: tuple[str, ...] = ()  # ids of the claims that failed (in a control run: reproductions that passed)
    control: str = ""  # the control run's name, "" for a normal run
    seed: int | None = None

    def line(self) -> str:
        """One line for the terminal: id, verdict, seconds, claims passed (and which failed)."""
        verdict = "ok" if self.ok else "FAILED"
        name = self.chapter + (f" seed={self.seed}" if self.seed is not None else "")
        if self.control:
            claims = f"reproductions failed {self.total - self.passed}/{self.total}" if self.total else "no claims"
            extra = f"; still passing under the control: {', '.join(self.failed)}" if self.failed else ""
            name += f" [control {self.control}]"
        else:
            claims = f"claims {self.passed}/{self.total}" if self.total else "no claims"
            extra = f"; failing claim(s): {', '.join(self.failed)}" if self.failed else ""
        extra += f"; {self.error}" if self.error and not self.failed else ""
        return f"{name}: {verdict} in {self.wall_s:.1f} s, {claims}{extra}"


KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]  # no "running over TCP without encryption" warning on every run


def run_chapter(root: Path, chapter: str, out_dir: Path, params: Mapping[str, Any],
                env: Mapping[str, str] | None = None, progress: bool = False) -> RunResult:
    """Execute a chapter with papermill; write `out_dir/<id>.ipynb` and `out_dir/<id>.claims.json`.

    Parameters are checked (`check_parameters`) before a kernel starts; `ValueError` if they are bad. A control
    run leaves out the solution cells (exercises, not part of what the control shows).
    `progress` shows papermill's bar over the chapter's cells (for long runs at `full`)."""
    import logging

    import nbformat
    import papermill

    src = chapter_path(root, chapter)
    nb = read_chapter(src)
    params = check_parameters(nb, chapter, params)
    control = params.get("control", "")
    if control:  # a control run shows the reproductions failing; the exercises' solutions are not part of it
        nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    out_nb = out_dir / f"{chapter}.ipynb"
    out_claims = out_dir / f"{chapter}.claims.json"
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    out_claims.unlink(missing_ok=True)
    tmp_in = out_nb.with_suffix(".input.ipynb")
    nbformat.write(nb, tmp_in)
    saved = dict(os.environ)
    os.environ.update({"PTM_CLAIMS_OUT": str(out_claims.resolve()), **(env or {})})
    logging.getLogger("papermill").setLevel(logging.ERROR)  # "Passed unknown parameter: chapter" is by design
    t0 = time.perf_counter()
    error = ""
    try:
        papermill.execute_notebook(str(tmp_in), str(out_nb), parameters=params, cwd=str(src.parent),
                                   progress_bar=progress, log_output=False, kernel_name="python3",
                                   extra_arguments=KERNEL_ARGS)
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        tmp_in.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    passed, total, failed = 0, 0, ()
    if out_claims.is_file():
        from ptmlib.claims import load_claims

        rows = load_claims(out_claims)
        if control:  # a control run counts its reproductions: each must fail
            rows = [r for r in rows if r["kind"] == "reproduces"]
            failed = tuple(r["id"] for r in rows if r["passed"])
        else:
            failed = tuple(r["id"] for r in rows if r["kind"] != "negative" and not r["passed"])
        passed, total = sum(r["passed"] for r in rows), len(rows)
    ok = not error and out_claims.is_file() and not failed
    return RunResult(chapter, ok, wall, out_nb, out_claims, error, passed, total, failed, control)


def _run_one(args: tuple[Path, str, Path, dict[str, Any], bool]) -> RunResult:
    root, chapter, out_dir, params, progress = args
    return run_chapter(root, chapter, out_dir, params, progress=progress)


def default_jobs(profile: str) -> int:
    """Chapters at once: one per core at smoke (each uses one torch thread), one at a time on a GPU."""
    from ptmlib.profiles import resolve_profile

    return max(1, os.cpu_count() or 1) if resolve_profile(profile).name == "smoke" else 1


def run_many(root: Path, chapters: list[str], out_dir: Path, params: Mapping[str, Any], jobs: int = 1,
             echo: Any = print) -> list[RunResult]:
    """Run several chapters, `jobs` at a time (each in its own process and kernel), printing one line per
    chapter as it finishes: `[i/N] id: ok in S s, claims k/n`. Parameters are checked for every chapter
    before the first kernel starts. Results come back in the order of `chapters`."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for chapter in chapters:
        check_parameters(read_chapter(chapter_path(root, chapter)), chapter, params)
    from ptmlib.profiles import resolve_profile

    jobs = max(1, min(jobs, len(chapters)))
    progress = jobs == 1 and resolve_profile(params.get("profile", "auto")).name == "full"
    tasks = [(root, c, out_dir, dict(params), progress) for c in chapters]
    results: dict[str, RunResult] = {}
    t0 = time.perf_counter()
    if jobs <= 1:
        for i, task in enumerate(tasks, 1):
            res = _run_one(task)
            results[res.chapter] = res
            echo(f"[{i}/{len(tasks)}] {res.line()}", flush=True)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_one, task) for task in tasks]
            for i, fut in enumerate(as_completed(futures), 1):
                res = fut.result()
                results[res.chapter] = res
                echo(f"[{i}/{len(tasks)}] {res.line()}", flush=True)
    ok = sum(r.ok for r in results.values())
    echo(f"{ok} of {len(tasks)} chapters passed in {time.perf_counter() - t0:.0f} s (jobs={jobs})", flush=True)
    return [results[c] for c in chapters]


def strip_volatile(path: Path) -> None:
    """Drop run-dependent metadata (timestamps, durations, paths, random cell ids) from an executed notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for key in VOLATILE_METADATA:
        nb.metadata.pop(key, None)
        for cell in nb.cells:
            cell.metadata.pop(key, None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # jupytext draws random ids: fix them so re-blessing gives small diffs
    nbformat.write(nb, path)


def bless(root: Path, chapter: str) -> RunResult:
    """Re-execute a chapter at the smoke profile (seed 0) and store it as its golden notebook."""
    result = run_chapter(root, chapter, root / GOLDEN_DIR, {"profile": "smoke", "seed": 0})
    if result.notebook.is_file():
        strip_volatile(result.notebook)
    return result


def stage_goldens(root: Path, stage: Path) -> Path:
    """Copy the book's sources to `stage`, each chapter replaced by its executed golden notebook."""
    return stage_notebooks(root, root / GOLDEN_DIR, stage)


DOWNLOADS = "downloads"  # in the staged book: executed and student notebooks offered on each chapter page


def stage_notebooks(root: Path, executed: Path, stage: Path) -> Path:
    """Copy the book's sources to `stage`, each chapter replaced by its executed notebook from `executed`
    (`<id>.ipynb`), execution off, and a download line on each chapter page: the executed notebook and the
    student notebook (no solutions, no outputs)."""
    import nbformat

    from ptmlib.book.student import student_notebook

    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "references.bib", "favicon.svg"):
        shutil.copy2(root / name, stage / name)
    for page in root.glob("*.md"):
        if page.name != "README.md":
            shutil.copy2(page, stage / page.name)
    shutil.copytree(root / "chapters", stage / "chapters")
    for chapter in chapter_ids(root):
        done = executed / f"{chapter}.ipynb"
        if not done.is_file():
            raise FileNotFoundError(f"no executed notebook for {chapter} in {executed}: run `ptm run {chapter}`"
                                    + (f" or `ptm bless {chapter}`" if executed == root / GOLDEN_DIR else ""))
        (stage / "chapters" / f"{chapter}.md").unlink()
        flat = chapter.replace("/", "-")
        downloads = stage / DOWNLOADS
        downloads.mkdir(exist_ok=True)
        shutil.copy2(done, downloads / f"{flat}.ipynb")
        nbformat.write(student_notebook(root, chapter), downloads / f"{flat}-student.ipynb")
        nb = nbformat.read(done, as_version=4)
        up = "../" * (chapter.count("/") + 1)
        line = (f"{{download}}`Download this chapter as an executed notebook <{up}{DOWNLOADS}/{flat}.ipynb>` · "
                f"{{download}}`as a student notebook (no solutions, no outputs) <{up}{DOWNLOADS}/{flat}-student.ipynb>`")
        _insert_after_title(nb, line)
        nbformat.write(nb, stage / "chapters" / f"{chapter}.ipynb")
    config = yaml.safe_load((stage / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    config["exclude_patterns"] = [*config.get("exclude_patterns", []), f"{DOWNLOADS}/*"]
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return stage


def _insert_after_title(nb: Any, text: str) -> None:
    """Put `text` in its own paragraph right under the notebook's `# title` (tagging that cell)."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.split("\n")
        at = next((i for i, ln in enumerate(lines) if ln.startswith("# ")), None)
        if at is not None:
            cell.source = "\n".join(lines[:at + 1] + ["", text, ""] + lines[at + 1:])
            cell.metadata.setdefault("tags", []).append("ptm-downloads")
            return
    raise ValueError("the notebook has no '# title' line")


def build_html(src: Path, out: Path | None = None) -> subprocess.CompletedProcess:
    """`jupyter-book build` with warnings as errors (-W -n --keep-going); output under `out`."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "-W", "-n", "--keep-going"]
    if out is not None:
        cmd += ["--path-output", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)
