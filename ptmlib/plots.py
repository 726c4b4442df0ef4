"""One plotting style for the whole book, and helpers for its recurring figures.

Colour-blind-safe Okabe-Ito palette, titles and labelled axes (with units) on every figure, a legend
only when there is more than one line. Figures: `curves` (named lines over a shared x axis),
`scatter_identity` (two predictors against each other), `matrices` (a row of heatmaps on one colour
scale, e.g. continual learning's accuracy matrices R[i, j]) and `grouped_bars` (a few metrics per method).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STYLE = {
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.figsize": (6.0, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
}


def use_style() -> None:
    """Apply the book's matplotlib style."""
    plt.rcParams.update(STYLE)


def curves(
    x: Sequence[float] | np.ndarray,
    ys: Mapping[str, Sequence[float] | np.ndarray],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    styles: Mapping[str, str] | None = None,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Plot several named curves over a shared x axis; `styles` maps a name to a line style ('--')."""
    if not title or not xlabel or not ylabel:
        raise ValueError("every figure needs a title and labelled axes")
    if ax is None:
        _, ax = plt.subplots()
    for name, y in ys.items():
        ax.plot(x, y, (styles or {}).get(name, "-"), label=name, marker="o", markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    if len(ys) > 1:
        ax.legend()
    return ax


def scatter_identity(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Scatter b against a with the identity line: how closely two predictors agree."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.0, 4.0))
    a, b = np.asarray(a), np.asarray(b)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=1, linestyle="--")
    ax.scatter(a, b, s=6, alpha=0.6)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, aspect="equal")
    return ax


def matrices(
    mats: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    label: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    axes: Sequence[plt.Axes] | None = None,
) -> list[plt.Axes]:
    """A row of heatmaps, one per named matrix (entry [i, j] at row i, column j), on one colour scale
    with one colour bar labelled `label` (the quantity and its unit); `title` is the figure's title, each
    panel is titled by its name. Draws into `axes` when given (one per matrix)."""
    if not title or not xlabel or not ylabel or not label:
        raise ValueError("every figure needs a title, labelled axes and a labelled colour bar")
    if axes is None:
        _, axes = plt.subplots(1, len(mats), figsize=(2.6 * len(mats) + 1.5, 3.3), squeeze=False)
        axes = list(axes[0])
    if len(axes) != len(mats):
        raise ValueError(f"{len(mats)} matrices for {len(axes)} axes")
    for ax, (name, m) in zip(axes, mats.items()):
        m = np.asarray(m, dtype=float)
        image = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel if ax is axes[0] else "",
               xticks=range(0, m.shape[1], max(1, m.shape[1] // 8)), yticks=range(0, m.shape[0], max(1, m.shape[0] // 8)))
        ax.grid(False)
    fig = axes[0].figure
    fig.colorbar(image, ax=list(axes), label=label)
    fig.suptitle(title, y=1.02)
    return list(axes)


def grouped_bars(
    groups: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Bars grouped along x: one group per outer key (e.g. a method), one bar per inner key (e.g. a
    metric) with one colour per inner key across groups, and a legend of the inner keys when there are
    several. A group may lack some keys: its bars are centred on its position."""
    if not title or not xlabel or not ylabel:
        raise ValueError("every figure needs a title and labelled axes")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups)), 3.8))
    series = list(dict.fromkeys(k for row in groups.values() for k in row))
    width = 0.8 / max(len(row) for row in groups.values())
    x = np.arange(len(groups))
    labelled: set[str] = set()
    for g, row in enumerate(groups.values()):
        for i, (key, value) in enumerate(row.items()):
            ax.bar(x[g] + (i - (len(row) - 1) / 2) * width, value, width, color=OKABE_ITO[series.index(key) % len(OKABE_ITO)],
                   label=None if key in labelled else key)
            labelled.add(key)
    ax.set_xticks(x, list(groups), rotation=20, ha="right")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.axhline(0, color="0.5", linewidth=0.8)
    if len(series) > 1:
        ax.legend()
    return ax
