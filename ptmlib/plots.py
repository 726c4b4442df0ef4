"""One plotting style for the whole book, and helpers for its recurring figures.

Colour-blind-safe Okabe-Ito palette, titles and labelled axes (with units) on every figure, a legend
only when there is more than one line.
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
