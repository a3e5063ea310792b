"""`python -m tickets.sweep SPEC`: one dense run, then a Tune grid of sparse trials.

  1. check everything before Ray starts (`plan`): bad input is one line, exit 2, nothing written;
  2. start or join Ray (`session`): token authentication on, trial and dense-run resources;
  3. load the data once and train the dense network once, as Ray tasks (`dense`); its snapshots go
     to `<experiment>/dense/` and into the object store, one ref each (a dense run already there with
     the same dense spec is reused), and the grid's masks are checked on its final weights;
  4. the Tune grid over sparsity × rewind epoch × control × replicate (`tuning`);
  5. `<experiment>/results.parquet` from every trial's reports plus the dense reference rows, and the report.

Exit codes: 0 every trial finished; 1 some trial errored (the others' results are kept); 2 bad input
(also: another driver is running the experiment); 74 stopped because the experiment's storage failed
(full, read-only, gone: `storage`); 130 interrupted (Ctrl-C, SIGTERM) before the grid finished.
After 74 and 130, --resume continues the experiment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

import ray

from tickets import analysis, artifacts, pruning, storage
from tickets import config as config_lib
from tickets.beside import DenseBeside, overlaps
from tickets.config import SpecError
from tickets.dense import dense_refs, layout, load_data
from tickets.errors import last_line
from tickets.grid import trial_points
from tickets.lock import DriverLock
from tickets.plan import BAD_INPUT, DEFAULT_PRESET, Plan, check_inputs, print_plan
from tickets.session import resolve_resources, start_ray
from tickets.tuning import GridEnd, run_tuner

EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C'd command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tickets.sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help=f"YAML spec or preset name ({', '.join(config_lib.presets())}); "
                                           f"default {DEFAULT_PRESET}")
    p.add_argument("--storage-path", help="where experiments go (default ~/ray_results, as Tune does)")
    p.add_argument("--name", help="experiment name (default: the spec's name)")
    p.add_argument("--address", help="join a running Ray cluster ('auto' or host:port) instead of starting one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field with a YAML value, e.g. --set search.sparsity=[0.5,0.9]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--dry-run", action="store_true", help="validate and print the grid; start nothing")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the embedded local Ray (default: detected)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="start the embedded local Ray without its dashboard (less CPU on a small machine)")
    p.add_argument("--verbose", action="store_true",
                   help="show Tune's tables and every worker's output here (else they stay in the log files)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m tickets.sweep`: check the input, then run the sweep (or only print it, `--dry-run`).
    Returns the exit code: 0 all trials finished, 1 some errored, 2 bad input, 130 interrupted."""
    args = parse_args(argv)
    try:
        plan = check_inputs(args)
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return dry_run(plan) if args.dry_run else run(plan)


def dry_run(plan: Plan) -> int:
    """Print what `run` would do, and check the grid's masks against a finished dense run if there is one."""
    print_plan(plan.spec, plan.exp, plan.res, plan.cluster)
    dense_dir = plan.exp / artifacts.DENSE_DIR
    if plan.on_disk is None:
        print(f"masks: checked once the dense run has trained (none of this spec in {dense_dir})")
    else:
        final = plan.on_disk[plan.spec.dense.total_steps(plan.steps_per_epoch)]
        pruning.check_collapse(plan.spec, layout(plan.exp), final)
    return 0


def run(plan: Plan) -> int:
    """Start (or join) Ray, train the dense network once, run the grid, write the results."""
    spec, exp = plan.spec, plan.exp
    # SLURM (scancel, time limits) and other schedulers stop jobs with SIGTERM: treat it as Ctrl-C,
    # so Tune stops the trials and saves the experiment state for --resume.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    # Taken before Ray starts: a second driver is refused with nothing started.
    created = not exp.exists()
    exp.mkdir(parents=True, exist_ok=True)
    try:
        held = DriverLock(exp).acquire()
    except BAD_INPUT as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if held.taken_over:
        print(f"note: the experiment's previous driver is gone ({held.taken_over.describe()}); this one takes over")
    started, cluster, logs = False, "", ""
    beside = None
    try:
        started, cluster, logs = start_ray(plan.args)
        res = plan.res
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if res is None:
            try:
                res = resolve_resources(spec, nodes)
            except SpecError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            cluster = f"{cluster}, {len(nodes)} node(s)"
        print_plan(spec, exp, res, cluster)
        if res.note:
            print(f"note: {res.note}")
        if not (exp / artifacts.SPEC_FILE).exists():
            (exp / artifacts.SPEC_FILE).write_text(spec.to_yaml())
        data_ref = load_data.remote(spec.to_dict())
        if plan.on_disk is None and overlaps(res, nodes):
            beside = DenseBeside(spec, exp, res, plan.steps_per_epoch, data_ref)
            dense = beside.refs
        else:
            dense = dense_refs(spec, exp, res, plan.steps_per_epoch, plan.on_disk, data_ref)
        if plan.sources:
            refs = {t: ray.put(ticket) for t, ticket in plan.source_tickets.items()}  # one object per source trial
            dense = dataclasses.replace(dense, transfers={k: refs[t] for k, t in plan.sources.items()})
        if not plan.args.verbose:
            print(f"trials: {len(trial_points(spec))}; worker logs in {logs} (--verbose shows them here)")
        if beside:
            print("trials: the first ones start on the nodes the dense run leaves free, and train once it ends")
        trials = run_tuner(spec, exp, dense, res, plan.args.resume, plan.args.verbose)
        failed = beside.join() if beside else None
        if failed is not None:
            print(f"error: the dense run failed: {last_line(failed)}", file=sys.stderr)
        code = finish(plan, trials, logs)
        return 1 if failed is not None and code == 0 else code
    except Exception as e:  # the dense run's or Ray's writes can meet a failing storage too
        fault = storage.fault_of(e, exp)
        if fault is None:
            raise
        print(storage.paragraph(fault, finished_trials(exp), len(trial_points(spec)), resume_command(exp), False, logs),
              file=sys.stderr)
        return storage.EXIT_STORAGE
    finally:
        if beside is not None:  # also on a second Ctrl-C or an error: its thread calls Ray
            beside.join()
        if started:
            ray.shutdown()
        storage.release_reserve(exp)  # also after an error or a second Ctrl-C
        held.release()
        if created:  # stopped before writing anything (bad resources): leave no empty dir
            with contextlib.suppress(OSError):
                exp.rmdir()


def finish(plan: Plan, trials: GridEnd, logs: str = "") -> int:
    """Results, warnings, report and the exit code, once the grid has stopped (finished or not);
    `logs`, Ray's log dir, is named after a storage fault."""
    exp = plan.exp
    fault, results = trials.fault, None
    try:
        if trials.storage_ok:  # not into a full disk, nor into whatever replaced a removed dir
            results = analysis.write_results(exp)
    except OSError as e:
        fault = fault or storage.fault_of(e, exp)
        if fault is None:
            raise
    # Not Tune's count of terminated trials: Tune marks trials it stopped on Ctrl-C as terminated
    # too, and never creates the pending ones. A trial has finished when it has written its ticket.
    errors = trials.num_errors
    finished = sum(not t.errored and (t.path / artifacts.TICKET_FILE).exists() for t in trials.trials)
    total = len(trial_points(plan.spec))
    if fault is not None:  # one paragraph, not each trial's traceback; the results so far are safe
        print(storage.paragraph(fault, finished, total, resume_command(exp), results is not None, logs),
              file=sys.stderr)
        return storage.EXIT_STORAGE
    unfinished = total - finished - errors
    print(f"\n{finished}/{total} trials finished; results: {results}")
    collapsed = analysis.collapsed_trials(analysis.load(results))
    if len(collapsed):
        print(f"warning: {len(collapsed)} trial(s) trained a mask that cuts the network; their accuracy is that "
              f"of a cut network, not of a ticket (collapsed_layers in the results):")
        for row in collapsed.itertuples(index=False):
            print("  " + ", ".join(f"{k} {getattr(row, k)}" for k in collapsed.columns))
    write_report(exp)
    print(f"curves: tensorboard --logdir {exp}")
    resume = resume_command(exp)
    if unfinished:  # stopped by Ctrl-C, SIGTERM or a scheduler: nothing finished is lost
        print(f"interrupted: {unfinished} trial(s) did not finish; continue with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if errors:
        print(f"{errors} trial(s) errored; their logs are in their trial dirs under {exp}. "
              f"Retry them with: {resume}", file=sys.stderr)
    return 1 if errors else 0


def resume_command(exp: Path) -> str:
    return f"python -m tickets.sweep --resume --name {exp.name} --storage-path {exp.parent}"


def finished_trials(exp: Path) -> int:
    try:
        return sum((d / artifacts.TICKET_FILE).exists() for d in artifacts.trial_dirs(exp))
    except OSError:
        return 0


def write_report(exp: Path) -> None:
    from tickets import report

    try:
        written = report.write(exp)
        print(f"report: {written[-1]} (summary.csv and plots beside it)")
    except Exception as e:  # the results are safe on disk; a report problem must not fail the sweep
        print(f"note: no report written ({type(e).__name__}: {e}); "
              f"run `python -m tickets.report {exp}` to retry")


if __name__ == "__main__":
    sys.exit(main())
