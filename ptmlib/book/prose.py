"""The typed-number check: a result of the run reaches the prose through glue, never typed by hand.

Rule. The run's numbers are every decimal number in the golden notebook's printed output (stream and
`text/plain`, glued values included; not the scorecard cell's, whose thresholds are the chapter's
constants) and every claim's measured value. A decimal number in a markdown
cell (outside code, glue, citation and reference roles, and outside `{constant}` roles) is *typed* when
- it has at least 3 significant digits and some run number rounds or truncates to it at its precision; or
- it has 2 significant digits and it appears verbatim in the output, or a claim's measured value or a
  glued value rounds or truncates to it.
One-digit numbers (0.5, 3.0) and integers are not checked. A true constant (a paper's number, a closed
form, a setting) is written as `` {constant}`0.25` ``, which renders as the plain number.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
EXEMPT = re.compile(r"```.*?```|`{3,}.*?`{3,}|\{[\w:-]+\}`[^`]*`|``[^`]*``|`[^`]*`|\]\([^)]*\)|<[^>]+>", re.S)


def significant(token: str) -> int:
    """Significant digits of a decimal token: '0.065' -> 2, '1.50' -> 3."""
    return len(token.replace(".", "").lstrip("0")) or 1


def _matches(token: str, value: float) -> bool:
    """`value` printed at the token's precision, rounded or truncated, gives the token."""
    if not math.isfinite(value):
        return False
    places = len(token.split(".")[1])
    target = float(token)
    v = abs(value)
    return round(v, places) == target or math.floor(v * 10 ** places + 1e-9) / 10 ** places == target


def output_numbers(nb: Any) -> tuple[set[str], list[float], list[float]]:
    """(decimal tokens printed, every printed number, glued numbers) of an executed notebook."""
    tokens: set[str] = set()
    printed: list[float] = []
    glued: list[float] = []
    for cell in nb.cells:
        if "card.finish()" in cell.get("source", ""):
            continue
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else out.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            found = DECIMAL.findall(text)
            tokens.update(found)
            printed += [float(t) for t in found]
            if "scrapbook" in out.get("metadata", {}):
                glued += [float(t) for t in re.findall(r"\d+\.\d+|\d+", text)]
    return tokens, printed, glued


def typed_numbers(chapter_nb: Any, golden_nb: Any, measured: Iterable[float]) -> list[str]:
    """The markdown numbers of `chapter_nb` that the golden run prints or glues (see the module's rule), as
    'cell N: 0.605 (...context...)'."""
    tokens, printed, glued = output_numbers(golden_nb)
    headline = [*measured, *glued]
    found = []
    for i, cell in enumerate(chapter_nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = EXEMPT.sub(" ", cell.source)
        for m in DECIMAL.finditer(text):
            tok = m.group(0)
            sig = significant(tok)
            hit = (sig >= 3 and any(_matches(tok, v) for v in printed + headline)) or \
                  (sig == 2 and (tok in tokens or any(_matches(tok, v) for v in headline)))
            if hit:
                ctx = " ".join(text[max(0, m.start() - 40): m.end() + 20].split())
                found.append(f"cell {i}: {tok} (...{ctx}...)")
    return found
