"""`python -m benchmarks` (from the repository root): measure the figures, print the table, write JSON.

Sizes: the default (`full`), `--quick` (every CPU figure at small sizes; its measured time:
docs/performance.md) and `--tiny` (each figure's code runs; what the tests use). Figures 7 and 12 need a GPU
and say "skipped" without. `--list-figures` prints the figures as docs/performance.md's table, running none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.bench import Bench, log, machine
from benchmarks.figures import FIGURES, markdown


def run(figures: list[int], size_name: str) -> dict:
    """Measure `figures` at `size_name`; each figure's result, with its goal, verdict and detail."""
    from tickets import runtime

    runtime.configure(os.cpu_count())  # this process's own measurements (figures 1, 6, 7): every CPU
    results: dict = {"size": size_name, "machine": machine(), "figures": {}}
    with tempfile.TemporaryDirectory(prefix="tickets-bench-") as tmp:
        bench = Bench(size_name, Path(tmp), results["machine"])
        for number in figures:
            figure = FIGURES[number]
            log(f"figure {number}: {figure.what}")
            results["figures"][number] = describe(figure, figure.measure(bench))
    return results


def describe(figure, fig: dict) -> dict:
    """`fig` with its goal, its verdict and its detail line, as the JSON keeps them."""
    fig["name"], fig["goal"] = figure.name, str(figure.goal)
    if "skipped" in fig:
        fig["verdict"], fig["detail"] = "skipped", fig["skipped"]
    elif fig["measured"] is None:
        fig["verdict"], fig["detail"] = "not measured", fig.get("not_measured", "")
    else:
        fig["threshold"] = figure.goal.threshold(fig)
        fig["verdict"] = "meets" if figure.goal.met(fig) else "MISSES"
        fig["detail"] = figure.detail(fig)
    return fig


def table(results: dict) -> str:
    lines = [f"{'figure':<36} {'measured':>9} {'goal':>22}  detail", "-" * 100]
    for number, fig in sorted(results["figures"].items()):
        value = fig.get("measured")
        shown = f"{value:>9.3f}" if isinstance(value, (int, float)) else f"{'-':>9}"
        goal = fig["goal"] + (f" = {fig['threshold']:.2f}" if "threshold" in fig and fig["goal"].count(" ") > 1 else "")
        lines.append(f"{number:>2}. {fig['name']:<32} {shown} {goal:>22}  {fig['verdict']}; {fig['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the figures asked for, print the table, write the JSON; exit 0, or 2 on bad flags."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="figures:\n" + "\n".join(f"  {n:>2}. {f.what} (goal {f.goal})"
                                                                for n, f in FIGURES.items()))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="every CPU figure at small sizes (its measured time: docs/performance.md)")
    group.add_argument("--tiny", action="store_true", help="smallest sizes: checks that the figures run")
    p.add_argument("--only", default=",".join(map(str, FIGURES)), help="comma-separated figure numbers")
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    p.add_argument("--list-figures", action="store_true",
                   help="print the figures as docs/performance.md's Markdown table and exit (runs none)")
    args = p.parse_args(argv)
    if args.list_figures:
        print(markdown())
        return 0
    try:
        figures = sorted({int(f) for f in args.only.split(",")})
    except ValueError:
        print(f"error: --only: {args.only!r} is not a list of figure numbers", file=sys.stderr)
        return 2
    if not set(figures) <= set(FIGURES):
        print(f"error: --only: {args.only!r} names figures outside 1..{max(FIGURES)}", file=sys.stderr)
        return 2
    results = run(figures, "tiny" if args.tiny else "quick" if args.quick else "full")
    print(table(results))
    args.out.write_text(json.dumps(results, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
