"""Times follow the viewer's time zone (the browser's, else CQRS_TIME_ZONE) on every page, and each
page says which zone it shows (issue 15, "Time zones")."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from page_harness import app_env, catch_up, create_workflow, rerun, service  # noqa: F401
from streamlit.testing.v1 import AppTest

from cqrs_core.read.queries import QueryFactory

APP = str(Path(__file__).resolve().parents[2] / "app.py")
DETAIL = "pages/workflow.py"
Q = QueryFactory()


def open_page(page: str, timezone: str | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    if timezone:
        at.context["timezone"] = timezone
    rerun(at)
    at.switch_page(page)
    at.query_params.update(query)
    return rerun(at)


def header(at: AppTest, key: str, column: str) -> str:
    config = json.loads(at.dataframe(key=key).proto.columns)
    return config[column]["label"]


def created_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Created "))


def test_a_workflows_times_are_in_the_browsers_zone_and_say_so(db_url, app_env, service):
    wid = create_workflow(service, actor="admin", title="Zones")
    catch_up(service)
    created = service.execute_query(Q.get_workflow(wid)).workflow["created_at"]
    app_env(db_url)

    at = open_page(DETAIL, "Asia/Tokyo", workflow=wid)

    tokyo = created.astimezone(ZoneInfo("Asia/Tokyo"))
    assert f"Created {tokyo:%Y-%m-%d %H:%M:%S} JST" in created_caption(at)
    labels = [label for d in at.dataframe for label in _labels(d)]
    assert "When (Asia/Tokyo)" in labels and not [label for label in labels if "UTC" in label]


def test_without_a_browser_zone_the_setting_applies(db_url, app_env, service):
    wid = create_workflow(service, actor="admin", title="Zones by setting")
    catch_up(service)
    created = service.execute_query(Q.get_workflow(wid)).workflow["created_at"]
    app_env(db_url, time_zone="America/Sao_Paulo")

    at = open_page(DETAIL, workflow=wid)

    local = created.astimezone(ZoneInfo("America/Sao_Paulo"))
    assert f"Created {local:%Y-%m-%d %H:%M:%S} -03" in created_caption(at)


def test_a_zone_the_browser_names_but_this_machine_does_not_know_falls_back_to_the_setting(
    db_url, app_env, service
):
    wid = create_workflow(service, actor="admin", title="Unknown zone")
    catch_up(service)
    created = service.execute_query(Q.get_workflow(wid)).workflow["created_at"]
    app_env(db_url)

    at = open_page(DETAIL, "Mars/Olympus_Mons", workflow=wid)

    assert f"Created {created.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" in created_caption(at)


def test_the_lists_and_the_event_log_name_the_zone_in_their_time_columns(db_url, app_env, service):
    create_workflow(service, actor="admin", title="Listed")
    catch_up(service)
    app_env(db_url)

    workflows = open_page("pages/workflows.py", "Europe/Berlin")
    assert header(workflows, "wf_table", "created") == "Created (Europe/Berlin)"

    explorer = open_page("pages/event_explorer.py", "Europe/Berlin")
    labels = [label for d in explorer.dataframe for label in _labels(d)]
    assert "Recorded (Europe/Berlin)" in labels
    explorer.selectbox(key="explorer.window").set_value("Between dates")
    rerun(explorer)
    assert explorer.date_input(key="explorer.dates").label == "Between (Europe/Berlin, inclusive)"


def _labels(frame) -> list[str]:
    return [c.get("label", "") for c in json.loads(frame.proto.columns).values()]


def test_the_projections_page_says_its_clock_in_the_viewers_zone(db_url, app_env, service):
    catch_up(service)
    app_env(db_url)
    at = open_page("pages/projections.py", "Asia/Kolkata")

    updated = [c.value for c in at.caption if c.value.startswith("Updated ")]
    assert updated and updated[0].split(" ")[2] == "IST", updated
    now = datetime.now(ZoneInfo("Asia/Kolkata"))
    assert updated[0].split(" ")[1][:2] in {f"{now:%H}", f"{(now.hour - 1) % 24:02d}"}
