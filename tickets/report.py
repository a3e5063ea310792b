"""`python -m tickets.report <experiment dir>`: summary.csv, the plots and report.md beside the results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tickets import analysis, plots


def write(experiment: Path, tolerance: float = 0.5) -> list[Path]:
    """Write `summary.csv`, the plots and `report.md` into `experiment`; returns the paths, report last.
    Raises ValueError when no trial has reported yet. Needs neither Ray nor TensorFlow."""
    df = analysis.load(experiment)
    if df.empty or (df["control"] == "dense").all():
        raise ValueError(f"{experiment}: no trial has reported yet")
    references = analysis.references(experiment)
    s = analysis.summary(df, tolerance, references)
    wins = analysis.winning_tickets(df, tolerance)
    written = [experiment / "summary.csv"]
    s.to_csv(written[0], index=False)
    figures = {"accuracy_vs_weights": plots.accuracy_vs_weights(df, tolerance, references),
               "early_stop_vs_weights": plots.early_stop_vs_weights(df)}
    if (s["control"] == "ticket").any():
        figures["heatmap"] = plots.heatmap(df)
    for name, fig in figures.items():
        written += plots.save(fig, experiment / f"{name}.png", experiment / f"{name}.svg")
    written.append(experiment / "report.md")
    written[-1].write_text(_markdown(experiment, df, s, wins, tolerance, figures, references))
    return written


def _markdown(experiment, df, s, wins, tolerance, figures, references) -> str:
    trials = df[df["control"] != "dense"]
    status = trials.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    lines = [f"# Lottery tickets: {experiment.name}", "",
             f"Dense network: {analysis.dense_accuracy(df) * 100:.2f} % test accuracy. "
             f"Trials: {', '.join(f'{v} {k}' for k, v in status.items())}.", ""]
    collapsed = analysis.collapsed_trials(df)
    if len(collapsed):
        lines += [f"**Warning: {len(collapsed)} trial(s) trained a mask that empties a layer** (layer collapse): "
                  "their accuracy is that of a cut network, not of a ticket, and they never count as winning "
                  "tickets. `pruning.scope: lamp` or `erk` never empties a layer.", "",
                  "| " + " | ".join(collapsed.columns) + " |", "|" + "---|" * len(collapsed.columns)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in collapsed.itertuples(index=False)]
        lines.append("")
    lines += [f"## Winning tickets (within {tolerance:g} points of dense)", ""]
    if wins.empty:
        lines.append("No configuration matched the dense network.")
    else:
        lines += ["| rewind epoch | sparsity | weights remaining | final accuracy |", "|---|---|---|---|"]
        lines += [f"| {r.rewind_epoch:g} | {r.sparsity:g} | {r.weights_remaining * 100:.2f} % | "
                  f"{r.final_accuracy * 100:.2f} % |" for r in wins.itertuples()]
    published, levels = "published_gap" in s, "level" in s
    lines += ["", "## Summary", "", "| control | " + ("level | " if levels else "") + "sparsity | rewind | "
              "accuracy (mean ± std) | early stop | matches | collapsed |" + (" published (nearest) | gap |" if published else ""),
              "|---|---|---|---|---|---|---|" + ("---|" if levels else "") + ("---|---|" if published else "")]
    for r in s.itertuples():
        line = (f"| {r.control} | " + (f"{r.level} | " if levels else "") + f"{r.sparsity:.4g} | {r.rewind_epoch:g} | "
                f"{r.final_accuracy * 100:.2f} ± "
                f"{r.final_accuracy_std * 100:.2f} | {r.early_stop_epoch:.1f} | {'yes' if r.matches else 'no'} | "
                f"{'**yes**' if r.collapsed else 'no'} |")
        if published:
            line += (f" {r.published_accuracy * 100:.1f} % at {r.published_weights_remaining * 100:.3g} % | "
                     f"{r.published_gap * 100:+.1f} pt |" if np.isfinite(r.published_accuracy) else " — | — |")
        lines.append(line)
    if references:
        lines += ["", "## Published reference points", ""]
        lines += [f"- {ref.control}: {ref.source}" + (" (values read off a plot are approximate)"
                                                     if any(p.approximate for p in ref.points) else "")
                  for ref in references]
    lines += ["", "## Figures", ""] + [f"![{name}]({name}.png)" for name in figures] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m tickets.report EXPERIMENT`: (re)write the report; exit 0, or 2 when there is nothing to report."""
    p = argparse.ArgumentParser(prog="python -m tickets.report", description=__doc__)
    p.add_argument("experiment", type=Path)
    p.add_argument("--tolerance", type=float, default=0.5, help="percentage points for 'matches dense'")
    args = p.parse_args(argv)
    try:
        written = write(args.experiment.expanduser(), args.tolerance)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
