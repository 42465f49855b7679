"""Demo data and load: realistic research workflows, run through the command bus.

One module per concept: `vocabulary` (the words and weights generated workflows are made of),
`plans` (`WorkloadGenerator`: a seed → workflow plans, each the ordered commands of one
lifecycle) and `runners` (`seed`, `run_plans`, `run_steady_load` and their reports). Resetting
the store is not a workload concern: it lives in `cqrs_core.ops.reset`.

The plan and runner names are re-exported here as the package's public surface.
"""

from __future__ import annotations

from cqrs_core.tools.workload.plans import WorkflowPlan, WorkloadGenerator
from cqrs_core.tools.workload.runners import (
    SEED_BATCH_WORKFLOWS,
    LoadReport,
    SeedReport,
    execute_plan,
    run_plans,
    run_steady_load,
    seed,
)
from cqrs_core.tools.workload.vocabulary import OUTCOMES

__all__ = [
    "OUTCOMES",
    "SEED_BATCH_WORKFLOWS",
    "LoadReport",
    "SeedReport",
    "WorkflowPlan",
    "WorkloadGenerator",
    "execute_plan",
    "run_plans",
    "run_steady_load",
    "seed",
]
