"""The library's layout: tooling apart from the chapter library, one home for each shared concept.

These are the checks behind issue 16's "no concept exists twice": they scan the sources, so a second
copy of an idiom or a second meaning of a public name fails here instead of creeping back in."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [p for p in (ROOT / "ptmlib").rglob("*.py") if "book" not in p.relative_to(ROOT / "ptmlib").parts[:1]]
CHAPTERS = sorted((ROOT / "chapters").rglob("*.md"))
PARTS = sorted(p.name for p in (ROOT / "chapters").iterdir() if p.is_dir())


def _code(path: Path) -> str:
    """Python source of a module, or the code cells of a chapter."""
    if path.suffix == ".py":
        return path.read_text()
    return "\n".join(re.findall(r"```\{code-cell\} ipython3\n(.*?)```", path.read_text(), re.S))


def test_every_part_of_the_book_has_its_subpackage_and_the_tooling_is_apart():
    assert all((ROOT / "ptmlib" / part / "__init__.py").is_file() for part in PARTS), PARTS
    for path in [*CHAPTERS, *LIBRARY]:
        assert not re.search(r"ptmlib\.book\b|from ptmlib import book", _code(path)), path  # nobody imports tooling


# idiom -> the one module allowed to spell it out
IDIOMS = {
    r"\.argmax\(-1\) == .*\)\.float\(\)\.mean\(\)": "metrics.py",  # accuracy
    r"sum\(p\.numel\(\) for p in": "metrics.py",  # parameter counting
    r"lambda \w+: torch\.randint\(": "data.py",  # random minibatch indices for ptm.train
    r"math\.cos\(math\.pi": "schedules.py",  # cosine learning-rate schedules
}


@pytest.mark.parametrize("pattern,home", IDIOMS.items())
def test_each_shared_idiom_is_written_in_one_place(pattern, home):
    places = [p.relative_to(ROOT).as_posix() for p in [*LIBRARY, *CHAPTERS] if re.search(pattern, _code(p))]
    assert all(p.endswith(home) for p in places), places


def test_each_public_name_means_one_thing_across_the_library():
    """A public module-level function or class is defined in one module only (methods are not counted)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in LIBRARY:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(path.relative_to(ROOT / "ptmlib").as_posix())
    assert {name: mods for name, mods in where.items() if len(mods) > 1} == {}


def test_chapters_alias_modules_with_words_not_letters():
    for path in CHAPTERS:
        short = re.findall(r"^\s*(?:from ptmlib[\w.]* )?import [\w.]+ as ([A-Za-z]{1,2})\b", _code(path), re.M)
        assert not [a for a in short if a not in ("F", "np", "plt", "nn")], (path, short)


def test_every_claim_says_its_kind_and_chapters_show_claims_only_through_the_scorecard():
    """Issue 17: `card.claim(...)` always names its kind (reproduces, check or negative); it returns nothing, so no
    `_ =` in front of it; the scorecard says how many claims passed, so no chapter prints its own count."""
    for path in CHAPTERS:
        code = re.sub(r"^:[\w-]+:.*$", "", _code(path), flags=re.M)  # cell options such as `:tags: [...]`
        for call in ast.walk(ast.parse(code)):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "claim":
                kinds = [k.value for k in call.keywords if k.arg == "kind"]
                assert kinds and isinstance(kinds[0], ast.Constant) and kinds[0].value in (
                    "reproduces", "check", "negative"), (path, ast.unparse(call)[:80])
        assert not re.search(r"_ = card\.claim|len\(card\.claims\)", code), path
