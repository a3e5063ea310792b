"""`python -m tickets.report <experiment dir>`: summary.csv, the plots and report.md beside the results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tickets import analysis, artifacts, plots
from tickets import config as config_lib
from tickets.plots import STABLE_PERCENT


def write(experiment: Path, tolerance: float = 0.5, deployment: bool | None = None) -> list[Path]:
    """Write `summary.csv`, the plots and `report.md` into `experiment`; returns the paths, report last.
    Raises ValueError when no trial has reported yet. Needs neither Ray nor TensorFlow, but for the
    deployment table (`deployment`, by default the spec's `report.deployment`)."""
    df = analysis.load(experiment)
    if df.empty or (df["control"] == "dense").all():
        raise ValueError(f"{experiment}: no trial has reported yet")
    references, match = analysis.references(experiment), analysis.match_mode(experiment)
    s = analysis.summary(df, tolerance, references, match, analysis.expected_runs(experiment))
    wins = analysis.winning_tickets(df, tolerance, match)
    pairs = analysis.paired(df, match)
    written = [experiment / "summary.csv"]
    s.to_csv(written[0], index=False)
    figures = {"accuracy_vs_weights": plots.accuracy_vs_weights(df, tolerance, references),
               "early_stop_vs_weights": plots.early_stop_vs_weights(df)}
    if (s["control"] == "ticket").any():
        figures["heatmap"] = plots.heatmap(df)
    if s["instability"].notna().any():
        figures["instability"] = plots.instability(df, tolerance)
    for name, fig in figures.items():
        written += plots.save(fig, experiment / f"{name}.png", experiment / f"{name}.svg")
    written.append(experiment / "report.md")
    spec = config_lib.load(experiment / artifacts.SPEC_FILE) if (experiment / artifacts.SPEC_FILE).is_file() else None
    deploy = deployment if deployment is not None else bool(spec and spec.report.deployment)
    text = _markdown(experiment, df, s, wins, pairs, tolerance, figures, references)
    if deploy:
        table = _deployment(experiment, spec, wins) if spec is not None else [
            "## Deployment", "", f"(not measured: no {artifacts.SPEC_FILE} beside the results)"]
        text = text.replace("\n## Figures\n", "\n" + "\n".join(table) + "\n\n## Figures\n", 1)
    written[-1].write_text(text)
    return written


def what_was_run(experiment: Path, df) -> list[str]:
    """The report's opening: model, data sizes, pruning, what the weights axis counts, and which split
    chose what -- what a reader needs before any number."""
    path = experiment / artifacts.SPEC_FILE
    if not path.is_file():
        return ["(no spec.yaml beside the results: what was run is unknown)"]
    spec = config_lib.load(path)
    manifest = artifacts.read_dense(experiment / artifacts.DENSE_DIR) or {}
    sizes = manifest.get("data")
    m, d, p = spec.model, spec.data, spec.pruning
    model = f"{m.arch}" + (f" (width {m.width:g}, {m.strides} strides)" if m.arch == "mobilenet_v2" else "")
    images = (f"{sizes['train']:,} train / {sizes['validation']:,} validation / {sizes['test']:,} test images"
              if sizes else f"split sizes not recorded (a dense run of format {manifest.get('format', 1)}, "
                            "from an older tickets)")
    mode = (f"IMP, {p.num_levels()} levels of {p.rate:g} of the remaining weights" if p.mode == "imp" else
            f"one shot to IMP levels {list(spec.search.level)} (rate {p.rate:g})" if spec.search.level else
            f"one shot to sparsities {list(spec.search.sparsity)}")
    rates = ", ".join(f"{g} {r:g}" for g, r in p.rates.items())
    final = analysis.final_rows(df[df["control"] != "dense"])
    sparsest = final.loc[final["weights_remaining_total"].idxmin()] if final["weights_remaining_total"].notna().any() else None
    lines = [f"- **Model**: {model}, {spec.dense.epochs} dense epochs ({spec.dense.optimizer.name}, learning rate "
             f"{spec.dense.optimizer.learning_rate:g}, {spec.dense.schedule.name} schedule), seed {spec.seed}.",
             f"- **Data**: {d.dataset}" + (f" half {d.half}" if d.half else "") + f" at {d.image_size} px: {images}.",
             f"- **Pruning**: {mode}; scope `{p.scope}`; excluded (left dense): {', '.join(p.exclude) or 'nothing'}"
             + (f"; own rates per level: {rates}" if rates else "") + f"; controls: {', '.join(spec.search.control)}; "
             f"rewind epochs {list(spec.search.rewind_epoch)}; replicates {len(spec.search.replicate)}"
             + _init_methods(spec) + ".",
             "- **Weights axis**: the plots and `weights_remaining_total` count every kernel weight of the network "
             "(convolutions, depthwise and dense layers, the excluded ones included), as the papers do; "
             "`sparsity` and `weights_remaining` count the prunable weights only"
             + (f" (the sparsest trial here keeps {sparsest['weights_remaining'] * 100:.3g} % of the prunable and "
                f"{sparsest['weights_remaining_total'] * 100:.3g} % of all kernel weights)" if sparsest is not None else "")
             + "."]
    if analysis.validated(df):
        decided = analysis.decided_by(df, spec.report.match)[1]
        lines.append(f"- **Selection**: the early-stop epoch is the epoch of least validation loss on the "
                     f"{d.validation:,} held-out training images; early-stop accuracies are test accuracies at that "
                     "epoch, and published (early-stopped) points are compared with them. `matches` and the "
                     f"winning tickets are decided on the {decided} (`report.match: {spec.report.match}`; the "
                     "trial's against the dense network's); test accuracies are reported. Nothing is chosen on "
                     "the test set.")
    else:
        lines.append("- **Selection**: no validation split (`data.validation`), so nothing is early-stopped: every "
                     "accuracy here is the final epoch's test accuracy, and published (early-stopped) points are "
                     "drawn but not compared.")
    return lines


def _init_methods(spec) -> str:
    """What the controls pruning at initialization scored on, for the report's opening."""
    methods = {config_lib.split_control(c)[0] for c in spec.search.control} & set(config_lib.INIT_METHODS)
    if not methods:
        return ""
    p = spec.pruning
    said = [f"{m}: {p.init_batches} training batch(es) of {spec.data.batch_size}" if m in ("snip", "grasp") else
            f"synflow: {p.synflow_rounds} rounds, data-free" if m == "synflow" else "magnitude_init: |w|"
            for m in sorted(methods)]
    return ("; pruned at initialization, trained from it (rewind epoch 0 only), " + "; ".join(said)
            + (", each method's own per-layer counts" if p.scope == "global" else f", per-layer counts by {p.scope}"))


def _markdown(experiment, df, s, wins, pairs, tolerance, figures, references) -> str:
    trials = df[df["control"] != "dense"]
    status = trials.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    dense_stop = analysis.dense_early_stop_accuracy(df)
    stopped = f", {dense_stop * 100:.2f} % at its early-stop epoch" if np.isfinite(dense_stop) else ""
    lines = [f"# Lottery tickets: {experiment.name}", "", *what_was_run(experiment, df), "",
             f"Dense network: {analysis.dense_accuracy(df) * 100:.2f} % final test accuracy{stopped}. "
             f"Trials: {', '.join(f'{v} {k}' for k, v in status.items())}. Only finished runs count below; a grid "
             "point some of whose runs did not finish is marked incomplete.", ""]
    collapsed = analysis.collapsed_trials(df)
    if len(collapsed):
        lines += [f"**Warning: {len(collapsed)} trial(s) trained a mask that cuts the network** (layer collapse): "
                  "their accuracy is that of a cut network, not of a ticket, and they never match or win. "
                  "`pruning.scope: lamp` or `erk` never empties a layer.", "",
                  "| " + " | ".join(collapsed.columns) + " |", "|" + "---|" * len(collapsed.columns)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in collapsed.itertuples(index=False)]
        lines.append("")
    low = _min_live_channels(experiment)
    narrow = s[(s["narrowest_live_channels"] <= low) & ~s["collapsed"]] if low else s.iloc[:0]
    if len(narrow):
        lines += [f"**Near collapse**: {len(narrow)} configuration(s) keep a layer with at most {low} live channels "
                  "(`pruning.min_live_channels`; `narrowest_layer` in the results names it).", ""]
    if s["emptied_branches"].any():
        lines += ["Some masks empty residual branches (`emptied_branches` in the results): the skip connection "
                  "carries the signal past them, so the network is not cut, but those blocks are skipped.", ""]
    on, reference = s["match_on"].iloc[0], s["dense_match_accuracy"].iloc[0]
    early = analysis.validated(df)  # a validation split: early stops, and winners chosen on it
    lines += [f"## Winning tickets ({on} within {tolerance:g} points of dense, network not cut)", "",
              f"Decided on the {on} (dense {reference * 100:.2f} %), as far as the 95 % interval over replicates "
              "allows: a configuration whose interval straddles the threshold is undecided, not a winner. Test "
              "accuracies are reported.", ""]
    if wins.empty:
        lines.append("No configuration matched the dense network.")
    else:
        lines += ["| rewind epoch | sparsity | weights remaining (all / prunable) | " + on + " | final test accuracy | "
                  "verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {r.rewind_epoch:g} | {r.sparsity:.4g} | {r.weights_remaining_total * 100:.2f} % / "
                  f"{r.weights_remaining * 100:.2f} % | {_spread(r, 'match_accuracy')} | "
                  f"{_spread(r, 'final_accuracy')} | {r.match_verdict} |" for r in wins.itertuples()]
    published, levels = "published_gap" in s, "level" in s
    referenced = {ref.control for ref in references}
    lines += ["", "## Summary", "", "Mean ± the half-width of the 95 % confidence interval over the n replicates that "
              "finished (Student's t); one replicate has no interval.", "",
              "| control | " + ("level | " if levels else "") + "sparsity | weights left (all) | rewind | n | "
              "final test accuracy | " + ("early-stop accuracy | early-stop epoch | " if early else "")
              + on + " | matches dense | collapsed |" + (" published (nearest) | gap (early stop) |" if published else ""),
              "|" + "---|" * 9 + ("---|" if levels else "") + ("---|---|" if early else "")
              + ("---|---|" if published else "")]
    for r in s.itertuples():
        n = f"{r.replicates}" + (" (one replicate: no interval)" if r.replicates == 1 else "") + \
            ("" if r.complete else " (incomplete)")
        left = f"{r.weights_remaining_total * 100:.3g} %" if np.isfinite(r.weights_remaining_total) else "—"
        line = (f"| {r.control} | " + (f"{r.level} | " if levels else "") + f"{r.sparsity:.4g} | "
                f"{left} | {r.rewind_epoch:g} | {n} | {_spread(r, 'final_accuracy')} | ")
        if early:
            epoch = f"{r.early_stop_epoch:.1f}" if np.isfinite(r.early_stop_epoch) else "—"
            line += f"{_spread(r, 'early_stop_accuracy')} | {epoch} | "
        line += f"{_spread(r, 'match_accuracy')} | {r.match_verdict} | {'**yes**' if r.collapsed else 'no'} |"
        if published:
            line += (f" {r.published_accuracy * 100:.1f} % at {r.published_weights_remaining * 100:.3g} % | "
                     + (f"{r.published_gap * 100:+.1f} pt |" if np.isfinite(r.published_gap) else "— (no validation split) |")
                     if np.isfinite(r.published_accuracy) else
                     f" — (none within ×{analysis.PUBLISHED_WITHIN:g}) | — |" if r.control in referenced else " — | — |")
        lines.append(line)
    lines += _paired(pairs)
    lines += _instability(df, s)
    if references:
        lines += ["", "## Published reference points", ""]
        lines += [f"- {ref.control}: {ref.source}" + (" (values read off a plot are approximate)"
                                                     if any(p.approximate for p in ref.points) else "")
                  for ref in references]
        lines += ["", f"A configuration is compared with a published point of its control only within a factor of "
                  f"{analysis.PUBLISHED_WITHIN:g} of its weights remaining (about one IMP level), never with a "
                  "farther one."]
    lines += ["", "## Figures", ""] + [f"![{name}]({name}.png)" for name in figures] + [""]
    return "\n".join(lines)


def _deployment(experiment: Path, spec, wins) -> list[str]:
    """The deployment table: the dense network and each winning ticket as `tickets.export` writes
    them, timed on this machine (`tickets.deployment`)."""
    lines = ["## Deployment", ""]
    if wins.empty:
        return lines + ["No winning ticket to deploy."]
    try:
        from tickets import deployment

        files = deployment.winning_files(experiment, wins, spec.pruning.mode == "imp")
        rows = deployment.table(experiment, files)
        machine = deployment.machine()
    except Exception as e:  # the report stands without it; say why
        return lines + [f"(not measured: {type(e).__name__}: {e})"]
    missing = len(wins) - len(files)
    base = rows[0]
    lines += [f"Each network exported as `python -m tickets.export` writes it (removed channels gone, Keras's "
              f"BatchNorm; TFLite with sparse weight encoding) and timed here: **{machine}**. Latency: one image, "
              f"one thread, LiteRT, median of {deployment.ROUNDS} rounds. Multiply-adds are what the exported "
              "model computes (an unstructured ticket's zeros are still multiplied: its nonzero ones in brackets; "
              "on x86 with AVX, XNNPACK has no sparse kernels, docs/export.md).", "",
              "| network | parameters | multiply-adds | .keras | .tflite | latency | speed-up |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        macs = f"{r['macs'] / 1e6:.3g} M" + (f" ({r['nonzero_macs'] / 1e6:.3g} M)" if r["nonzero_macs"] < 0.99 * r["macs"] else "")
        lines.append(f"| {r['network']} | {r['params']:,} | {macs} | {r['keras_bytes'] / 1e6:.2f} MB | "
                     f"{r['tflite_bytes'] / 1e6:.2f} MB | {r['latency_ms']:.3g} ms | "
                     f"{base['latency_ms'] / r['latency_ms']:.2f}x |")
    if missing:
        lines += ["", f"({missing} winning configuration(s) without a ticket file on disk: not measured.)"]
    return lines


def _spread(r, name: str) -> str:
    """"mean ± ci95 %", or the mean alone where there is no interval (one replicate: its row says so);
    "—" without a result."""
    mean, ci = getattr(r, name), getattr(r, f"{name}_ci95")
    if not np.isfinite(mean):
        return "—"
    return f"{mean * 100:.2f} ± {ci * 100:.2f} %" if np.isfinite(ci) else f"{mean * 100:.2f} %"


def _paired(pairs) -> list[str]:
    """Each control against the ticket of its grid point, replicate by replicate."""
    if pairs.empty:
        return []
    on = pairs["on"].iloc[0]
    key = "level" if "level" in pairs else "sparsity"
    lines = ["", "## Controls against the ticket, paired by replicate", "",
             f"Control − the run it is compared with (the ticket; an ablation of a mask pruned at initialization "
             f"also its own method) in the {on}, replicate by replicate (the same data order; the same start "
             "where both start from the same weights), over the replicates where both finished: the mean "
             "difference, its 95 % confidence interval (Student's t) and the two-sided p-value of the paired "
             "t-test (scipy's `ttest_rel`). The final test accuracy's mean difference is beside it.", "",
             f"| {key} | rewind | control | against | pairs | difference | 95 % interval | p (paired t) | "
             "test difference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pairs.itertuples():
        interval = (f"[{(r.difference - r.ci95) * 100:+.2f}, {(r.difference + r.ci95) * 100:+.2f}] pt"
                    if np.isfinite(r.ci95) else "— (one pair)" if r.pairs == 1 else "—")
        p = f"{r.p_value:.3g}" if np.isfinite(r.p_value) else "—"
        lines.append(f"| {getattr(r, key):.4g} | {r.rewind_epoch:g} | {r.control} | {r.against} | {r.pairs} | "
                     f"{r.difference * 100:+.2f} pt | {interval} | {p} | {r.test_difference * 100:+.2f} pt |")
    return lines


def _instability(df, s) -> list[str]:
    """Which rewind points are stable to SGD noise (error barrier under the paper's 2 %) and which
    tickets match: the section that explains the rewind grid (Frankle et al. 2020, linear mode
    connectivity). Tickets only: the ticket at sparsity 0 (an IMP chain's level 0) is the dense network."""
    twins = s[(s["control"] == "ticket") & s["instability"].notna()]
    if twins.empty:
        return []
    early = analysis.validated(df)
    batchnorm = ", ".join(sorted(set(df["instability_batchnorm"].dropna()) - {""})) or "interpolate"
    both = twins["interpolated_instability"].notna().any()
    key = "level" if "level" in twins else "sparsity"
    how = {"interpolate": " (interpolated with the weights, as the paper's definition interpolates the whole weight "
                          "vector; whether the paper's runs recomputed them could not be checked: docs/instability.md)",
           "reestimate": " (recomputed from training batches at every point; the barrier with them interpolated, "
                         "the definition's, is beside it)"}
    lines = ["", "## Instability: which rewind points are stable to SGD noise", "",
             "Each ticket below was trained twice from the same rewound weights and mask with different data order "
             "and augmentation; the *instability* is the error barrier on the straight line between the two trained "
             "copies: the largest error along it minus the mean of the two ends' errors (Frankle et al. 2020, "
             f"\"Linear Mode Connectivity and the Lottery Ticket Hypothesis\"). Stable: under {STABLE_PERCENT:g} %, the "
             "paper's threshold" + (", judged on the validation split (test barrier reported beside it)" if early else
                                    ", judged on the test set (no validation split)")
             + f". BatchNorm statistics along the line: {batchnorm}{how.get(batchnorm, '')}. "
             "The paper finds tickets match the dense network only from the rewind points where they are stable.", ""]
    dense = {0: "the dense network (level 0)"} if key == "level" else {0.0: "the dense network (sparsity 0)"}
    for value, g in twins.groupby(key, dropna=False):
        g = g.sort_values("rewind_epoch")
        name = dense.get(value) or (f"level {value}" if key == "level" else f"sparsity {value:.4g}")
        stable = [f"{r:g}" for r in g.loc[g["stable"] == True, "rewind_epoch"]]  # noqa: E712
        matching = [f"{r:g}" for r in g.loc[g["match_verdict"].str.startswith("matches"), "rewind_epoch"]]
        lines.append(f"- {name} ({g['weights_remaining_total'].mean() * 100:.3g} % of weights left): stable at rewind "
                     f"epoch(s) {', '.join(stable) or 'none'}; matches dense at {', '.join(matching) or 'none'}.")
    lines += ["", "| " + key + " | rewind | instability (test) | " + ("instability (validation) | " if early else "")
              + ("interpolated BatchNorm: test | " + ("validation | " if early else "") if both else "")
              + "stable | final test accuracy | twin's final test accuracy | matches dense |",
              "|---|---|---|" + ("---|" if early else "") + (("---|---|" if early else "---|") if both else "")
              + "---|---|---|---|"]
    for r in twins.sort_values([key, "rewind_epoch"]).itertuples():
        lines.append(f"| {getattr(r, key):.4g} | {r.rewind_epoch:g} | {r.instability * 100:.2f} % | "
                     + (f"{r.val_instability * 100:.2f} % | " if early else "")
                     + ((f"{r.interpolated_instability * 100:.2f} % | "
                         + (f"{r.interpolated_val_instability * 100:.2f} % | " if early else "")) if both else "")
                     + f"{'yes' if r.stable else 'no'} | {r.final_accuracy * 100:.2f} % | {r.twin_accuracy * 100:.2f} % | "
                     f"{r.match_verdict} |")
    return lines


def _min_live_channels(experiment: Path) -> int:
    path = experiment / artifacts.SPEC_FILE
    return config_lib.load(path).pruning.min_live_channels if path.is_file() else config_lib.PruningSpec.min_live_channels


def main(argv: list[str] | None = None) -> int:
    """`python -m tickets.report EXPERIMENT`: (re)write the report; exit 0, or 2 when there is nothing to report."""
    p = argparse.ArgumentParser(prog="python -m tickets.report", description=__doc__)
    p.add_argument("experiment", type=Path)
    p.add_argument("--tolerance", type=float, default=0.5, help="percentage points for 'matches dense'")
    p.add_argument("--deployment", action=argparse.BooleanOptionalAction, default=None,
                   help="the deployment table (winning tickets exported and timed here); default: the spec's "
                        "report.deployment")
    args = p.parse_args(argv)
    try:
        written = write(args.experiment.expanduser(), args.tolerance, args.deployment)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
