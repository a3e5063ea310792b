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
from matplotlib.patches import Rectangle

from tickets import analysis
from tickets.config import split_control
from tickets.instability import STABLE

STABLE_PERCENT = STABLE * 100

# A control's line: its style says its ablation, its marker its method; a mask pruned at
# initialization has its method's colour (it trains from rewind epoch 0 only), the others their
# rewind epoch's.
_STYLE = {None: "-", "reinit": "--", "shuffle": ":", "transfer": "-."}
_MARKER = {"ticket": "o", "transfer": "D", "random_reinit": "s", "random_prune": "^", "magnitude_init": "v",
           "snip": "P", "grasp": "X", "synflow": "*"}
_METHOD_COLOR = {"magnitude_init": "tab:gray", "snip": "tab:orange", "grasp": "tab:purple", "synflow": "tab:green"}


def _style(control: str) -> str:
    return _STYLE["transfer"] if control == "transfer" else _STYLE[split_control(control)[1]]


def _marker(control: str) -> str:
    return _MARKER.get(control) or _MARKER[split_control(control)[0]]


def _rewind_colors(rewinds) -> dict:
    cmap = matplotlib.colormaps["viridis"]
    rewinds = sorted(rewinds)
    return {r: cmap(i / max(1, len(rewinds) - 1) * 0.85) for i, r in enumerate(rewinds)}


def _percent_axis(ax, values) -> None:
    ax.set_xscale("log")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()  # sparser to the right, as in the papers
    ticks = []  # in the order given (the data's own first); one close to a kept one would overprint it
    for v in (float(f"{v:.3g}") for v in values if np.isfinite(v) and v > 0):
        if all(abs(np.log(v / t)) > np.log(1.15) for t in ticks):
            ticks.append(v)
    ticks.sort()
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (% of all kernel weights)")


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def accuracy_vs_weights(df: pd.DataFrame, tolerance: float = 0.5, references=()) -> Figure:
    """Final test accuracy vs percent of the network's weights remaining (every kernel weight,
    `weights_remaining_total`, the papers' axis): a line per rewind epoch, controls dashed, the dense
    network as a band (± the matching tolerance), configurations whose mask cut the network crossed
    out, and `references` (`analysis.references(experiment)`) as grey "published" lines (published
    points are early-stopped; the report compares them with the early-stopped accuracies). Error bars:
    the 95 % confidence interval over replicates (none with one replicate)."""
    s = analysis.summary(df, tolerance)
    dense = analysis.dense_accuracy(df) * 100
    fig, ax = _figure(7, 4.5)
    ax.axhspan(dense - tolerance, dense + tolerance, color="tab:red", alpha=0.25, lw=0,
               label=f"dense {dense:.1f} % ± {tolerance:g} pt")
    ax.axhline(dense, color="tab:red", lw=1.2)
    _lines(ax, s, "final_accuracy", 100, "final_accuracy_ci95")
    _cut(ax, s, "final_accuracy", 100)
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(100.0, ax.get_ylim()[1]))  # wide intervals of few replicates
    # Published gains are over the paper's early-stopped dense network: drawn over this one's (or,
    # without a validation split, over its final accuracy).
    base = analysis.dense_early_stop_accuracy(df) * 100
    for ref in references:
        _published(ax, ref, base if np.isfinite(base) else dense)
    if references:  # label the published points' x positions too
        _percent_axis(ax, [*(s["weights_remaining_total"] * 100),
                           *(p.weights_remaining for r in references for p in r.points)])
    _finish(fig, ax, "final test accuracy (%)", "Accuracy of sparse networks vs weights remaining")
    return fig


def _cut(ax, s: pd.DataFrame, column: str, scale: float) -> None:
    """Cross out the configurations whose mask cut the network: a cut network, not a ticket."""
    cut = s[s["collapsed"]]
    if len(cut):
        ax.scatter(cut["weights_remaining_total"] * 100, cut[column] * scale, marker="x", s=90, color="black",
                   zorder=5, label="cut network (collapsed mask)")


def _published(ax, ref, dense: float) -> None:
    points = sorted(ref.points, key=lambda p: -p.weights_remaining)
    approximate = any(p.approximate for p in points)
    ax.plot([p.weights_remaining for p in points], [p.accuracy(dense) for p in points], color="0.45",
            ls=_style(ref.control) if ref.control != "dense" else "-", marker="*", ms=8, mfc="white", lw=1.5,
            label=f"published {ref.control}, early-stopped{' (≈, read off a plot)' if approximate else ''}"
                  f"{' (gain over dense)' if any(p.gain is not None for p in points) else ''}: "
                  f"{ref.source.split(',')[0][:60]}")  # the citation's first part; report.md has it whole


def early_stop_vs_weights(df: pd.DataFrame) -> Figure:
    """Early-stop epoch (least validation loss) vs percent of weights remaining. Without a validation
    split nothing is early-stopped: the figure says so instead of choosing on the test set."""
    s = analysis.summary(df)
    fig, ax = _figure(7, 4.5)
    if s["early_stop_epoch"].notna().any():
        _lines(ax, s, "early_stop_epoch", 1)
        _cut(ax, s, "early_stop_epoch", 1)
    else:
        _percent_axis(ax, s["weights_remaining_total"] * 100)
        ax.text(0.5, 0.5, "no validation split (data.validation): nothing is early-stopped",
                transform=ax.transAxes, ha="center", va="center")
    _finish(fig, ax, "early-stop epoch (least validation loss)", "Early-stop epoch vs weights remaining")
    return fig


def _lines(ax, s: pd.DataFrame, column: str, scale: float, error: str | None = None) -> None:
    """One line per (control, rewind epoch) over weights remaining: colour by rewind (a method pruning at
    initialization by its method), style by ablation, marker by method."""
    colors = _rewind_colors(s["rewind_epoch"].unique())
    for (control, rewind), g in s.groupby(["control", "rewind_epoch"], observed=True):
        g = g.sort_values("weights_remaining_total", ascending=False)
        color = _METHOD_COLOR.get(split_control(control)[0], colors[rewind])
        ax.errorbar(g["weights_remaining_total"] * 100, g[column] * scale,
                    yerr=g[error] * scale if error else None,  # NaN (one replicate): no bar, never ± 0
                    color=color, ls=_style(control), marker=_marker(control), ms=4,
                    capsize=2, label=f"{control}, rewind {rewind:g}")
    _percent_axis(ax, s["weights_remaining_total"] * 100)


def _finish(fig: Figure, ax, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()


def heatmap(df: pd.DataFrame, control: str = "ticket") -> Figure:
    """Final test accuracy of `control` trials over sparsity × rewind epoch; cells whose mask cut
    the network are hatched and marked "cut"."""
    s = analysis.summary(df)
    s = s[s["control"] == control]
    table = s.pivot_table(index="rewind_epoch", columns="sparsity", values="final_accuracy") * 100
    cut = s.pivot_table(index="rewind_epoch", columns="sparsity", values="collapsed", aggfunc="any")
    cut = cut.reindex(index=table.index, columns=table.columns).fillna(False).astype(bool)
    fig, ax = _figure(1.2 * max(3, table.shape[1]) + 2, 0.8 * max(2, table.shape[0]) + 1.5)
    im = ax.imshow(table.values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"{c:.4g}" for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{r:g}" for r in table.index])
    ax.set_xlabel("sparsity (fraction of the prunable weights pruned)")
    ax.set_ylabel("rewind epoch")
    finite = table.values[np.isfinite(table.values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(table.values):
        if np.isfinite(v):
            collapsed = bool(cut.values[i, j])
            if collapsed:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="white", lw=0))
            ax.text(j, i, f"{v:.1f}" + ("\ncut" if collapsed else ""), ha="center", va="center",
                    color="white" if v < middle else "black", fontweight="bold" if collapsed else None)
    fig.colorbar(im, ax=ax, label="final test accuracy (%)")
    ax.set_title(f"{control}: final test accuracy" + (" (cut: a collapsed mask)" if cut.values.any() else ""))
    fig.tight_layout()
    return fig


def instability(df: pd.DataFrame, tolerance: float = 0.5) -> Figure:
    """Instability analysis (`instability.enabled`): left, the error barrier between the two trained
    copies against the rewind epoch, one line per sparsity (sparsity 0: the dense network), the
    paper's 2 % stability threshold dashed; right, the tickets' final test accuracy against the
    rewind epoch, the dense network as a band. Where the barrier falls under 2 % the network is
    stable; the paper finds tickets match dense accuracy only from there."""
    s = analysis.summary(df, tolerance)
    s = s[s["control"] == "ticket"]
    key = "level" if "level" in s else "sparsity"
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["plasma"]
    groups = list(s.groupby(key, dropna=False))
    dense = analysis.dense_accuracy(df) * 100
    right.axhspan(dense - tolerance, dense + tolerance, color="tab:red", alpha=0.25, lw=0,
                  label=f"dense {dense:.1f} % ± {tolerance:g} pt")
    for i, (value, g) in enumerate(groups):
        g = g.sort_values("rewind_epoch")
        color = cmap(i / max(1, len(groups) - 1) * 0.85)
        label = ("dense (level 0)" if key == "level" and value == 0 else
                 f"level {value} ({g['weights_remaining_total'].mean() * 100:.3g} % left)" if key == "level" else
                 "dense (sparsity 0)" if value == 0 else
                 f"sparsity {value:.4g} ({g['weights_remaining_total'].mean() * 100:.3g} % left)")
        left.plot(g["rewind_epoch"], g["instability"] * 100, color=color, marker="o", label=label)
        right.plot(g["rewind_epoch"], g["final_accuracy"] * 100, color=color, marker="o", label=label)
        stable = g[g["stable"] == True]  # noqa: E712 -- NaN (no twin) is neither
        left.scatter(stable["rewind_epoch"], stable["instability"] * 100, s=90, facecolors="none",
                     edgecolors=color, zorder=5)
    left.axhline(STABLE_PERCENT, color="black", ls="--", lw=1, label=f"stable below {STABLE_PERCENT:g} % (paper)")
    left.set_ylabel("instability: test error barrier (%)")
    on = "validation" if analysis.validated(df) else "test"
    left.set_title(f"Instability to SGD noise vs rewind epoch (circled: stable, on the {on} barrier)", fontsize=10)
    right.set_ylabel("final test accuracy (%)")
    right.set_title("Ticket accuracy vs rewind epoch")
    for ax in (left, right):
        ax.set_xlabel("rewind epoch")
        ax.set_xticks(sorted(s["rewind_epoch"].unique()))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def save(fig: Figure, *paths) -> list[Path]:
    """Save as PNG and/or SVG (by suffix)."""
    out = [Path(p) for p in paths]
    for path in out:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    return out
