"""Claims: a paper's finding, our measurement, and the threshold it must meet at this profile.

Three kinds of claim (`kind=`):

- `"reproduces"`: a paper's finding. Counted in the report's headline. It must *fail* under every
  control run the chapter declares (`CONTROLS`: no pretraining, random init, training cut to 1%, ...).
- `"check"`: a mechanism, identity, sanity or cost fact (our LoRA equals peft's, bytes of optimizer
  state, a closed-form regret). Shown and enforced, never counted as a reproduction.
- `"negative"`: the paper's method ran here and its finding did not appear. The row states the
  paper's finding as a test, shows our number beside the paper's, and never fails the run.

Every experiment ends with `card.claim(...)`; the chapter's last cell calls `card.finish()`, which
shows the scorecard, writes the claims JSON and raises `ClaimsFailed` if a reproduction or check
failed - or, in a control run, if a reproduction passed. Beside each claim the scorecard shows its
values over the calibration seeds (`results/calibration/`, written by `ptm calibrate`).
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
KINDS = ("reproduces", "check", "negative")
JSON_KEYS = ("id", "chapter", "kind", "paper", "statement", "measured", "threshold", "op", "passed", "profile", "seed",
             "paper_value", "control")
CALIBRATION_DIR = Path("results") / "calibration"


class ClaimsFailed(AssertionError):
    """Raised by `Scorecard.finish` when a claim failed (or, in a control run, when a reproduction passed)."""


@dataclass(frozen=True)
class Claim:
    id: str
    chapter: str
    kind: str  # "reproduces" | "check" | "negative"
    paper: str  # BibTeX key(s) of the paper(s) whose finding this tests, comma-separated
    statement: str
    measured: float
    threshold: float
    op: str
    passed: bool  # the test `measured <op> threshold` holds
    profile: str
    seed: int
    paper_value: str  # the paper's own number, or "qualitative"
    control: str = ""  # the control run this was measured in ("" for a normal run)

    def __repr__(self) -> str:
        return f"{self.id} ({self.kind}): {fmt(self.measured)} {self.op} {fmt(self.threshold)} -> {verdict(self)}"


def fmt(x: float) -> str:
    """A number as the scorecard shows it: 4 significant digits."""
    return f"{x:.4g}"


def verdict(c: Claim | Mapping[str, Any]) -> str:
    """The word the scorecard prints for a claim: pass / FAIL, or for a negative result what was seen."""
    kind, passed = (c["kind"], c["passed"]) if isinstance(c, Mapping) else (c.kind, c.passed)
    if kind == "negative":
        return "reproduced after all" if passed else "not reproduced"
    return "pass" if passed else "FAIL"


def calibration(chapter: str, profile: str = "smoke") -> dict[str, Any] | None:
    """The recorded seed calibration of a chapter (`results/calibration/<profile>/<chapter>.json`), or None."""
    from ptmlib.paths import repo_root

    try:
        path = repo_root() / CALIBRATION_DIR / profile / f"{chapter}.json"
    except FileNotFoundError:
        return None
    return json.loads(path.read_text()) if path.is_file() else None


def seed_values(cal: Mapping[str, Any] | None, claim_id: str) -> dict[int, float]:
    """A claim's measured value at each calibration seed ({} when it was not calibrated)."""
    runs = (cal or {}).get("runs") or {}
    return {int(s): r["claims"][claim_id]["measured"] for s, r in runs.items() if claim_id in r.get("claims", {})}


def seed_range(cal: Mapping[str, Any] | None, claim_id: str) -> str:
    """'min to max (n seeds)' of a claim's calibration values, or '' when it was not calibrated."""
    values = list(seed_values(cal, claim_id).values())
    if not values:
        return ""
    return f"{fmt(min(values))} to {fmt(max(values))} ({len(values)} seeds)"


class Scorecard:
    """The claims of one chapter run (`control`: the name of the control run, or "" for a normal run)."""

    def __init__(self, chapter: str, profile: Profile, control: str = "") -> None:
        self.chapter = chapter
        self.profile = profile
        self.control = control or ""
        self.claims: list[Claim] = []

    def claim(self, id: str, *, kind: str, paper: str, statement: str, measured: float, op: str,
              threshold: float | Mapping[str, float], paper_value: str = "qualitative") -> None:
        """Record one claim: it holds when `measured <op> threshold` (the threshold for this profile)."""
        if kind not in KINDS:
            raise ValueError(f"unknown claim kind {kind!r}; allowed: {', '.join(KINDS)}")
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
        self.claims.append(Claim(id, self.chapter, kind, paper, statement, measured, float(threshold), op, passed,
                                 self.profile.name, self.profile.seed, paper_value, self.control))

    def glue(self) -> None:
        """Glue every claim for the prose: `claim_<id>` (this run's value), `claim_<id>_seeds` (its range over the
        calibration seeds) and `claim_<id>_<control>` (its value in each recorded control run). Called by `finish`,
        so the glued values sit in the scorecard cell (prose anywhere in the chapter can quote them)."""
        from ptmlib import glue

        cal = calibration(self.chapter, self.profile.name)
        for c in self.claims:
            glue(f"claim_{c.id}", fmt(c.measured))
            glue(f"claim_{c.id}_seeds", seed_range(cal, c.id) or "not calibrated yet")
            for name, run in ((cal or {}).get("controls") or {}).items():
                value = run.get("claims", {}).get(c.id, {}).get("measured")
                glue(f"claim_{c.id}_{name}", fmt(value) if value is not None else "not run")

    def of_kind(self, kind: str) -> list[Claim]:
        return [c for c in self.claims if c.kind == kind]

    @property
    def problems(self) -> list[Claim]:
        """Claims that make the run fail: a failed reproduction or check; in a control run, a passed reproduction."""
        if self.control:
            return [c for c in self.of_kind("reproduces") if c.passed]
        return [c for c in self.claims if c.kind != "negative" and not c.passed]

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: reproductions and checks passed, negative results, profile and seed (and control)."""
        rep, chk, neg = (self.of_kind(k) for k in KINDS)
        where = f"at the {self.profile.name} profile (seed {self.profile.seed})"
        if self.control:
            return (f"control run '{self.control}' {where}: {sum(not c.passed for c in rep)}/{len(rep)} reproductions "
                    f"failed, as they must")
        parts = [f"{sum(c.passed for c in rep)}/{len(rep)} reproductions", f"{sum(c.passed for c in chk)}/{len(chk)} checks"]
        text = " and ".join(parts) + f" passed {where}"
        return text + (f"; {len(neg)} paper finding(s) ran and did not reproduce" if neg else "")

    def _rows(self) -> list[tuple[Claim, str]]:
        cal = calibration(self.chapter, self.profile.name)
        return [(c, seed_range(cal, c.id)) for c in self.claims]

    def to_text(self) -> str:
        rows = [f"{'claim':<28} {'kind':<10} {'measured':>10} {'test':>12}  {'seeds':<24} {'paper':<14} result"]
        for c, seeds in self._rows():
            rows.append(f"{c.id:<28} {c.kind:<10} {fmt(c.measured):>10} {c.op + ' ' + fmt(c.threshold):>12}  "
                        f"{seeds:<24} {c.paper_value:<14} {verdict(c)}")
        rows.append(self.summary())
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("Claim", "Kind", "Paper", "Statement", "Paper's number", "Measured",
                                                  "Test", "Calibration seeds", "Result"))
        marks = {"pass": "✅ pass", "FAIL": "❌ FAIL", "not reproduced": "➖ not reproduced",
                 "reproduced after all": "✅ reproduced after all"}
        body = "".join(
            f'<tr class="ptm-{c.kind}">' + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
                c.id, c.kind, c.paper, c.statement, c.paper_value, fmt(c.measured), f"{c.op} {fmt(c.threshold)}",
                seeds or "not calibrated", marks[verdict(c)])) + "</tr>"
            for c, seeds in self._rows())
        return (f'<table class="ptm-scorecard"><caption>{html.escape(self.summary())}</caption><thead><tr>{head}</tr>'
                f"</thead><tbody>{body}</tbody></table>")

    def __repr__(self) -> str:
        return self.to_text()

    def save(self, path: Path | None = None) -> Path:
        """Write the claims as a JSON list; default `$PTM_CLAIMS_OUT` or `<claims_dir>/<profile>/<chapter>.json`."""
        if path is None:
            env = os.environ.get("PTM_CLAIMS_OUT")
            path = Path(env) if env else claims_dir() / self.profile.name / f"{self.chapter}.json"
        path = Path(path)
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 records the claims
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(c) for c in self.claims], indent=1) + "\n")
        return path

    def finish(self) -> "Scorecard":
        """Save the JSON and raise `ClaimsFailed` on a problem (see `problems`); returns self for display."""
        if not self.claims:
            raise ClaimsFailed(f"{self.chapter}: no claims were recorded")
        if not self.of_kind("reproduces") and self.control:
            raise ClaimsFailed(f"{self.chapter}: control run '{self.control}' but the chapter has no reproductions")
        self.save()
        self.glue()
        if self.problems:
            _display(self)
            if self.control:
                ids = ", ".join(f"{c.id} ({fmt(c.measured)} {c.op} {fmt(c.threshold)})" for c in self.problems)
                raise ClaimsFailed(f"{self.chapter}: under control '{self.control}' these reproductions still pass: {ids}")
            failed = ", ".join(f"{c.id} ({fmt(c.measured)} not {c.op} {fmt(c.threshold)})" for c in self.problems)
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
