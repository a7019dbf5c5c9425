"""Power-law fits and log-log plots for the scaling measurements.

A stage whose cost is ``c * N^slope`` is a straight line on log-log axes; the fitted slope is the
figure to read: about 1 for linear time, about 0 for memory that does not grow with N. Fitted by
least squares on ``log(cost) = intercept + slope * log(N)`` (``numpy.polyfit``, degree 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_slope(ns: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of ``log(y) = intercept + slope * log(n)``, natural logs.

    Needs at least two distinct positive ``n`` and positive ``y`` (a log of zero has no meaning here).
    """
    n, y = np.asarray(ns, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"ns and ys must be 1-D of the same length, got {n.shape} and {y.shape}")
    if len(np.unique(n)) < 2 or (n <= 0).any() or (y <= 0).any():
        raise ValueError(f"need >= 2 distinct positive N and positive costs, got ns={n.tolist()} ys={y.tolist()}")
    slope, intercept = np.polyfit(np.log(n), np.log(y), 1)
    return float(slope), float(intercept)


def extrapolate(ns: Sequence[float], ys: Sequence[float], n: float) -> float:
    """The fitted power law's value at ``n`` (e.g. 10^9); only as good as the fit's range."""
    slope, intercept = fit_slope(ns, ys)
    return float(np.exp(intercept + slope * np.log(n)))


def plot_loglog(path: str, title: str, xlabel: str, ylabel: str,
                series: dict[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, float]:
    """Points and fitted line per series on log-log axes, the slope in the legend; PNG at ``path``.

    Returns the slope of each series (series with fewer than two distinct N are drawn unfitted).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    slopes: dict[str, float] = {}
    for i, (name, (ns, ys)) in enumerate(series.items()):
        color = f"C{i}"
        n, y = np.asarray(ns, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        try:
            slope, intercept = fit_slope(n, y)
        except ValueError:
            ax.plot(n, y, "o", color=color, label=name)
            continue
        slopes[name] = slope
        grid = np.geomspace(n.min(), n.max(), 50)
        ax.plot(n, y, "o", color=color)
        ax.plot(grid, np.exp(intercept + slope * np.log(grid)), "-", color=color,
                label=f"{name} (slope {slope:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return slopes
