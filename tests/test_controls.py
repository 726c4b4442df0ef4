"""Issue 17's rule, run for real: under each control its chapter declares (`CONTROLS`: training cut to 1%,
no pretraining, a random init, ...) every `reproduces` claim of the chapter fails, and the chapter runs to its
scorecard instead of crashing. (The recorded calibration's control runs are checked fast in test_calibrate.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptmlib.book import runner as book

ROOT = Path(__file__).resolve().parents[1]


def _reproductions(chapter: str) -> int:
    claims = json.loads((ROOT / book.GOLDEN_DIR / f"{chapter}.claims.json").read_text())
    return sum(c.get("kind") == "reproduces" for c in claims)


# a chapter without reproductions has nothing for a control to refute (see BELOW_TWO_REPRODUCTIONS in test_calibrate)
CASES = [(c, name) for c in book.chapter_ids(ROOT) if _reproductions(c)
         for name in book.control_table(book.read_chapter(book.chapter_path(ROOT, c)))]


@pytest.mark.slow
@pytest.mark.parametrize("chapter,control", CASES, ids=[f"{c}[{n}]" for c, n in CASES])
def test_every_reproduction_fails_under_each_control(chapter, control, tmp_path):
    nb = book.read_chapter(book.chapter_path(ROOT, chapter))
    res = book.run_chapter(ROOT, chapter, tmp_path, book.control_params(nb, chapter, control, {"profile": "smoke",
                                                                                                "seed": 0}))
    assert res.ok, res.line()
    assert res.total >= 1 and res.passed == 0, res.line()
