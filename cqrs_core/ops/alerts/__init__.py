"""Alerts: the rules (pure functions over a snapshot of facts), the gatherer of those facts, and
the evaluator the worker runs (one leader across processes) to raise and resolve alerts."""
