"""Opt-in auto-restart of a stalled projection runner (CQRS_ALERT_AUTO_RESTART, off by default):
the stall alert's remedy. A stalled runner holds its projection's lock, and its heartbeat may say
it runs, but the projection does not move; restarting it abandons the stuck drain, rolls back its
open batch and drains the projection afresh (`ProjectionRunner.restart`). Only runners of the
process that evaluates the alerts can be restarted: another process's threads are out of reach."""

from __future__ import annotations

import logging

from cqrs_core.infra.config import Settings
from cqrs_core.projections.engine.runtime import ProjectionRuntime

log = logging.getLogger(__name__)


def auto_restart_stalled(
    settings: Settings, runtime: ProjectionRuntime | None, projection: str
) -> str | None:
    """Restart the runner of the stalled `projection` when CQRS_ALERT_AUTO_RESTART is on, and
    return what was done for the alert's history ("auto-restarted the runner of workflow_summary:
    abandoned its drain, stuck for 63 s, …"); None when auto-restart is off (nothing was done).
    `runtime` is this process's ProjectionRuntime (None when it runs no projections). Never raises."""
    if not settings.alert_auto_restart:
        return None
    if runtime is None or not runtime.running:
        return f"did not auto-restart the runner of {projection}: no projection runner runs in this process"
    try:
        return runtime.restart_runner(projection).describe("auto-")
    except Exception as exc:
        log.exception("auto-restart of the runner of %s failed", projection)
        return f"did not auto-restart the runner of {projection}: {type(exc).__name__}"
