"""The speed figures of tickets, each a ratio measured side by side in one run: `python -m benchmarks`
from the repository root (see `benchmarks.figures` for the figures, docs/performance.md for results).

A development tool, not part of the installed package: it runs sweeps as `python -m tickets.sweep`
subprocesses, exactly as users run them, and the programs under `benchmarks/programs/` (a hand-written
Keras loop, training processes for the machine's ceiling, a dense run, a streaming pipeline) as
processes of their own.
"""
