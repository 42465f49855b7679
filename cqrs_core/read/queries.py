"""Queries (frozen pydantic models) and the QueryFactory that builds them.

Each query names the projections whose read models it reads (`projections`), so a
read-your-writes request knows what to wait for, and a TTL for the cache."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from cqrs_core.domain.vocabulary import ALERT_DELIVERY_STATUSES, METHODOLOGIES, PRIORITIES, WORKFLOW_STATUSES
from cqrs_core.infra.config import is_time_zone
from cqrs_core.infra.errors import validation_error_from

MAX_PAGE_SIZE = 200
# A search's cost grows with its words (each one ranked against every match): 300 OR-ed words
# took 5 s on 5,000 workflows, 16 take about 0.2 s. Words are counted after parsing, so stop words
# ("the", "of") do not count; the length bound keeps the parsing itself cheap.
MAX_SEARCH_LENGTH = 500
MAX_SEARCH_TERMS = 16
# A workflow's timeline and event stream are read a page at a time, newest first: a workflow
# with 100,000 events must not send them all to the browser.
ACTIVITY_PAGE_SIZE = 50
MAX_ACTIVITY_PAGE_SIZE = 500
SORT_COLUMNS = (
    "created_at",
    "title",
    "status",
    "priority",
    "methodology",
    "owner",
    "progress_pct",
    "last_activity_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "task_total",
    "due_date",
)

WORKFLOW_PROJECTIONS = ("workflow_summary",)
DETAIL_PROJECTIONS = ("workflow_summary", "task_summary", "workflow_activity")
STATISTICS_PROJECTIONS = ("workflow_summary", "task_summary")
ALERT_PROJECTIONS = ("alert_summary",)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _members(allowed: tuple[str, ...], label: str):
    def check(values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"unknown {label} {bad[0][:40]!r}; choose from {', '.join(allowed)}")
        return sorted(set(values))  # canonical: same filter → same cache key

    return check


Text = Annotated[str, Field(max_length=200), AfterValidator(_no_nul)]


class Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    projections: ClassVar[tuple[str, ...]] = ()
    ttl_seconds: ClassVar[float | None] = None  # None = the bus default
    cacheable: ClassVar[bool] = True

    @property
    def query_type(self) -> str:
        return type(self).__name__

    def cache_key(self) -> str:
        return f"{self.query_type}:{self.model_dump_json()}"


class WorkflowFilters(Query):
    status: Annotated[list[str] | None, AfterValidator(_members(WORKFLOW_STATUSES, "status"))] = None
    methodology: Annotated[list[str] | None, AfterValidator(_members(METHODOLOGIES, "methodology"))] = None
    priority: Annotated[list[str] | None, AfterValidator(_members(PRIORITIES, "priority"))] = None
    owner: Text | None = None
    tags: Annotated[
        list[Annotated[str, Field(max_length=40), AfterValidator(_no_nul)]] | None, Field(max_length=10)
    ] = None
    created_from: date | None = None
    created_to: date | None = None
    page: int = Field(default=1, ge=1, le=1_000_000)
    page_size: int = Field(default=20, ge=1, le=MAX_PAGE_SIZE)

    @pydantic.model_validator(mode="after")
    def _range(self):
        if self.created_from and self.created_to and self.created_from > self.created_to:
            raise ValueError("created from must be on or before created to")
        return self


class GetWorkflowList(WorkflowFilters):
    projections: ClassVar[tuple[str, ...]] = WORKFLOW_PROJECTIONS
    sort: Literal[SORT_COLUMNS] = "created_at"  # type: ignore[valid-type]
    descending: bool = True


class SearchWorkflows(WorkflowFilters):
    projections: ClassVar[tuple[str, ...]] = WORKFLOW_PROJECTIONS
    text: Annotated[str, Field(max_length=MAX_SEARCH_LENGTH), AfterValidator(_no_nul)]

    @pydantic.field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("type something to search for")
        return value


class GetWorkflow(Query):
    """A workflow, its tasks and one page of its timeline: the newest `activity_limit` entries
    below position `activity_before` (None = the newest), in position order; the answer
    carries the timeline's total and the cursor of the next older page."""

    projections: ClassVar[tuple[str, ...]] = DETAIL_PROJECTIONS
    workflow_id: uuid.UUID
    activity_before: int | None = Field(default=None, ge=1)
    activity_limit: int = Field(default=ACTIVITY_PAGE_SIZE, ge=1, le=MAX_ACTIVITY_PAGE_SIZE)


class GetStatistics(Query):
    projections: ClassVar[tuple[str, ...]] = STATISTICS_PROJECTIONS
    ttl_seconds: ClassVar[float | None] = 10.0
    date_from: date | None = None
    date_to: date | None = None

    @pydantic.model_validator(mode="after")
    def _range(self):
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date from must be on or before date to")
        return self


class GetOverview(Query):
    """`time_zone`: the IANA zone whose midnight starts "today" for `events_today`."""

    projections: ClassVar[tuple[str, ...]] = DETAIL_PROJECTIONS
    recent: int = Field(default=10, ge=0, le=100)
    time_zone: str = Field(default="UTC", min_length=1, max_length=64)

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise ValueError("must be an IANA time zone name, for example Europe/Paris or UTC")
        return value


class GetProjectionStatus(Query):
    ttl_seconds: ClassVar[float | None] = 0.5


class GetLagHistory(Query):
    ttl_seconds: ClassVar[float | None] = 0.5
    projection: Text | None = None
    since: datetime | None = None
    minutes: float = Field(default=15.0, gt=0, le=24 * 60)


class GetParkedEvents(Query):
    ttl_seconds: ClassVar[float | None] = 1.0
    projection: Text | None = None
    status: Literal["parked", "retried", "discarded"] = "parked"


class GetEventLog(Query):
    """Keyset-paginated global log: newest first below `before`, or oldest first above `after`.
    With `stream_id` (one workflow's events) the page also carries the number of matching
    events in that stream."""

    ttl_seconds: ClassVar[float | None] = 1.0
    after: int | None = Field(default=None, ge=0)
    before: int | None = Field(default=None, ge=1)
    limit: int = Field(default=50, ge=1, le=500)
    stream_id: Text | None = None
    event_types: list[Annotated[str, Field(max_length=100)]] | None = Field(default=None, max_length=50)
    correlation_id: uuid.UUID | None = None
    recorded_from: datetime | None = None
    recorded_to: datetime | None = None

    @pydantic.model_validator(mode="after")
    def _one_direction(self):
        if self.after is not None and self.before is not None:
            raise ValueError("give either after or before, not both")
        return self


class GetCorrelationTrace(Query):
    ttl_seconds: ClassVar[float | None] = 1.0
    correlation_id: uuid.UUID


class GetAuditTrail(Query):
    """A page of the audit timeline (`operator_actions`), newest first: entries below `before`
    (an entry's id), by `actor` (exact), `actions`, `outcome` and time range."""

    ttl_seconds: ClassVar[float | None] = 1.0
    actor: Text | None = None
    actions: list[Annotated[str, Field(max_length=100)]] | None = Field(default=None, max_length=50)
    outcome: Literal["accepted", "refused"] | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None
    before: int | None = Field(default=None, ge=1)
    limit: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE)

    @pydantic.model_validator(mode="after")
    def _range(self):
        if self.at_from and self.at_to and self.at_from > self.at_to:
            raise ValueError("from must be on or before to")
        return self


class GetAlertDeliveries(Query):
    """The newest alert notifications and how each went (`alert_deliveries`: delivered, being
    retried, failed, dropped), the latest change first; `status` keeps only those statuses (failed
    and dropped: the failures). With them, how many ended in each status in the last `hours`."""

    ttl_seconds: ClassVar[float | None] = 2.0
    status: Annotated[
        list[str] | None, AfterValidator(_members(ALERT_DELIVERY_STATUSES, "delivery status"))
    ] = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE)
    hours: int = Field(default=24, ge=1, le=24 * 366)


class GetAlerts(Query):
    """The open alerts (critical first, then newest raised first) and the `recent` latest
    resolved ones."""

    projections: ClassVar[tuple[str, ...]] = ALERT_PROJECTIONS
    ttl_seconds: ClassVar[float | None] = 1.0
    open_limit: int = Field(default=MAX_PAGE_SIZE, ge=0, le=MAX_PAGE_SIZE)
    recent: int = Field(default=20, ge=0, le=MAX_PAGE_SIZE)


class GetAlertHistory(Query):
    """Every step of one alert, oldest first, from its stream in the event log (never cached: a
    step just taken shows at once; an alert has a handful of events)."""

    cacheable: ClassVar[bool] = False
    alert_id: uuid.UUID


class GetMetrics(Query):
    cacheable: ClassVar[bool] = False


# What a person is told when what they typed as a correlation id is not one.
BAD_CORRELATION_ID = (
    "A correlation id is 32 letters a–f and digits in groups of 8, 4, 4, 4 and 12 joined by hyphens, "
    "like 3f2b1c9e-5d4a-4e8f-9b7c-1a2b3c4d5e6f; copy it from an event or a command result."
)


def _correlation_id(value: Any) -> Any:
    """`value` as a correlation id (None and UUIDs pass through); anything else that is not a
    UUID's text is a ValidationError in one sentence, not pydantic's parser message."""
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        from cqrs_core.infra.errors import ValidationError

        raise ValidationError(BAD_CORRELATION_ID) from None


def build_query(cls: type[Query], **fields: Any) -> Any:
    from cqrs_core.infra.errors import ValidationError

    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise validation_error_from(exc) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(str(exc)) from None


class QueryFactory:
    """Builds validated queries; a bad parameter raises cqrs_core.infra.errors.ValidationError."""

    def get_workflow(self, workflow_id: uuid.UUID | str, **kw: Any) -> GetWorkflow:
        return build_query(GetWorkflow, workflow_id=workflow_id, **kw)

    def get_workflow_list(self, **filters: Any) -> GetWorkflowList:
        return build_query(GetWorkflowList, **filters)

    def search_workflows(self, text: str, **filters: Any) -> SearchWorkflows:
        return build_query(SearchWorkflows, text=text, **filters)

    def get_statistics(self, **kw: Any) -> GetStatistics:
        return build_query(GetStatistics, **kw)

    def get_overview(self, **kw: Any) -> GetOverview:
        return build_query(GetOverview, **kw)

    def get_projection_status(self) -> GetProjectionStatus:
        return GetProjectionStatus()

    def get_lag_history(self, **kw: Any) -> GetLagHistory:
        return build_query(GetLagHistory, **kw)

    def get_parked_events(self, **kw: Any) -> GetParkedEvents:
        return build_query(GetParkedEvents, **kw)

    def get_event_log(self, **kw: Any) -> GetEventLog:
        if "correlation_id" in kw:
            kw["correlation_id"] = _correlation_id(kw["correlation_id"])
        return build_query(GetEventLog, **kw)

    def get_correlation_trace(self, correlation_id: uuid.UUID | str) -> GetCorrelationTrace:
        return build_query(GetCorrelationTrace, correlation_id=_correlation_id(correlation_id))

    def get_audit_trail(self, **kw: Any) -> GetAuditTrail:
        return build_query(GetAuditTrail, **kw)

    def get_alert_deliveries(self, **kw: Any) -> GetAlertDeliveries:
        return build_query(GetAlertDeliveries, **kw)

    def get_alerts(self, **kw: Any) -> GetAlerts:
        return build_query(GetAlerts, **kw)

    def get_alert_history(self, alert_id: uuid.UUID | str) -> GetAlertHistory:
        return build_query(GetAlertHistory, alert_id=alert_id)

    def get_metrics(self) -> GetMetrics:
        return GetMetrics()
