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
    import papermill

    nb_path = path
    if path.suffix == ".md":
        import tempfile

        import nbformat

        tmp = Path(tempfile.mkdtemp()) / f"{path.stem}.ipynb"
        nbformat.write(read_chapter(path), tmp)
        nb_path = tmp
    found = papermill.inspect_notebook(str(nb_path))
    if not found:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    return {name: ast.literal_eval(spec["default"]) for name, spec in found.items()}


def knob_table(nb: Any) -> dict[str, dict[str, Any]]:
    """The chapter's `KNOBS = {...}` table, read from its source (a literal dict), without running it."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "KNOBS":
                return ast.literal_eval(node.value)
    return {}


def check_parameters(nb: Any, chapter: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `ptm run` parameters against the chapter before any kernel starts and return papermill's
    parameters: `profile`, `seed`, `budget`, the chapter id and a `knobs` dict of the knob overrides.
    `ValueError` in one line for an unknown name, a wrong type or a bad value."""
    from ptmlib.profiles import resolve_profile

    table = knob_table(nb)
    base = {k: v for k, v in params.items() if k in ("profile", "seed", "budget")}
    knobs = dict(params.get("knobs") or {})
    for key, value in params.items():
        if key in ("profile", "seed", "budget", "knobs"):
            continue
        if key not in table:
            allowed = ", ".join(["profile", "seed", "budget", *table])
            raise ValueError(f"unknown parameter {key!r} for {chapter}; allowed: {allowed}")
        knobs[key] = value
    resolve_profile(base.get("profile", "auto"), seed=base.get("seed", 0), budget=base.get("budget", 1.0),
                    knobs=table, overrides=knobs, cuda_available=False)
    return {**base, "knobs": knobs, "chapter": chapter}


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


def run_chapter(root: Path, chapter: str, out_dir: Path, params: Mapping[str, Any],
                env: Mapping[str, str] | None = None) -> RunResult:
    """Execute a chapter with papermill; write `out_dir/<id>.ipynb` and `out_dir/<id>.claims.json`."""
    import nbformat
    import papermill

    src = chapter_path(root, chapter)
    nb = read_chapter(src)
    params = check_parameters(nb, chapter, params)
    out_nb = out_dir / f"{chapter}.ipynb"
    out_claims = out_dir / f"{chapter}.claims.json"
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    out_claims.unlink(missing_ok=True)
    tmp_in = out_nb.with_suffix(".input.ipynb")
    nbformat.write(nb, tmp_in)
    saved = dict(os.environ)
    os.environ.update({"PTM_CLAIMS_OUT": str(out_claims.resolve()), **(env or {})})
    t0 = time.perf_counter()
    error = ""
    try:
        papermill.execute_notebook(str(tmp_in), str(out_nb), parameters=params, cwd=str(src.parent),
                                   progress_bar=False, log_output=False, kernel_name="python3")
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        tmp_in.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    return RunResult(chapter, not error and out_claims.is_file(), wall, out_nb, out_claims, error)


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
        golden = root / GOLDEN_DIR / f"{chapter}.ipynb"
        if not golden.is_file():
            raise FileNotFoundError(f"no golden notebook for {chapter}: run `ptm bless {chapter}`")
        (stage / "chapters" / f"{chapter}.md").unlink()
        shutil.copy2(golden, stage / "chapters" / f"{chapter}.ipynb")
    config = yaml.safe_load((stage / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return stage


def build_html(src: Path, out: Path | None = None) -> subprocess.CompletedProcess:
    """`jupyter-book build` with warnings as errors (-W -n --keep-going); output under `out`."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "-W", "-n", "--keep-going"]
    if out is not None:
        cmd += ["--path-output", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)
