"""Research Workflow Console core: an event-sourced, CQRS research-workflow system on PostgreSQL."""

from cqrs_core.command_bus import CommandResult
from cqrs_core.commands import CommandFactory
from cqrs_core.queries import QueryFactory
from cqrs_core.service import CQRSService, CQRSServiceBuilder

__all__ = ["CQRSService", "CQRSServiceBuilder", "CommandFactory", "CommandResult", "QueryFactory"]
