"""Tools: the workload generator and the benchmarks."""
