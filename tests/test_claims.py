import json
import math

import pytest

from ptmlib.claims import JSON_KEYS, ClaimsFailed, Scorecard, load_claims
from ptmlib.profiles import resolve_profile


def card(profile="smoke", seed=0):
    return Scorecard("icl/demo", resolve_profile(profile, seed=seed, cuda_available=False))


def test_claim_uses_the_threshold_of_the_current_profile():
    c = card().claim("gap", paper="k1", statement="s", measured=0.04, op="<", threshold={"smoke": 0.05, "full": 0.01})
    assert c.passed and c.threshold == 0.05
    c = card("full").claim("gap", paper="k1", statement="s", measured=0.04, op="<",
                           threshold={"smoke": 0.05, "full": 0.01})
    assert not c.passed and c.threshold == 0.01


@pytest.mark.parametrize("op,measured,passed", [("<", 1.0, False), ("<=", 1.0, True), (">", 1.0, False),
                                                (">=", 1.0, True), (">", 2.0, True), ("<", math.nan, False),
                                                (">", math.nan, False)])
def test_comparisons(op, measured, passed):
    assert card().claim("c", paper="k", statement="s", measured=measured, op=op, threshold=1.0).passed is passed


def test_bad_claims_are_rejected():
    sc = card()
    with pytest.raises(ValueError, match="allowed"):
        sc.claim("c", paper="k", statement="s", measured=1, op="==", threshold=1)
    sc.claim("c", paper="k", statement="s", measured=1, op="<", threshold=2)
    with pytest.raises(ValueError, match="twice"):
        sc.claim("c", paper="k", statement="s", measured=1, op="<", threshold=2)
    with pytest.raises(ValueError, match="no threshold"):
        sc.claim("d", paper="k", statement="s", measured=1, op="<", threshold={"full": 2})


def test_finish_writes_the_json_and_raises_on_a_failed_claim(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    monkeypatch.setenv("PTM_CLAIMS_OUT", str(out))
    sc = card(seed=2)
    sc.claim("ok", paper="a", statement="fine", measured=0.5, op="<", threshold=1, paper_value="0.4")
    sc.claim("bad", paper="b", statement="broken", measured=3.0, op="<", threshold=1)
    with pytest.raises(ClaimsFailed, match=r"bad \(3 not < 1\)"):
        sc.finish()
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["ok", "bad"] and set(rows[0]) == set(JSON_KEYS)
    assert rows[0]["passed"] is True and rows[1]["passed"] is False
    assert rows[0]["profile"] == "smoke" and rows[0]["seed"] == 2 and rows[0]["paper_value"] == "0.4"
    assert load_claims(out)[1]["measured"] == 3.0


def test_finish_without_claims_fails_and_default_path(tmp_path):
    with pytest.raises(ClaimsFailed, match="no claims"):
        card().finish()
    sc = card()
    sc.claim("ok", paper="a", statement="fine", measured=0.5, op="<", threshold=1)
    sc.finish()
    assert (tmp_path / "claims" / "smoke" / "icl" / "demo.json").is_file()  # PTM_CLAIMS_DIR from conftest


def test_scorecard_text_and_html():
    sc = card()
    sc.claim("gap", paper="a", statement="x < y", measured=0.012341, op="<", threshold=0.05, paper_value="qual")
    text = sc.to_text()
    assert "0.01234" in text and "< 0.05" in text and "PASS" in text and "1/1 claims passed" in text
    assert "<td>x &lt; y</td>" in sc._repr_html_()
