"""What the AppTest tests of the research and analysis pages share: the app pointed at a fresh
database, a service of the test's own to seed data through commands, and running a page."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import streamlit as st
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from streamlit.testing.v1 import AppTest

from cqrs_core import CommandFactory, CQRSServiceBuilder
from cqrs_core.infra.config import get_settings, load_settings

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.fixture
def app_env(monkeypatch):
    """Point the app at `url` with fresh settings and no cached runtime from an earlier test.
    Projections do not run inside the app unless asked: tests drive them with `catch_up`."""

    def use(url: str, *, run_projections: bool = False, **env: str) -> None:
        monkeypatch.setenv("CQRS_DATABASE_URL", url)
        monkeypatch.setenv("CQRS_RUN_PROJECTIONS", "true" if run_projections else "false")
        for name, value in env.items():
            monkeypatch.setenv(f"CQRS_{name.upper()}", value)
        get_settings.cache_clear()
        st.cache_resource.clear()

    yield use
    st.cache_resource.clear()  # releases the runtime (stops its scheduler, disposes engines) before the db is dropped
    get_settings.cache_clear()


@pytest.fixture
def service(db_url):
    """A service of the test's own on the test database, to seed data and run projections."""
    svc = open_service(db_url)
    yield svc
    svc.projections.close()
    svc.close()


def run_page(
    page: str | None = None,
    *,
    query_params: dict[str, str] | None = None,
    secrets: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
) -> AppTest:
    """Run the app, then switch to `page` (e.g. "pages/workflows.py") and run it; no exceptions."""
    at = AppTest.from_file(str(APP), default_timeout=30)
    if secrets:
        at.secrets.update(secrets)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page)
        if query_params:
            at.query_params.update(query_params)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Everything the page says in markdown, captions, alerts, titles and text, as one string."""
    parts = []
    for kind in (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "text",
        "info",
        "warning",
        "error",
        "success",
    ):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


def create_workflow(
    svc,
    *,
    actor: str = "alice",
    title: str = "Sleep and memory",
    question: str = "Does sleep help memory?",
    methodology: str = "systematic_review",
    tasks: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> str:
    """Create a workflow (with `tasks`: dicts of name and optionally task_id, kind, assignee,
    depends_on by name) and return its id."""
    ids: dict[str, str] = {}
    specs = []
    for t in tasks or []:
        ids[t["name"]] = t.get("task_id") or str(uuid.uuid4())
        specs.append(
            {
                "task_id": ids[t["name"]],
                "name": t["name"],
                "kind": t.get("kind", "analysis"),
                "assignee": t.get("assignee", actor),
                "estimate_minutes": t.get("estimate_minutes"),
                "depends_on": [ids[d] for d in t.get("depends_on", [])],
            }
        )
    result = svc.execute_command(
        CommandFactory(actor=actor).create_research_workflow(
            title=title, research_question=question, methodology=methodology, tasks=specs, **fields
        )
    )
    return result.aggregate_id


def catch_up(svc) -> None:
    """Apply every event to the read models, then let go of the projections (their advisory
    locks) so that an app started with projections can run them."""
    svc.projections.catch_up()
    svc.projections.close()
    svc.projections.reopen()


HOSTILE_INPUTS: list[str] = json.loads(
    (Path(__file__).parents[1] / "data" / "hostile_inputs.json").read_text()
)


def fresh_database(pg_admin_url: str, template_db: tuple[str, int]):
    """A fresh, migrated database (a generator for module-scoped fixtures): creating one costs
    seconds, so a module whose tests only read what it seeded shares one."""
    tpl, version = template_db
    name = f"cqrs_m_{uuid.uuid4().hex[:12]}"
    strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"{strategy}'))
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def shared_db_url(pg_admin_url, template_db):
    """One database for the tests of a module that only read what the module seeded."""
    yield from fresh_database(pg_admin_url, template_db)


def open_service(url: str):
    return (
        CQRSServiceBuilder(load_settings(database_url=url))
        .with_database_url(url)
        .with_migrations(False)
        .build()
    )


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def seed(url: str, plant) -> Any:
    """Run `plant(service)` against `url`, bring the read models up to date, and return what
    `plant` returned (ids to look things up by)."""
    svc = open_service(url)
    try:
        planted = plant(svc)
        catch_up(svc)
        return planted
    finally:
        svc.projections.close()
        svc.close()


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign_in_name").set_value(name)
    at.text_input(key="sign_in_password").set_value(password)
    at.button(key="FormSubmitter:sign_in-Sign in").click()
    return rerun(at)
