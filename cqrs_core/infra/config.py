"""Settings: every knob is a pydantic-settings field read from a `CQRS_`-prefixed variable."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows (e.g. "Europe/Paris", "UTC")."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def parse_partitions_by_name(value: str) -> dict[str, int]:
    """`name=K,name=K` as {name: K}; ValueError with one sentence when it is not that."""
    out: dict[str, int] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, count = item.partition("=")
        name, count = name.strip(), count.strip()
        if not sep or not name or not count.isdigit() or not 1 <= int(count) <= 64:
            raise ValueError(
                f"{item[:60]!r} is not name=K with K from 1 to 64 (for example workflow_activity=2)"
            )
        out[name] = int(count)
    return out


class SettingsError(SystemExit):
    """Raised at start-up when a `CQRS_` variable is invalid; carries one line naming it."""


# Where the projections, the lag sampler and the background jobs run (CQRS_PROJECTIONS_IN):
# "worker": `cqrs-console serve` starts and supervises one `cqrs-console worker` next to the
# Streamlit server, which runs none itself; "app": inside the Streamlit process; "none": neither
# (a deployment that runs its own `cqrs-console worker` processes).
ProjectionsIn = Literal["worker", "app", "none"]
# The default when neither CQRS_PROJECTIONS_IN nor the older CQRS_RUN_PROJECTIONS is set. Chosen
# by measurement (issue 14's viewer benchmark); switching it only needs this line and the README row.
DEFAULT_PROJECTIONS_IN: ProjectionsIn = "worker"
# Whether the command and detail paths PREPARE their statements once per connection. A pooler in
# transaction mode (pgbouncer) hands each transaction whichever server connection is free, and no
# pgbouncer version tracks SQL-level PREPARE, so "auto" turns them off when a direct URL is named.
PreparedStatements = Literal["auto", "on", "off"]


class Settings(BaseSettings):
    """Everything the core and the app can be configured with."""

    # No float setting may be inf or nan: an interval of inf overflows the scheduler's and the
    # load generator's arithmetic (OverflowError tracebacks) instead of meaning "never".
    model_config = SettingsConfigDict(env_prefix="CQRS_", extra="ignore", frozen=True, allow_inf_nan=False)

    database_url: str | None = Field(
        default=None,
        description="postgresql+psycopg2:// URL of the server; unset = embedded PostgreSQL under data_dir",
    )
    read_database_url: str | None = Field(
        default=None,
        description="optional streaming replica (hot standby) for the query side (postgresql+psycopg2://)",
    )
    # What the query side does while the replica is unreachable or more than
    # read_replica_max_lag_seconds behind: read from the primary, or refuse with a typed error.
    read_replica_fallback: Literal["primary", "error"] = Field(
        default="primary",
        description="when the read replica is down or too far behind: primary = read from the primary, "
        "error = refuse the query with one sentence",
    )
    read_replica_max_lag_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="a read replica further behind than this many seconds is not read from",
    )
    direct_database_url: str | None = Field(
        default=None,
        description="postgresql+psycopg2:// URL that reaches the server itself when CQRS_DATABASE_URL goes "
        "through a connection pooler in transaction mode (pgbouncer): migrations, LISTEN, the session "
        "advisory locks and the rest of the projections side use it; unset = no pooler",
    )
    prepared_statements: PreparedStatements = Field(
        default="auto",
        description="server-side PREPARE on the command and detail paths: on, off, or auto = on unless "
        "CQRS_DIRECT_DATABASE_URL says CQRS_DATABASE_URL is a pooler (which cannot keep them)",
    )
    data_dir: Path = Field(default=Path(".data"), description="where the embedded server keeps its data")
    database_name: str = Field(
        default="research_console", description="database created on the embedded server"
    )

    command_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="seconds; SET LOCAL statement_timeout"
    )
    query_timeout: float = Field(
        default=10.0, gt=0, le=3600, description="seconds; SET LOCAL statement_timeout"
    )
    command_retries: int = Field(
        default=5, ge=0, le=50, description="re-decide attempts on a version conflict"
    )
    rate_limit_per_second: float = Field(
        default=200.0, gt=0, le=1_000_000_000, description="commands per second per actor"
    )
    rate_limit_burst: int = Field(default=400, ge=1, description="token-bucket burst per actor")
    max_task_attempts: int = Field(default=3, ge=1, le=100, description="attempts before a task stays failed")

    snapshot_every: int = Field(
        default=500,
        ge=0,
        le=10_000_000,
        description="events between a workflow's snapshots (load = snapshot + the events after it); 0 = off",
    )

    checkpoint_interval: int = Field(default=50, ge=1, le=100_000, description="events per projection batch")
    projection_max_batch: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="largest projection batch: batches double from checkpoint_interval while full",
    )
    projection_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="fallback poll when no NOTIFY"
    )
    projection_partitions: int = Field(
        default=1,
        ge=1,
        le=64,
        description="partitions per projection (by a hash of the stream id), each run by one worker",
    )
    projection_partitions_by_name: str = Field(
        default="",
        max_length=2000,
        description="per-projection partitions, e.g. workflow_activity=2,task_summary=1",
    )
    projection_retry_attempts: int = Field(default=3, ge=0, le=20, description="retries before parking")
    projection_retry_backoff: float = Field(
        default=0.05, ge=0, le=10, description="first retry delay, seconds"
    )
    view_refresh_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="materialized view refresh interval"
    )
    lag_sample_seconds: float = Field(default=1.0, gt=0, le=3600, description="lag sampling interval")
    lag_retention_minutes: float = Field(
        default=60.0, gt=0, le=525_600, description="lag samples older than this are pruned"
    )
    # Continuous verification (projections/engine/continuous_verify.py): a scheduler job replays a
    # sample of streams and compares them with the live read models, a round over every stream.
    verify_every_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="continuous verification: seconds between passes over a sample of streams; 0 = off",
    )
    verify_sample_streams: int = Field(
        default=200,
        ge=0,
        le=100_000,
        description="continuous verification: streams per pass at least (the larger of this and the percent)",
    )
    verify_sample_percent: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="continuous verification: percent of the read model's workflows per pass at least",
    )
    verify_max_events: int = Field(
        default=20_000,
        ge=100,
        le=1_000_000,
        description="continuous verification: events replayed per pass at most (the cost bound; wins over the sample size)",
    )
    run_projections: bool | None = Field(
        default=None,
        description="older form of projections_in: true = app, false = none; unset = projections_in decides",
    )
    projections_in: ProjectionsIn = Field(
        default=DEFAULT_PROJECTIONS_IN,
        description="where projections and their jobs run: worker (supervised by `cqrs-console serve`), "
        "app (the Streamlit process) or none (workers run elsewhere)",
    )

    cache_enabled: bool = Field(default=True, description="TTL cache in the query bus")
    cache_size: int = Field(default=2048, ge=1, description="entries kept by the query cache")
    cache_ttl_seconds: float = Field(
        default=5.0, gt=0, le=86_400, description="default TTL of a cached query"
    )
    stale_lag_threshold_seconds: float = Field(
        default=10.0, gt=0, le=86_400, description="lag above this shows a banner"
    )

    auth_mode: Literal["none", "password", "oidc"] = Field(
        default="none",
        description="none = one local admin; password = users in secrets.toml; oidc = st.login ([auth] in secrets.toml)",
    )
    oidc_role_claim: str = Field(
        default="role",
        min_length=1,
        max_length=200,
        description="the OpenID Connect claim that names the user's role (oidc mode; no default role)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    time_zone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="the IANA time zone of 'today' and dates when the browser does not tell its own",
    )

    @field_validator("projection_partitions_by_name")
    @classmethod
    def _partitions_by_name(cls, value: str) -> str:
        parse_partitions_by_name(value)
        return value

    def partitions_for(self, name: str) -> int:
        """How many partitions projection `name` should have (its override, else the default)."""
        return parse_partitions_by_name(self.projection_partitions_by_name).get(
            name, self.projection_partitions
        )

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise ValueError(
                f"{value[:64]!r} is not an IANA time zone name (for example Europe/Paris or UTC)"
            )
        return value

    session_max_age_seconds: float = Field(
        default=43_200.0,
        ge=60,
        le=2_592_000,
        description="how long a password sign-in lasts (the session cookie's Max-Age)",
    )
    sign_in_max_failures: int = Field(
        default=5, ge=1, le=1000, description="failed sign-ins per user name and client before a lockout"
    )
    sign_in_client_max_failures: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="failed sign-ins per client, any user names, before a lockout",
    )
    sign_in_window_seconds: float = Field(
        default=900.0,
        gt=0,
        le=604_800,
        description="failed sign-ins are forgotten after this long without one",
    )
    sign_in_lockout_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="first sign-in lockout; doubles with each further failure"
    )
    sign_in_max_lockout_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="longest sign-in lockout"
    )

    query_rate_limit_per_second: float = Field(
        default=50.0,
        gt=0,
        le=1_000_000,
        description="queries per second per signed-in user that reach the database (cache hits are free)",
    )
    query_rate_limit_burst: int = Field(
        default=200, ge=1, le=10_000_000, description="query token-bucket burst per user"
    )

    database_role: str = Field(
        default="cqrs_app",
        pattern=r"^([a-z_][a-z0-9_]{0,62})?$",
        description="role the app, worker and CLI act as (SET ROLE; embedded: via the login role cqrs_console); "
        "migrations keep the URL's user; empty = the URL's own rights",
    )
    trusted_proxies: str | None = Field(
        default=None,
        description="comma-separated IP addresses or networks of reverse proxies whose X-Forwarded-For "
        "`cqrs-console serve` believes (the sign-in throttle's client); unset = none, the peer counts",
    )

    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port on which this process (`serve`, or a `worker` run on its own) exposes Prometheus "
        "metrics at /metrics; unset = no metrics endpoint",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port of the metrics endpoint of the projection worker `serve` starts "
        "(CQRS_PROJECTIONS_IN=worker); unset = that worker exposes none",
    )
    metrics_address: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address the metrics endpoints listen on (127.0.0.1: this machine only)",
    )

    # Alert notifications (cqrs_core/ops/webhooks). A webhook URL carries its token in its path or
    # query, so it is shown only through `redact()`, and a bad one is refused without echoing it.
    alert_webhook_url: str | None = Field(
        default=None,
        description="webhook (Slack, Teams or any JSON receiver) that gets every alert state change "
        "whose severity has no URL of its own; unset with the two below = notifications off",
    )
    alert_webhook_url_warning: str | None = Field(
        default=None, description="webhook for warning alerts (instead of CQRS_ALERT_WEBHOOK_URL)"
    )
    alert_webhook_url_critical: str | None = Field(
        default=None, description="webhook for critical alerts (instead of CQRS_ALERT_WEBHOOK_URL)"
    )
    alert_webhook_attempts: int = Field(
        default=6, ge=1, le=100, description="tries per notification before it is given up as failed"
    )
    alert_webhook_backoff_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="wait before the first retry; doubles with each further one"
    )
    alert_webhook_backoff_max_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="longest wait between two tries of one notification"
    )
    alert_webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="seconds one webhook POST may take (connect and answer)"
    )
    alert_webhook_queue_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="notifications waiting to be sent; when full the oldest is dropped (and counted)",
    )
    alert_auto_restart: bool = Field(
        default=False,
        description="restart the runner of a projection the stall alert finds holding its lock "
        "without progress (in the process that evaluates the alerts)",
    )

    @field_validator("alert_webhook_url", "alert_webhook_url_warning", "alert_webhook_url_critical")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        # The message never quotes the value: it carries the webhook's token.
        if value is None or not value.strip():
            return None
        value = value.strip()
        problem = "must be an https:// (or http://) URL with a host, as the webhook's provider gave it"
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"{problem}, without spaces or control characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number up to 65535
        except ValueError:
            raise ValueError(problem) from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(problem)
        return value

    # Alerts (cqrs_core/ops/alerts): each rule's threshold and its hold, how long the condition must
    # last before the alert is raised. An alert resolves by itself at the first evaluation that
    # no longer finds its condition.
    alert_evaluate_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="how often the leader evaluates the alert rules"
    )
    alert_faulted_hold_seconds: float = Field(
        default=0.0, ge=0, le=86_400, description="a projection faulted this long raises an alert"
    )
    alert_stalled_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="a projection with events waiting whose checkpoint has not moved for this long is stalled",
    )
    alert_stalled_hold_seconds: float = Field(
        default=0.0, ge=0, le=86_400, description="hold of the projection-stalled alert"
    )
    alert_lag_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="a running projection's lag above this ..."
    )
    alert_lag_hold_seconds: float = Field(
        default=60.0, ge=0, le=86_400, description="... for this long raises an alert"
    )
    alert_parked_events: int = Field(
        default=0, ge=0, le=1_000_000_000, description="more parked events than this (per projection) ..."
    )
    alert_parked_hold_seconds: float = Field(
        default=0.0, ge=0, le=86_400, description="... for this long raises an alert"
    )
    alert_view_age_seconds: float = Field(
        default=600.0, gt=0, le=604_800, description="a statistics view older than this ..."
    )
    alert_view_age_hold_seconds: float = Field(
        default=0.0, ge=0, le=86_400, description="... for this long raises an alert"
    )
    alert_database_unreachable_hold_seconds: float = Field(
        default=10.0, ge=0, le=86_400, description="the database unreachable this long raises an alert"
    )
    alert_database_slow_ms: float = Field(
        default=500.0, gt=0, le=600_000, description="a probe query slower than this (ms) ..."
    )
    alert_database_slow_hold_seconds: float = Field(
        default=30.0, ge=0, le=86_400, description="... for this long raises an alert"
    )
    alert_missed_runs: int = Field(
        default=0, ge=0, le=1_000_000, description="more missed runs of a scheduler job than this ..."
    )
    alert_missed_runs_window_seconds: float = Field(
        default=600.0, gt=0, le=86_400, description="... within this window raise an alert"
    )
    alert_missed_runs_hold_seconds: float = Field(
        default=0.0, ge=0, le=86_400, description="hold of the missed-runs alert"
    )

    @model_validator(mode="before")
    @classmethod
    def _projections_in_from_run_projections(cls, data: Any) -> Any:
        """The older CQRS_RUN_PROJECTIONS keeps working (true = app, false = none) when
        CQRS_PROJECTIONS_IN is not given; both given must agree (false also fits worker)."""
        if not isinstance(data, dict) or data.get("run_projections") is None:
            return data
        try:
            legacy = TypeAdapter(bool).validate_python(data["run_projections"])
        except ValidationError:
            return data  # the field's own validation names it
        given = data.get("projections_in")
        if given is None:
            return {**data, "projections_in": "app" if legacy else "none"}
        where = _projections_in_word(given)
        if where in ("worker", "app", "none") and (where == "app") != legacy:
            raise ValueError(
                f"CQRS_PROJECTIONS_IN={where} contradicts CQRS_RUN_PROJECTIONS={str(legacy).lower()}; "
                "set CQRS_PROJECTIONS_IN only"
            )
        return data

    @model_validator(mode="after")
    def _direct_url_needs_a_pooled_one(self) -> Settings:
        if self.direct_database_url and not self.database_url:
            raise ValueError(
                "CQRS_DIRECT_DATABASE_URL is set without CQRS_DATABASE_URL; set CQRS_DATABASE_URL to the "
                "pooler's URL, or unset CQRS_DIRECT_DATABASE_URL"
            )
        return self

    @property
    def behind_pooler(self) -> bool:
        """Whether CQRS_DATABASE_URL (and CQRS_READ_DATABASE_URL) reach the server through a pooler
        in transaction mode: a direct URL is named, and it is another one."""
        return bool(self.direct_database_url) and self.direct_database_url != self.database_url

    def prepares_statements(self, pooled: bool) -> bool:
        """Whether connections that go through a pooler (`pooled`), or not, use server-side PREPARE
        on the command and detail paths (CQRS_PREPARED_STATEMENTS; auto: unless pooled)."""
        if self.prepared_statements == "auto":
            return not pooled
        return self.prepared_statements == "on"

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address_is_loopback(cls, v: str) -> str:
        """Nothing is reachable without sign-in beyond loopback, and /metrics has none."""
        host = v.strip().strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"{v!r} is not a loopback address: the metrics endpoint has no sign-in, so it listens on "
                "this machine only (127.0.0.1 or ::1); let Prometheus on another host reach it through a "
                "proxy that authenticates it (docs/DEPLOY.md)"
            )
        return host

    @field_validator("prepared_statements", mode="before")
    @classmethod
    def _prepared_statements_word(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("projections_in", mode="before")
    @classmethod
    def _projections_in_words(cls, value: object) -> object:
        return _projections_in_word(value)

    @field_validator("database_url", "read_database_url", "direct_database_url")
    @classmethod
    def _explicit_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith("postgresql+psycopg2://"):
            raise ValueError("must start with postgresql+psycopg2://")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: object) -> object:
        # Path("") is the working directory: an empty variable must not silently mean "here".
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty; unset it to use ./.data")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_directory(cls, value: Path) -> Path:
        path = value.expanduser()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a directory")
        return value

    @field_validator("database_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value[0].isalpha() or len(value) > 63:
            raise ValueError("must be letters, digits and underscores, starting with a letter")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str | None) -> str | None:
        # Addresses only: "*" or a host name would let anyone who reaches the port name their client.
        networks = []
        for item in filter(None, (part.strip() for part in (value or "").split(","))):
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 10.0.0.5,10.1.0.0/16)"
                ) from None
        return ",".join(networks) or None


def _projections_in_word(value: object) -> object:
    """CQRS_PROJECTIONS_IN in any case; `false` is `none`."""
    if isinstance(value, str):
        word = value.strip().lower()
        return "none" if word == "false" else word
    return value


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; an invalid variable exits with one line naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names them
            raise SettingsError(f"Invalid settings: {message}") from None
        field = str(first["loc"][0])
        raise SettingsError(f"Invalid setting CQRS_{field.upper()}: {message}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
