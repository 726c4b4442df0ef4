import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from ptmlib.plots import OKABE_ITO, curves, scatter_identity, use_style


def test_curves_label_everything_and_legend_only_for_several_lines():
    use_style()
    ax = curves([1, 2, 3], {"a": [1, 2, 3], "b": [3, 2, 1]}, title="T", xlabel="k (points)", ylabel="error")
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("T", "k (points)", "error")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.lines[0].get_color().lower() == OKABE_ITO[0].lower()
    single = curves([1, 2], {"a": [1, 2]}, title="T", xlabel="x", ylabel="y", logy=True)
    assert single.get_legend() is None and single.get_yscale() == "log"
    plt.close("all")


def test_unlabelled_figures_are_refused():
    with pytest.raises(ValueError):
        curves([1], {"a": [1]}, title="", xlabel="x", ylabel="y")


def test_scatter_identity_draws_the_diagonal():
    ax = scatter_identity([0, 1, 2], [0, 1.1, 2.2], title="T", xlabel="GD", ylabel="LSA")
    x, y = ax.lines[0].get_data()
    assert list(x) == list(y) == [0.0, 2.2]
    plt.close("all")
