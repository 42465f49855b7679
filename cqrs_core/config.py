"""Settings: every knob is a pydantic-settings field read from a `CQRS_`-prefixed variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(SystemExit):
    """Raised at start-up when a `CQRS_` variable is invalid; carries one line naming it."""


class Settings(BaseSettings):
    """Everything the core and the app can be configured with."""

    model_config = SettingsConfigDict(env_prefix="CQRS_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="postgresql+psycopg2:// URL of the server; unset = embedded PostgreSQL under data_dir",
    )
    read_database_url: str | None = Field(
        default=None, description="optional replica for the query side (postgresql+psycopg2://)"
    )
    data_dir: Path = Field(default=Path(".data"), description="where the embedded server keeps its data")
    database_name: str = Field(default="research_console", description="database created on the embedded server")

    command_timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds; SET LOCAL statement_timeout")
    query_timeout: float = Field(default=10.0, gt=0, le=3600, description="seconds; SET LOCAL statement_timeout")
    command_retries: int = Field(default=5, ge=0, le=50, description="re-decide attempts on a version conflict")
    rate_limit_per_second: float = Field(default=200.0, gt=0, description="commands per second per actor")
    rate_limit_burst: int = Field(default=400, ge=1, description="token-bucket burst per actor")
    max_task_attempts: int = Field(default=3, ge=1, le=100, description="attempts before a task stays failed")

    checkpoint_interval: int = Field(default=50, ge=1, le=100_000, description="events per projection batch")
    projection_max_batch: int = Field(
        default=5000, ge=1, le=100_000,
        description="largest projection batch: batches double from checkpoint_interval while full",
    )
    projection_poll_seconds: float = Field(default=1.0, gt=0, le=60, description="fallback poll when no NOTIFY")
    projection_retry_attempts: int = Field(default=3, ge=0, le=20, description="retries before parking")
    projection_retry_backoff: float = Field(default=0.05, ge=0, le=10, description="first retry delay, seconds")
    view_refresh_seconds: float = Field(default=30.0, gt=0, description="materialized view refresh interval")
    lag_sample_seconds: float = Field(default=1.0, gt=0, description="lag sampling interval")
    lag_retention_minutes: float = Field(default=60.0, gt=0, description="lag samples older than this are pruned")
    run_projections: bool = Field(default=True, description="run projections inside the app process")

    cache_enabled: bool = Field(default=True, description="TTL cache in the query bus")
    cache_size: int = Field(default=2048, ge=1, description="entries kept by the query cache")
    cache_ttl_seconds: float = Field(default=5.0, gt=0, description="default TTL of a cached query")
    stale_lag_threshold_seconds: float = Field(default=10.0, gt=0, description="lag above this shows a banner")

    auth_mode: Literal["none", "password"] = Field(default="none", description="none = one local admin")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _explicit_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith("postgresql+psycopg2://"):
            raise ValueError("must start with postgresql+psycopg2://")
        return value

    @field_validator("database_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or not value[0].isalpha() or len(value) > 63:
            raise ValueError("must be letters, digits and underscores, starting with a letter")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; an invalid variable exits with one line naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise SettingsError(f"Invalid setting CQRS_{field.upper()}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
