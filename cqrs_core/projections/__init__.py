"""The read side's engine: projections, their manager, rebuilds, verify.

manager = ProjectionManager(engine, settings)
manager.catch_up()
manager.status()
"""

from cqrs_core.projections.base import Projection, ProjectionError
from cqrs_core.projections.engine.lag import LagSample
from cqrs_core.projections.engine.manager import ProjectionManager, ProjectionStatus
from cqrs_core.projections.engine.parking import ParkedEvent
from cqrs_core.projections.engine.rebuild import RebuildFailed, RebuildResult
from cqrs_core.projections.engine.views import ViewRefresh
from cqrs_core.projections.registry import PROJECTION_NAMES, PROJECTIONS, get_projection

__all__ = [
    "PROJECTIONS",
    "PROJECTION_NAMES",
    "LagSample",
    "ParkedEvent",
    "Projection",
    "ProjectionError",
    "ProjectionManager",
    "ProjectionStatus",
    "RebuildFailed",
    "RebuildResult",
    "ViewRefresh",
    "get_projection",
]
