import json
import math

import pytest

from ptmlib.claims import JSON_KEYS, ClaimsFailed, Scorecard, load_claims, seed_range, seed_values, verdict
from ptmlib.profiles import resolve_profile


def card(profile="smoke", seed=0, control=""):
    return Scorecard("icl/demo", resolve_profile(profile, seed=seed, cuda_available=False), control)


def add(sc, id, measured, op="<", threshold=1.0, kind="reproduces", **kw):
    sc.claim(id, kind=kind, paper="k", statement="s", measured=measured, op=op, threshold=threshold, **kw)
    return sc.claims[-1]


def test_claim_uses_the_threshold_of_the_current_profile():
    c = add(card(), "gap", 0.04, threshold={"smoke": 0.05, "full": 0.01})
    assert c.passed and c.threshold == 0.05
    c = add(card("full"), "gap", 0.04, threshold={"smoke": 0.05, "full": 0.01})
    assert not c.passed and c.threshold == 0.01


@pytest.mark.parametrize("op,measured,passed", [("<", 1.0, False), ("<=", 1.0, True), (">", 1.0, False),
                                                (">=", 1.0, True), (">", 2.0, True), ("<", math.nan, False),
                                                (">", math.nan, False)])
def test_comparisons(op, measured, passed):
    assert add(card(), "c", measured, op=op).passed is passed


def test_bad_claims_are_rejected():
    sc = card()
    with pytest.raises(ValueError, match="allowed"):
        add(sc, "c", 1, op="==")
    with pytest.raises(ValueError, match="unknown claim kind 'reproduction'"):
        add(sc, "c", 1, kind="reproduction")
    with pytest.raises(TypeError):  # the kind is required: every claim says what it is
        sc.claim("c", paper="k", statement="s", measured=1, op="<", threshold=2)
    add(sc, "c", 1, threshold=2)
    with pytest.raises(ValueError, match="twice"):
        add(sc, "c", 1, threshold=2)
    with pytest.raises(ValueError, match="no threshold"):
        add(sc, "d", 1, threshold={"full": 2})


def test_finish_writes_the_json_and_raises_on_a_failed_reproduction_or_check(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    monkeypatch.setenv("PTM_CLAIMS_OUT", str(out))
    sc = card(seed=2)
    add(sc, "ok", 0.5, paper_value="0.4")
    add(sc, "bad", 3.0, kind="check")
    with pytest.raises(ClaimsFailed, match=r"bad \(3 not < 1\)"):
        sc.finish()
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["ok", "bad"] and set(rows[0]) == set(JSON_KEYS)
    assert rows[0]["passed"] is True and rows[1]["passed"] is False and rows[1]["kind"] == "check"
    assert rows[0]["profile"] == "smoke" and rows[0]["seed"] == 2 and rows[0]["paper_value"] == "0.4"
    assert rows[0]["control"] == "" and load_claims(out)[1]["measured"] == 3.0


def test_a_negative_result_never_fails_the_run_and_says_what_was_seen():
    sc = card()
    add(sc, "rep", 0.5)
    add(sc, "paper_method_wins", -0.02, op=">=", threshold=0.02, kind="negative")
    assert sc.passed and sc.finish() is sc
    assert verdict(sc.claims[1]) == "not reproduced" and verdict(sc.claims[0]) == "pass"
    assert "1/1 reproductions and 0/0 checks passed" in sc.summary() and "1 paper finding(s)" in sc.summary()
    sc2 = card()
    add(sc2, "paper_method_wins", 0.05, op=">=", threshold=0.02, kind="negative")
    assert verdict(sc2.claims[0]) == "reproduced after all"


def test_a_control_run_fails_when_a_reproduction_still_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("PTM_CLAIMS_OUT", str(tmp_path / "c.json"))
    sc = card(control="cut_to_1pct")
    add(sc, "effect", 0.5)  # passes although the control removed the cause: the claim tests nothing
    add(sc, "gone", 3.0)
    add(sc, "identity", 3.0, kind="check")  # checks may do anything under a control
    with pytest.raises(ClaimsFailed, match=r"under control 'cut_to_1pct' these reproductions still pass: effect"):
        sc.finish()
    assert json.loads((tmp_path / "c.json").read_text())[0]["control"] == "cut_to_1pct"
    sc = card(control="cut_to_1pct")
    add(sc, "gone", 3.0)
    assert sc.finish().passed and "1/1 reproductions failed, as they must" in sc.summary()
    sc = card(control="cut_to_1pct")
    add(sc, "identity", 0.5, kind="check")
    with pytest.raises(ClaimsFailed, match="no reproductions"):
        sc.finish()


def test_finish_without_claims_fails_and_default_path(tmp_path):
    with pytest.raises(ClaimsFailed, match="no claims"):
        card().finish()
    sc = card()
    add(sc, "ok", 0.5)
    sc.finish()
    assert (tmp_path / "claims" / "smoke" / "icl" / "demo.json").is_file()  # PTM_CLAIMS_DIR from conftest


def test_seed_values_and_range_read_a_calibration_record():
    cal = {"runs": {"0": {"claims": {"gap": {"measured": 0.2}}}, "1": {"claims": {"gap": {"measured": 0.05}}},
                    "2": {"claims": {}}}}
    assert seed_values(cal, "gap") == {0: 0.2, 1: 0.05}
    assert seed_range(cal, "gap") == "0.05 to 0.2 (2 seeds)" and seed_range(cal, "other") == "" == seed_range(None, "g")


def test_scorecard_text_and_html_show_kinds_and_verdicts():
    sc = card()
    sc.claim("gap", kind="reproduces", paper="a", statement="x < y", measured=0.012341, op="<", threshold=0.05,
             paper_value="qual")
    add(sc, "bytes", 2.0, kind="check")
    text = sc.to_text()
    assert "0.01234" in text and "< 0.05" in text and "pass" in text and "FAIL" in text and "reproduces" in text
    assert "1/1 reproductions and 0/1 checks passed at the smoke profile (seed 0)" in text
    page = sc._repr_html_()
    assert "<td>x &lt; y</td>" in page and 'class="ptm-check"' in page and "not calibrated" in page
