"""The Audit page: the timeline of operator and admin actions, its filters, paging, and a CSV
export whose cells are safe in a spreadsheet whatever the actor or the parameters said."""

import csv
import io

import operator_pages
import pytest
from operator_pages import app_and_service, table
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from cqrs_core.app.auth import User
from cqrs_core.eventlog.audit import record_action
from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/audit.py"
HOSTILE_ACTOR = '=HYPERLINK("http://evil","x")'
HOSTILE_PROJECTION = "+cmd|' /C calc'!A0"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


@pytest.fixture
def export_builders(monkeypatch):
    """The data callables of the page's deferred download buttons, by file name."""
    builders = {}
    add_deferred = MediaFileManager.add_deferred

    def spy(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        builders[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return builders


def open_page(user: User | None = None) -> AppTest:
    return operator_pages.open_page(PAGE, user, timeout=30)


def timeline(at: AppTest):
    return table(at, "Outcome")


def act(service) -> None:
    olga = CommandFactory(actor="olga", role="operator")
    service.execute_command(olga.pause_projection(projection="task_summary"))
    service.execute_command(olga.resume_projection(projection="task_summary"))
    with pytest.raises(AuthorizationError):
        service.execute_command(CommandFactory(actor="rita", role="researcher").refresh_statistics())


def test_the_timeline_lists_actions_newest_first_with_parameters_and_outcome(service):
    act(service)

    at = open_page()

    rows = timeline(at)
    assert list(rows["Who"]) == ["rita", "olga", "olga"]
    assert list(rows["Action"]) == ["views.refresh", "projection.resume", "projection.pause"]
    assert list(rows["Outcome"]) == ["refused", "accepted", "accepted"]
    assert rows["Parameters"].iloc[2] == '{"projection": "task_summary"}'
    assert "operator role" in rows["Detail"].iloc[0]


def test_filters_by_actor_action_and_outcome(service):
    act(service)
    at = open_page()

    at.selectbox(key="audit.actor").select("olga").run()
    assert list(timeline(at)["Action"]) == ["projection.resume", "projection.pause"]

    at.multiselect(key="audit.actions").select("projection.pause").run()
    assert list(timeline(at)["Action"]) == ["projection.pause"]

    at.selectbox(key="audit.actor").select("Everyone").run()
    at.multiselect(key="audit.actions").unselect("projection.pause").run()
    at.selectbox(key="audit.outcome").select("Refused").run()
    assert list(timeline(at)["Who"]) == ["rita"]

    at.selectbox(key="audit.actor").select("olga").run()
    assert not at.dataframe
    assert [i.value for i in at.info] == ["No action matches these filters."]
    assert not at.exception


def test_older_pages_and_back_to_the_newest(service):
    for i in range(55):
        record_action(
            service.engine, actor=f"op{i:02d}", role="operator", action="views.refresh", outcome="accepted"
        )
    at = open_page()
    assert len(timeline(at)) == 50 and timeline(at)["Who"].iloc[0] == "op54"

    at.button(key="audit.older").click().run()
    assert list(timeline(at)["Who"]) == ["op04", "op03", "op02", "op01", "op00"]
    assert at.button(key="audit.older").disabled

    at.button(key="audit.newest").click().run()
    assert timeline(at)["Who"].iloc[0] == "op54"


def test_csv_export_encodes_hostile_actor_and_parameters(service, export_builders):
    # Names and projections come from people (sign-in names, typed values): a refused pause of a
    # projection named like a formula, by an actor named like one.
    hostile = CommandFactory(actor=HOSTILE_ACTOR, role="researcher")
    with pytest.raises(AuthorizationError):
        service.execute_command(hostile.pause_projection(projection=HOSTILE_PROJECTION))
    record_action(
        service.engine,
        actor="@SUM(1+1)",
        role="operator",
        action="demo.seed",
        parameters={"note": "-2+3"},
        outcome="accepted",
        detail="=1+1",
    )

    at = open_page()
    assert timeline(at)["Who"].iloc[1] == HOSTILE_ACTOR  # shown as typed in the table

    exported = export_builders["audit.csv"]().decode("utf-8")
    got = list(csv.DictReader(io.StringIO(exported)))
    assert [r["Who"] for r in got] == ["'@SUM(1+1)", "'" + HOSTILE_ACTOR]
    assert got[0]["Detail"] == "'=1+1"
    assert got[0]["Parameters"] == '{"note": "-2+3"}'  # starts with "{": no spreadsheet runs it
    assert got[1]["Parameters"] == '{"projection": "' + HOSTILE_PROJECTION + '"}'
    assert got[1]["Outcome"] == "refused"
    for row in got:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell
    assert all(line.startswith('"') for line in exported.splitlines())  # every cell quoted
