"""Demo data and load: realistic research workflows, run through the command bus.

One module per concept: `vocabulary` (the words and weights generated workflows are made of),
`plans` (`WorkloadGenerator`: a seed → workflow plans, each the ordered commands of one
lifecycle) and `runners` (`seed`, `run_plans`, `run_steady_load` and their reports). Resetting
the store is not a workload concern: it lives in `cqrs_core.ops.reset`.
"""
