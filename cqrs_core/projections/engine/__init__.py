"""The projection engine: batches, parking, locks, lag, views, rebuild, verify, manager, runtime."""
