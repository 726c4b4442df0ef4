"""The exercises convention (issue 24; CONTRIBUTING.md): every chapter ends with a Summary, check questions and
labelled exercises; every exercise the syllabus suggests has a worked, asserting solution.

Static checks of the chapter sources (no chapter runs): the goldens execute the solution cells, so an
`assert` in a solution cell is what makes its stated answer tested. Each chapter reports all of its problems
in one failure message.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ptmlib.book import runner as book

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.chapter_ids(ROOT)
SECTIONS = ["## Summary", "## Check your understanding", "## Exercises"]
EXERCISE = re.compile(r"^(\d+)\. \*\*(.+?)\*\*[ \t]*(.*)$")
LABEL = re.compile(r"^\*(derivation|coding|experiment) · (★{1,3}) · ((?:no run|full only|smoke ≈)[^·*]*?) · (solved|open)\*")
SOLUTION = re.compile(r"^:::\{admonition\} Solution to exercise (\d+)\b.*?\n:class: dropdown\n(.*?)^:::[ \t]*$",
                      re.S | re.M)
# the syllabus's names for the chapters, in its "suggested exercises" column
SYLLABUS_NAMES = {
    "why pretrain": "orientation/why_pretrain", "what transfers": "orientation/what_transfers",
    "linear regression": "icl/linear_regression", "task diversity": "icl/task_diversity", "PFN": "icl/pfn",
    "pretraining theory": "icl/pretraining_theory", "denoising": "objectives/denoising_objectives",
    "replaced tokens": "objectives/replaced_token_detection", "scaling": "objectives/scaling_and_schedules",
    "self-supervised signals": "objectives/self_supervised_signals",
    "efficient pretraining": "objectives/efficient_pretraining", "compact models": "objectives/compact_models", "elastic models": "objectives/elastic_models",
    "diffusion models": "objectives/diffusion_models",
    "LoRA": "peft/lora_and_adapters", "spectral": "peft/spectral_and_sparse", "merging": "peft/merging_and_arithmetic",
    "prompting": "peft/prompting_frozen_models", "interpretable adaptation": "peft/interpretable_adaptation",
    "class-incremental": "continual/class_incremental", "adapting continually": "continual/peft_continual",
    "continual pretraining": "continual/continual_pretraining", "time series": "science/time_series",
    "forecaster design": "science/forecaster_design", "PDE operators": "science/pde_operators",
    "earth system": "science/earth_system", "biomedicine": "science/biomedicine",
    "decision making": "science/decision_making",
}


def suggested_exercises() -> dict[str, set[int]]:
    """chapter id -> the exercise numbers syllabus.md's week table suggests (last column)."""
    found: dict[str, set[int]] = {}
    for line in (ROOT / "syllabus.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        for item in filter(None, cells[3].split(";")):  # a week of project presentations suggests none
            name, _, numbers = item.partition(":")
            assert name.strip() in SYLLABUS_NAMES, f"syllabus names an unknown chapter: {name.strip()!r}"
            found.setdefault(SYLLABUS_NAMES[name.strip()], set()).update(int(n) for n in numbers.split(","))
    return found


def _section(text: str, title: str) -> str:
    """The markdown from `title` to the next level-2 heading (code cells included)."""
    start = text.index(title + "\n")
    nxt = re.search(r"^## ", text[start + len(title):], re.M)
    return text[start:start + len(title) + nxt.start()] if nxt else text[start:]


def exercises(text: str) -> dict[int, dict[str, str]]:
    """Numbered exercises of the Exercises section: number -> {title, label (first line after the title), body}."""
    section = _section(text, "## Exercises").split(":::{admonition}")[0]
    found: dict[int, dict[str, str]] = {}
    current = None
    for line in section.splitlines():
        m = EXERCISE.match(line)
        if m:
            current = found.setdefault(int(m.group(1)), {"title": m.group(2), "label": m.group(3).strip(), "body": line})
        elif current is not None and (line.startswith("   ") or not line.strip()):
            current["body"] += "\n" + line
            if not current["label"] and line.strip():
                current["label"] = line.strip()
        elif line.strip():
            current = None  # prose after the list
    return found


def chapter_problems(chapter: str, suggested: set[int]) -> list[str]:
    path = book.chapter_path(ROOT, chapter)
    text = path.read_text()
    problems: list[str] = []
    at = [text.find(s + "\n") for s in SECTIONS]
    if min(at) < 0 or at != sorted(at):
        return [f"the end sections {SECTIONS} are missing or out of order (found at {at})"]
    if re.search(r"^## ", text[at[-1] + 3:], re.M):
        problems.append("a level-2 section follows '## Exercises' (solutions go right after the exercises)")
    check = _section(text, "## Check your understanding")
    questions = re.findall(r"^\d+\. ", check.split(":::{admonition} Answers")[0], re.M)
    if not 3 <= len(questions) <= 5:
        problems.append(f"'Check your understanding' has {len(questions)} numbered questions (want 3-5)")
    if not re.search(r"^:::\{admonition\} Answers\n:class: dropdown\n", check, re.M):
        problems.append("'Check your understanding' has no ':::{admonition} Answers' dropdown")

    ex = exercises(text)
    if sorted(ex) != list(range(1, len(ex) + 1)) or not ex:
        problems.append(f"exercises are not numbered 1..n: {sorted(ex)}")
    solved = set()
    for n, e in ex.items():
        m = LABEL.match(e["label"])
        if not m:
            problems.append(f"exercise {n} ({e['title']}) has no label '*kind · ★.. · cost · solved|open*': {e['label'][:60]!r}")
        elif m.group(4) == "solved":
            solved.add(n)
    runnable = sum("ptm run" in e["body"] for e in ex.values())
    if 3 * runnable < len(ex):
        problems.append(f"only {runnable} of {len(ex)} exercises say what to run with `ptm run` (want a third)")

    dropdowns = {int(n): body for n, body in SOLUTION.findall(text)}
    for n in sorted(suggested - set(ex)):
        problems.append(f"the syllabus suggests exercise {n}, which does not exist")
    for n in sorted(suggested & set(ex)):
        if n not in solved:
            problems.append(f"exercise {n} is suggested by the syllabus but not labelled solved")
        if n not in dropdowns:
            problems.append(f"exercise {n} is suggested by the syllabus but has no 'Solution to exercise {n}' dropdown")
    for n in sorted(solved - set(dropdowns)):
        problems.append(f"exercise {n} is labelled solved but has no Solution dropdown")
    for n in sorted(set(dropdowns) - solved):
        problems.append(f"exercise {n} has a Solution dropdown but is not labelled solved")

    nb = book.read_chapter(path)
    codes = [c for c in nb.cells if c.cell_type == "code"]
    finish = max((i for i, c in enumerate(codes) if "card.finish()" in c.source), default=None)
    solutions = [(i, c) for i, c in enumerate(codes) if "solution" in c.metadata.get("tags", [])]
    if suggested and not solutions:
        problems.append("no code cell is tagged 'solution'")
    for i, cell in solutions:
        if finish is None or i < finish:
            problems.append(f"solution cell {i} comes before the scorecard (card.finish())")
        if not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(cell.source))):
            problems.append(f"solution cell {i} asserts nothing: {cell.source.strip().splitlines()[0][:60]!r}")
    return problems


def test_the_syllabus_names_chapters_that_exist():
    suggested = suggested_exercises()
    assert suggested and set(suggested) <= set(CHAPTERS), set(suggested) - set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_follows_the_exercises_convention(chapter):
    problems = chapter_problems(chapter, suggested_exercises().get(chapter, set()))
    assert not problems, f"{chapter}:\n  " + "\n  ".join(problems)


def test_the_checker_catches_what_it_should():
    """The rules above on a made-up chapter end: one of each defect is reported."""
    text = "\n".join([
        "## Summary", "", "## Check your understanding", "", "1. Why?", "", "## Exercises", "",
        "1. **A.** *experiment · ★ · smoke ≈ 30 s · solved*", "   Predict, then run: `ptm run x/y -p k=1`.",
        "2. **B.** *coding · ★★★ · no run · open*", "   Write it.",
        "3. **C.** no label here", "",
    ])
    ex = exercises(text)
    assert sorted(ex) == [1, 2, 3] and ex[3]["label"] == "no label here"
    assert LABEL.match(ex[1]["label"]).group(4) == "solved" and LABEL.match(ex[2]["label"]) and not LABEL.match(ex[3]["label"])
    assert "ptm run" in ex[1]["body"] and "ptm run" not in ex[2]["body"]
    solution = ":::{admonition} Solution to exercise 1 (a)\n:class: dropdown\nBecause.\n:::\n"
    assert [int(n) for n, _ in SOLUTION.findall(text + "\n" + solution)] == [1]


def _spectral_largest_chooser():
    """The 'largest 10%' chooser of peft/spectral_and_sparse's solution cells, built from the chapter's own source
    (its imports, and the function or dict entry whose name says 'largest'), without running the chapter."""
    nb = book.read_chapter(book.chapter_path(ROOT, "peft/spectral_and_sparse"))
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            imports = [n for n in ast.parse(cell.source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(body=imports, type_ignores=[]), "imports", "exec"), namespace)
    for cell in nb.cells:
        if "solution" not in cell.metadata.get("tags", []):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.FunctionDef) and "largest" in node.name:
                exec(compile(ast.Module(body=[node], type_ignores=[]), "largest", "exec"), namespace)
                return namespace[node.name]
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and "largest" in str(key.value) and isinstance(value, ast.Lambda):
                        return eval(compile(ast.Expression(body=value), "largest", "eval"), namespace)
    return None


def _as_mask(chosen, shape):
    """A chooser's answer (a boolean mask of the weight, or flat indices) as a boolean mask."""
    import torch

    if chosen.dtype == torch.bool:
        return chosen.reshape(shape)
    mask = torch.zeros(shape, dtype=torch.bool).flatten()
    mask[chosen] = True
    return mask.reshape(shape)


def test_spectral_solution_largest_mask_is_the_largest_weights():
    """The old solution built the 'largest 10%' mask as smallest_mask(-w.abs(), 0.1), which is SaRA's own mask
    (smallest_mask ranks by |w|), and printed SaRA's numbers under another name. The chapter's chooser must
    pick the largest |w|, as many as SaRA's smallest-10% mask and disjoint from it."""
    import torch

    from ptmlib.peft import spectral

    choose = _spectral_largest_chooser()
    assert choose is not None, "peft/spectral_and_sparse's solution has no chooser named 'largest'"
    torch.manual_seed(0)
    layer = spectral.SaRALinear(torch.nn.Linear(64, 128), fraction=0.1)  # SaRA's mask: layer.index
    w = layer.base.weight.detach()
    sara = _as_mask(layer.index, w.shape)
    assert (sara == spectral.smallest_mask(w, 0.1)).all()
    try:
        largest = _as_mask(choose(layer), w.shape)  # a chooser of a SaRA layer's entries
    except (AttributeError, TypeError):
        largest = _as_mask(choose(w), w.shape)  # a chooser of a weight's mask
    assert int(largest.sum()) == int(sara.sum())  # the same size as SaRA's mask
    assert not (largest & sara).any()  # disjoint from it
    assert w.abs()[largest].min() >= w.abs()[~largest].max()  # and really the largest magnitudes
    old = lambda w: spectral.smallest_mask(-w.abs(), 0.1)  # noqa: E731 - the old solution's chooser
    assert (old(w) == sara).all(), "the bug this test guards against: negating before ranking by |w| changes nothing"


def test_course_projects_name_open_exercises_that_exist():
    """syllabus.md's course projects: each entry links a chapter and names (in italics) open exercises of it."""
    text = (ROOT / "syllabus.md").read_text()
    section = _section(text, "## Course projects")
    entries = re.findall(r"^  - (\{doc\}`chapters/[^`]+`.*?)(?=^  - |\Z)", section, re.S | re.M)
    assert entries, "syllabus.md has no course projects"
    problems = []
    linked = set()
    for entry in entries:
        entry = " ".join(entry.split())
        chapter = re.match(r"\{doc\}`chapters/([^`]+)`", entry).group(1)
        linked.add(chapter)
        if chapter not in CHAPTERS:
            problems.append(f"unknown chapter {chapter}")
            continue
        titles = {e["title"].rstrip(".?!"): e for e in exercises(book.chapter_path(ROOT, chapter).read_text()).values()}
        for name in re.findall(r"\*([^*]+)\*", entry):
            e = titles.get(name.rstrip(".?!"))
            if e is None:
                problems.append(f"{chapter} has no exercise titled {name!r}")
            elif LABEL.match(e["label"]) and LABEL.match(e["label"]).group(4) == "solved":
                problems.append(f"{chapter}: {name!r} is solved in the book, not an open project")
    assert linked == set(CHAPTERS), f"chapters without a course project: {sorted(set(CHAPTERS) - linked)}"
    assert not problems, "\n".join(problems)
