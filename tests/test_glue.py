import sys

import ptmlib as ptm


def test_glue_formats_the_value_and_hides_it(monkeypatch):
    import myst_nb

    calls = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: calls.append((name, value, display)))
    ptm.glue("eta", 0.473933, ".3f")
    ptm.glue("raw", 7)
    assert calls == [("eta", "0.474", False), ("raw", 7, False)]


def test_glue_is_a_no_op_without_myst_nb(monkeypatch):
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import now raises ImportError
    assert ptm.glue("eta", 0.5) is None
