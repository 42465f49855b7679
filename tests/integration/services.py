"""Building the service the integration tests use (migrated template database, rate limit out of the way)."""

from cqrs_core import CQRSServiceBuilder
from cqrs_core.infra.config import load_settings


def build_service(db_url: str, **settings):
    return (
        CQRSServiceBuilder(load_settings(**settings))
        .with_database_url(db_url)
        .with_migrations(False)
        .with_rate_limit(1e6, 10**6)
        .build()
    )
