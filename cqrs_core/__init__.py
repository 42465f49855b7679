"""Research Workflow Console core: an event-sourced, CQRS research-workflow system on PostgreSQL."""

from cqrs_core.read.queries import QueryFactory
from cqrs_core.service import CQRSService, CQRSServiceBuilder
from cqrs_core.write.command_bus import CommandResult
from cqrs_core.write.commands import CommandFactory

__all__ = ["CQRSService", "CQRSServiceBuilder", "CommandFactory", "CommandResult", "QueryFactory"]
