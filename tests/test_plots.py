import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

import numpy as np

from ptmlib.plots import OKABE_ITO, curves, grouped_bars, matrices, scatter_identity, use_style


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


def test_matrices_draw_one_image_per_matrix_on_one_scale_with_one_colour_bar():
    mats = {"naive": np.eye(3), "replay": np.full((3, 3), 0.5)}
    axes = matrices(mats, title="Accuracy matrices", xlabel="tested on task j", ylabel="after task i", label="accuracy")
    assert [ax.get_title() for ax in axes] == ["naive", "replay"]
    assert [len(ax.images) for ax in axes] == [1, 1] and axes[0].images[0].get_clim() == (0.0, 1.0)
    assert (axes[0].get_ylabel(), axes[1].get_ylabel(), axes[1].get_xlabel()) == ("after task i", "", "tested on task j")
    assert np.array_equal(axes[1].images[0].get_array(), np.full((3, 3), 0.5))
    assert list(axes[0].get_xticks()) == list(axes[0].get_yticks()) == [0, 1, 2]  # one tick per row and column
    fig = axes[0].figure
    assert fig._suptitle.get_text() == "Accuracy matrices"
    assert [a.get_ylabel() for a in fig.axes if a not in axes] == ["accuracy"]  # the colour bar
    _, given = plt.subplots(1, 3)
    assert matrices(mats, title="T", xlabel="x", ylabel="y", label="z", axes=given[1:]) == list(given[1:])
    with pytest.raises(ValueError):
        matrices(mats, title="T", xlabel="x", ylabel="y", label="")
    plt.close("all")


def test_grouped_bars_one_bar_per_method_and_metric():
    groups = {"naive": {"accuracy": 0.2, "forgetting": 0.7}, "replay": {"accuracy": 0.5, "forgetting": 0.3},
              "nearest mean": {"accuracy": 0.6, "forgetting": 0.1}}
    ax = grouped_bars(groups, title="Metrics", xlabel="method", ylabel="fraction")
    assert len(ax.patches) == 6 and [t.get_text() for t in ax.get_xticklabels()] == list(groups)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["accuracy", "forgetting"]
    assert [p.get_height() for p in ax.patches[::2]] == [0.2, 0.5, 0.6]  # the first metric, method by method
    assert len({p.get_facecolor() for p in ax.patches[::2]}) == 1  # one colour per metric
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Metrics", "method", "fraction")
    single = grouped_bars({"a": {"x": 1.0}, "b": {"x": 2.0}}, title="T", xlabel="m", ylabel="v")
    assert single.get_legend() is None and len(single.patches) == 2
    partial = grouped_bars({"a": {"x": 1.0, "y": 2.0}, "b": {"y": 3.0}}, title="T", xlabel="m", ylabel="v")
    lone = partial.patches[2]
    assert lone.get_x() + lone.get_width() / 2 == 1.0 and lone.get_facecolor() == partial.patches[1].get_facecolor()
    plt.close("all")
