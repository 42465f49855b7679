"""Query handlers: plain SQL over the read models (never aggregates), routed by query class.
Each takes a `SqlReader` (cqrs_core.read.sql) and the query, and returns a record of
cqrs_core.read.results for the pages."""

from __future__ import annotations

from cqrs_core.read import queries as q
from cqrs_core.read.handlers import alert_deliveries, alerts, audit, event_log, statistics, workflows
from cqrs_core.read.sql import Handler

ROUTES: dict[type[q.Query], Handler] = {
    q.GetWorkflowList: workflows.workflow_list,
    q.SearchWorkflows: workflows.search_workflows,
    q.GetWorkflow: workflows.workflow_detail,
    q.GetStatistics: statistics.statistics,
    q.GetOverview: statistics.overview,
    q.GetEventLog: event_log.event_log,
    q.GetCorrelationTrace: event_log.correlation_trace,
    q.GetAuditTrail: audit.audit_trail,
    q.GetAlertDeliveries: alert_deliveries.alert_deliveries,
    q.GetAlerts: alerts.alert_list,
    q.GetAlertHistory: alerts.alert_history,
}
