"""The canonical lottery-ticket figures, from a results frame. Each returns a matplotlib Figure.

Figures are built without pyplot: no global state, no display needed (clusters, Ray workers), and
a notebook shows the returned Figure.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tickets import analysis

_STYLE = {"ticket": "-", "transfer": "-.", "random_reinit": "--", "random_prune": ":"}
_MARKER = {"ticket": "o", "transfer": "D", "random_reinit": "s", "random_prune": "^"}


def _rewind_colors(rewinds) -> dict:
    cmap = matplotlib.colormaps["viridis"]
    rewinds = sorted(rewinds)
    return {r: cmap(i / max(1, len(rewinds) - 1) * 0.85) for i, r in enumerate(rewinds)}


def _percent_axis(ax, values) -> None:
    ax.set_xscale("log")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()  # sparser to the right, as in the papers
    ticks = sorted({float(f"{v:.3g}") for v in values})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%)")


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def accuracy_vs_weights(df: pd.DataFrame, tolerance: float = 0.5, references=()) -> Figure:
    """Final test accuracy vs percent of weights remaining: a line per rewind epoch, controls dashed,
    the dense network as a band (± the matching tolerance), configurations whose mask emptied a
    layer crossed out, and `references` (`analysis.references(experiment)`) as grey "published" lines."""
    s = analysis.summary(df, tolerance)
    dense = analysis.dense_accuracy(df) * 100
    fig, ax = _figure(7, 4.5)
    ax.axhspan(dense - tolerance, dense + tolerance, color="tab:red", alpha=0.25, lw=0,
               label=f"dense {dense:.1f} % ± {tolerance:g} pt")
    ax.axhline(dense, color="tab:red", lw=1.2)
    _lines(ax, s, "final_accuracy", 100, "final_accuracy_std")
    cut = s[s["collapsed"]]
    if len(cut):
        ax.scatter(cut["weights_remaining"] * 100, cut["final_accuracy"] * 100, marker="x", s=90, color="black",
                   zorder=5, label="collapsed mask (a layer emptied)")
    for ref in references:
        _published(ax, ref, dense)
    if references:  # label the published points' x positions too
        _percent_axis(ax, [*(s["weights_remaining"] * 100), *(p.weights_remaining for r in references for p in r.points)])
    _finish(fig, ax, "test accuracy (%)", "Accuracy of sparse networks vs weights remaining")
    return fig


def _published(ax, ref, dense: float) -> None:
    points = sorted(ref.points, key=lambda p: -p.weights_remaining)
    approximate = any(p.approximate for p in points)
    ax.plot([p.weights_remaining for p in points], [p.accuracy(dense) for p in points], color="0.45",
            ls=_STYLE.get(ref.control, "-"), marker="*", ms=8, mfc="white", lw=1.5,
            label=f"published {ref.control}{' (≈, read off a plot)' if approximate else ''}"
                  f"{' (gain over dense)' if any(p.gain is not None for p in points) else ''}: "
                  f"{ref.source.split(',')[0][:60]}")  # the citation's first part; report.md has it whole


def early_stop_vs_weights(df: pd.DataFrame) -> Figure:
    """Early-stop epoch (lowest test loss) vs percent of weights remaining."""
    s = analysis.summary(df)
    fig, ax = _figure(7, 4.5)
    _lines(ax, s, "early_stop_epoch", 1)
    _finish(fig, ax, "early-stop epoch (min test loss)", "Early-stop epoch vs weights remaining")
    return fig


def _lines(ax, s: pd.DataFrame, column: str, scale: float, error: str | None = None) -> None:
    """One line per (control, rewind epoch) over weights remaining: colour by rewind, style by control."""
    colors = _rewind_colors(s["rewind_epoch"].unique())
    for (control, rewind), g in s.groupby(["control", "rewind_epoch"], observed=True):
        g = g.sort_values("weights_remaining", ascending=False)
        ax.errorbar(g["weights_remaining"] * 100, g[column] * scale, yerr=g[error] * scale if error else None,
                    color=colors[rewind], ls=_STYLE.get(control, "-"), marker=_MARKER.get(control, "o"), ms=4,
                    capsize=2, label=f"{control}, rewind {rewind:g}")
    _percent_axis(ax, s["weights_remaining"] * 100)


def _finish(fig: Figure, ax, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()


def heatmap(df: pd.DataFrame, control: str = "ticket") -> Figure:
    """Final test accuracy of `control` trials over sparsity × rewind epoch."""
    s = analysis.summary(df)
    s = s[s["control"] == control]
    table = s.pivot_table(index="rewind_epoch", columns="sparsity", values="final_accuracy") * 100
    fig, ax = _figure(1.2 * max(3, table.shape[1]) + 2, 0.8 * max(2, table.shape[0]) + 1.5)
    im = ax.imshow(table.values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"{c:g}" for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{r:g}" for r in table.index])
    ax.set_xlabel("sparsity (fraction pruned)")
    ax.set_ylabel("rewind epoch")
    finite = table.values[np.isfinite(table.values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(table.values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white" if v < middle else "black")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title(f"{control}: final test accuracy")
    fig.tight_layout()
    return fig


def save(fig: Figure, *paths) -> list[Path]:
    """Save as PNG and/or SVG (by suffix)."""
    out = [Path(p) for p in paths]
    for path in out:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    return out
