"""Issue 17's rule, run for real: under each control its chapter declares (`CONTROLS`: training cut to 1%,
no pretraining, a random init, ...) every `reproduces` claim of the chapter fails, and the chapter runs to its
scorecard instead of crashing. (The recorded calibration's control runs are checked fast in test_calibrate.)

The cases are split over the files tests/test_controls_[a-d].py: pytest-xdist (--dist loadfile) keeps a file on
one worker, so four files let four workers share the runs."""
from __future__ import annotations

import json
from pathlib import Path

from ptmlib.book import runner as book

ROOT = Path(__file__).resolve().parents[1]
SPLIT = 4  # the number of test_controls_*.py files


def _reproductions(chapter: str) -> int:
    claims = json.loads((ROOT / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())
    return sum(c.get("kind") == "reproduces" for c in claims)


def cases(part: int) -> list:
    """Every (chapter, control) pair of a chapter with reproductions, every SPLIT-th from `part` on, with ids.
    (A chapter without reproductions has nothing for a control to refute: BELOW_TWO_REPRODUCTIONS.)"""
    import pytest

    pairs = [(c, name) for c in book.chapter_ids(ROOT) if _reproductions(c)
             for name in book.control_table(book.read_chapter(book.chapter_path(ROOT, c)))]
    return [pytest.param(c, n, id=f"{c}[{n}]") for c, n in pairs[part::SPLIT]]


def run_control(chapter: str, control: str, tmp_path: Path) -> None:
    nb = book.read_chapter(book.chapter_path(ROOT, chapter))
    res = book.run_chapter(ROOT, chapter, tmp_path, book.control_params(nb, chapter, control, {"profile": "smoke",
                                                                                                "seed": 0}))
    assert res.ok, res.line()
    assert res.total >= 1 and res.passed == 0, res.line()
