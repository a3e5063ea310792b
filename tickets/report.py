"""`python -m tickets.report <experiment dir>`: summary.csv, the plots and report.md beside the results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tickets import analysis, plots


def write(experiment: Path, tolerance: float = 0.5) -> list[Path]:
    df = analysis.load(experiment)
    if df.empty or (df["control"] == "dense").all():
        raise ValueError(f"{experiment}: no trial has reported yet")
    s = analysis.summary(df, tolerance)
    wins = analysis.winning_tickets(df, tolerance)
    written = [experiment / "summary.csv"]
    s.to_csv(written[0], index=False)
    figures = {"accuracy_vs_weights": plots.accuracy_vs_weights(df, tolerance),
               "early_stop_vs_weights": plots.early_stop_vs_weights(df)}
    if (s["control"] == "ticket").any():
        figures["heatmap"] = plots.heatmap(df)
    for name, fig in figures.items():
        written += plots.save(fig, experiment / f"{name}.png", experiment / f"{name}.svg")
    written.append(experiment / "report.md")
    written[-1].write_text(_markdown(experiment, df, s, wins, tolerance, figures))
    return written


def _markdown(experiment, df, s, wins, tolerance, figures) -> str:
    trials = df[df["control"] != "dense"]
    status = trials.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    lines = [f"# Lottery tickets: {experiment.name}", "",
             f"Dense network: {analysis.dense_accuracy(df) * 100:.2f} % test accuracy. "
             f"Trials: {', '.join(f'{v} {k}' for k, v in status.items())}.", "",
             f"## Winning tickets (within {tolerance:g} points of dense)", ""]
    if wins.empty:
        lines.append("No configuration matched the dense network.")
    else:
        lines += ["| rewind epoch | sparsity | weights remaining | final accuracy |", "|---|---|---|---|"]
        lines += [f"| {r.rewind_epoch:g} | {r.sparsity:g} | {r.weights_remaining * 100:.2f} % | "
                  f"{r.final_accuracy * 100:.2f} % |" for r in wins.itertuples()]
    lines += ["", "## Summary", "", "| control | sparsity | rewind | accuracy (mean ± std) | early stop | matches |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r.control} | {r.sparsity:g} | {r.rewind_epoch:g} | {r.final_accuracy * 100:.2f} ± "
              f"{r.final_accuracy_std * 100:.2f} | {r.early_stop_epoch:.1f} | {'yes' if r.matches else 'no'} |"
              for r in s.itertuples()]
    lines += ["", "## Figures", ""] + [f"![{name}]({name}.png)" for name in figures] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
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
