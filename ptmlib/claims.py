"""Claims: a paper's finding, our measurement, and the threshold it must meet at this profile.

Every experiment ends with `card.claim(...)`; the chapter's last cell calls `card.finish()`, which
shows the scorecard, writes the claims JSON and raises `ClaimsFailed` if any claim failed, so a
chapter whose effect disappears fails its notebook run.
"""
from __future__ import annotations

import html
import json
import math
import operator
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ptmlib.paths import claims_dir
from ptmlib.profiles import Profile

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
JSON_KEYS = ("id", "chapter", "paper", "statement", "measured", "threshold", "op", "passed", "profile", "seed",
             "paper_value")


class ClaimsFailed(AssertionError):
    """Raised by `Scorecard.finish` when at least one claim failed."""


@dataclass(frozen=True)
class Claim:
    id: str
    chapter: str
    paper: str  # BibTeX key(s) of the paper(s) whose finding this tests, comma-separated
    statement: str
    measured: float
    threshold: float
    op: str
    passed: bool
    profile: str
    seed: int
    paper_value: str  # the paper's own number, or "qualitative"

    def __repr__(self) -> str:
        return f"{self.id}: {fmt(self.measured)} {self.op} {fmt(self.threshold)} -> {'pass' if self.passed else 'FAIL'}"


def fmt(x: float) -> str:
    """A number as the scorecard shows it: 4 significant digits."""
    return f"{x:.4g}"


class Scorecard:
    """The claims of one chapter run."""

    def __init__(self, chapter: str, profile: Profile) -> None:
        self.chapter = chapter
        self.profile = profile
        self.claims: list[Claim] = []

    def claim(self, id: str, *, paper: str, statement: str, measured: float, op: str,
              threshold: float | Mapping[str, float], paper_value: str = "qualitative") -> Claim:
        """Record one claim: passes when `measured <op> threshold` (the threshold for this profile)."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; allowed: {', '.join(OPS)}")
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim id {id!r} recorded twice")
        if isinstance(threshold, Mapping):
            if self.profile.name not in threshold:
                raise ValueError(f"claim {id!r} has no threshold for profile {self.profile.name!r}")
            threshold = threshold[self.profile.name]
        measured = float(measured)
        passed = math.isfinite(measured) and bool(OPS[op](measured, float(threshold)))
        c = Claim(id, self.chapter, paper, statement, measured, float(threshold), op, passed,
                  self.profile.name, self.profile.seed, paper_value)
        self.claims.append(c)
        return c

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.claims)

    def to_text(self) -> str:
        rows = [f"{'claim':<22} {'measured':>10} {'test':>14}  {'paper':<14} result"]
        for c in self.claims:
            test = f"{c.op} {fmt(c.threshold)}"
            rows.append(f"{c.id:<22} {fmt(c.measured):>10} {test:>14}  {c.paper_value:<14} "
                        f"{'PASS' if c.passed else 'FAIL'}")
        n_ok = sum(c.passed for c in self.claims)
        rows.append(f"{n_ok}/{len(self.claims)} claims passed at the {self.profile.name} profile (seed {self.profile.seed})")
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("Claim", "Paper", "Statement", "Paper's number", "Measured",
                                                  "Test", "Result"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
                c.id, c.paper, c.statement, c.paper_value, fmt(c.measured), f"{c.op} {fmt(c.threshold)}",
                "✅ pass" if c.passed else "❌ FAIL")) + "</tr>"
            for c in self.claims)
        caption = (f"{sum(c.passed for c in self.claims)}/{len(self.claims)} claims passed "
                   f"at the {self.profile.name} profile (seed {self.profile.seed})")
        return (f'<table class="ptm-scorecard"><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def __repr__(self) -> str:
        return self.to_text()

    def save(self, path: Path | None = None) -> Path:
        """Write the claims as a JSON list; default `$PTM_CLAIMS_OUT` or `<claims_dir>/<profile>/<chapter>.json`."""
        if path is None:
            env = os.environ.get("PTM_CLAIMS_OUT")
            path = Path(env) if env else claims_dir() / self.profile.name / f"{self.chapter}.json"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(c) for c in self.claims], indent=1) + "\n")
        return path

    def finish(self) -> "Scorecard":
        """Save the JSON and raise `ClaimsFailed` if any claim failed; returns self for display."""
        if not self.claims:
            raise ClaimsFailed(f"{self.chapter}: no claims were recorded")
        self.save()
        if not self.passed:
            failed = ", ".join(f"{c.id} ({fmt(c.measured)} not {c.op} {fmt(c.threshold)})"
                               for c in self.claims if not c.passed)
            _display(self)
            raise ClaimsFailed(f"{self.chapter}: failed claims: {failed}")
        return self


def _display(obj: Any) -> None:
    try:
        from IPython.display import display

        display(obj)
    except ImportError:  # pragma: no cover
        print(obj)


def load_claims(path: Path) -> list[dict[str, Any]]:
    """Read a claims JSON file and check it has the expected keys."""
    data = json.loads(Path(path).read_text())
    for row in data:
        if missing := set(JSON_KEYS) - set(row):
            raise ValueError(f"{path}: claim {row.get('id')!r} lacks {sorted(missing)}")
    return data
