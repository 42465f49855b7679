"""`cqrs-console bench`: measured speed of every path, next to the physical limit of the machine.

Everything runs on a fresh, isolated database: a temporary embedded server (deleted afterwards),
or a scratch database on the server of `url`. The first figure is the baseline — a bare psycopg2
loop committing one row per transaction into a copy of `events` on the same server, in the same
run — so the command figures read as "how close to what this disk and CPU allow".

    report = run_bench(quick=True, full=False, events=None, url=None)
    print(format_report(report))

`harness` holds the sizes, the scratch database and the context every phase takes; `write_path`,
`projections` and `read_path` the phases; `run` their order; `report` the figures and the table.
"""

from cqrs_core.tools.bench.harness import BENCH_SEED, DEFAULT, FULL, QUICK, Sizes, scratch_database
from cqrs_core.tools.bench.report import (
    TARGETS,
    BenchReport,
    CatchUp,
    CommandThroughput,
    LagUnderLoad,
    Machine,
    MixedQueries,
    QueryLatency,
    RawInserts,
    format_report,
)
from cqrs_core.tools.bench.run import run_bench

__all__ = [
    "BENCH_SEED",
    "DEFAULT",
    "FULL",
    "QUICK",
    "TARGETS",
    "BenchReport",
    "CatchUp",
    "CommandThroughput",
    "LagUnderLoad",
    "Machine",
    "MixedQueries",
    "QueryLatency",
    "RawInserts",
    "Sizes",
    "format_report",
    "run_bench",
    "scratch_database",
]
