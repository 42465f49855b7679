"""Workflows: filters, search with highlighted snippets, sort, pages, CSV export, and the detail
with only the actions the state allows."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import csv
import io
import json
import uuid
from datetime import date, timedelta

import pytest
from page_harness import (  # noqa: F401
    HOSTILE_INPUTS,
    app_env,
    bcrypt_hash,
    catch_up,
    create_workflow,
    fresh_database,
    open_service,
    rerun,
    run_page,
    seed,
    service,
    shared_db_url,
    sign_in,
    texts,
)
from streamlit.testing.v1 import AppTest

from cqrs_core import CommandFactory
from cqrs_core.app import ui
from cqrs_core.app.ui import csv_safe, md_escape, when, workflows_csv
from cqrs_core.read.queries import QueryFactory

Q = QueryFactory()

PAGE = "pages/workflows.py"
DETAIL = "pages/workflow.py"  # one workflow, ?workflow=<id>
CATALOGUE = [
    "Sleep and memory",
    "Coffee and focus",
    "Remote work productivity",
    "Meta-analysis of exercise",
    "Zebra stripes",
] + [f"Extra {i:02d}" for i in range(7)]
HOSTILE = [s for s in HOSTILE_INPUTS if s.strip() and "\x00" not in s and len(s) <= 200]


def titles(at: AppTest) -> list[str]:
    return list(at.dataframe(key="wf_table").value["title"])


def enabled_buttons(at: AppTest) -> set[str]:
    return {b.label for b in at.button if not b.disabled}


def plant_catalogue(svc) -> dict[str, str]:
    """Twelve workflows that differ in every filterable field, created oldest first."""
    alice, bob = CommandFactory(actor="alice"), CommandFactory(actor="bob")
    ids = {
        "sleep": create_workflow(
            svc,
            title="Sleep and memory",
            question="Does sleep consolidate memory?",
            methodology="systematic_review",
            priority="high",
            tags=["sleep", "memory"],
            tasks=[{"name": "Search"}],
        ),
        "coffee": create_workflow(
            svc,
            title="Coffee and focus",
            question="Does caffeine improve focus at work?",
            methodology="experimental",
            priority="low",
            tags=["caffeine"],
        ),
        "remote": create_workflow(
            svc,
            actor="bob",
            title="Remote work productivity",
            question="Is remote work more productive for small firms?",
            methodology="case_study",
            priority="urgent",
            tags=["work"],
        ),
        "meta": create_workflow(
            svc,
            title="Meta-analysis of exercise",
            question="Does exercise help memory?",
            methodology="meta_analysis",
            priority="normal",
            tags=["memory", "exercise"],
        ),
        "zebra": create_workflow(
            svc,
            actor="bob",
            title="Zebra stripes",
            question="Why do zebras have stripes?",
            methodology="exploratory",
            priority="normal",
        ),
    }
    for i in range(7):
        create_workflow(
            svc, actor="carol", title=f"Extra {i:02d}", question="Filler for paging", tags=["extra"]
        )
    svc.execute_command(alice.start_workflow(workflow_id=ids["sleep"]))
    svc.execute_command(bob.start_workflow(workflow_id=ids["remote"]))
    svc.execute_command(bob.cancel_workflow(workflow_id=ids["zebra"], reason="no funding"))
    return ids


@pytest.fixture(scope="module")
def catalogue(shared_db_url):
    return shared_db_url, seed(shared_db_url, plant_catalogue)


@pytest.fixture(scope="module")
def hostile_db(pg_admin_url, template_db):
    def plant(svc):
        for text in HOSTILE:
            create_workflow(svc, title=text, question=f"{text} and memory", tags=["hostile"])
        return create_workflow(
            svc,
            actor="admin",
            title="**bold** <img src=x onerror=alert(1)> $x$ :red[red]",
            question="[link](javascript:alert(1))\n# heading",
            tags=["<b>tag</b>"],
            tasks=[{"name": "<script>alert('xss')</script>", "assignee": "'; DROP TABLE events; --"}],
        )

    for url in fresh_database(pg_admin_url, template_db):
        yield url, seed(url, plant)


def test_list_shows_every_workflow_newest_first(catalogue, app_env):
    url, _ = catalogue
    app_env(url)

    at = run_page(PAGE)

    assert titles(at) == [f"Extra {i:02d}" for i in reversed(range(7))] + [
        "Zebra stripes",
        "Meta-analysis of exercise",
        "Remote work productivity",
        "Coffee and focus",
        "Sleep and memory",
    ]
    assert "1–12 of 12 workflows" in texts(at)
    table = at.dataframe(key="wf_table").value
    assert dict(zip(table["title"], table["status"], strict=True))["Sleep and memory"] == "running"


def test_each_filter_narrows_the_list(catalogue, app_env):
    url, _ = catalogue
    app_env(url)
    at = run_page(PAGE)

    def only(key, value):
        for k in ("wf_filter_status", "wf_filter_methodology", "wf_filter_priority", "wf_filter_tags"):
            at.multiselect(key=k).set_value([])
        at.text_input(key="wf_filter_owner").set_value("")
        widget = at.text_input(key=key) if key == "wf_filter_owner" else at.multiselect(key=key)
        widget.set_value(value)
        return sorted(titles(rerun(at)))

    assert only("wf_filter_status", ["running"]) == ["Remote work productivity", "Sleep and memory"]
    assert only("wf_filter_methodology", ["experimental", "meta_analysis"]) == [
        "Coffee and focus",
        "Meta-analysis of exercise",
    ]
    assert only("wf_filter_priority", ["urgent", "high"]) == ["Remote work productivity", "Sleep and memory"]
    assert only("wf_filter_owner", "bob") == ["Remote work productivity", "Zebra stripes"]
    assert only("wf_filter_tags", ["memory"]) == ["Meta-analysis of exercise", "Sleep and memory"]
    only("wf_filter_tags", [])
    at.date_input(key="wf_filter_created").set_value((date.today() - timedelta(days=1), date.today()))
    assert len(titles(rerun(at))) == 12
    at.date_input(key="wf_filter_created").set_value(
        (date.today() + timedelta(days=1), date.today() + timedelta(days=2))
    )
    rerun(at)
    assert any("No workflow matches" in i.value for i in at.info)


def test_sort_page_size_and_pages(catalogue, app_env):
    url, _ = catalogue
    app_env(url)
    at = run_page(PAGE)

    at.selectbox(key="wf_sort").set_value("title")
    at.button_group(key="wf_order").set_value("Ascending")
    at.selectbox(key="wf_page_size").set_value(10)
    rerun(at)
    assert titles(at) == sorted(CATALOGUE)[:10]
    assert "1–10 of 12 workflows" in texts(at)
    pager = at.get("pagination")[0]
    assert pager.num_pages == 2
    pager.select(2)
    rerun(at)
    assert titles(at) == sorted(CATALOGUE)[10:]
    assert "11–12 of 12 workflows" in texts(at)

    at.button_group(key="wf_order").set_value("Descending")  # a new order starts again at page 1
    rerun(at)
    assert titles(at) == sorted(CATALOGUE, reverse=True)[:10]

    at.selectbox(key="wf_page_size").set_value(50)
    rerun(at)
    assert len(titles(at)) == 12 and not at.get("pagination")  # one page: no pager


def test_search_ranks_matches_and_highlights_them(catalogue, app_env):
    url, _ = catalogue
    app_env(url)
    at = run_page(PAGE)

    at.text_input(key="wf_search").set_value("memory")
    rerun(at)

    assert sorted(titles(at)) == ["Meta-analysis of exercise", "Sleep and memory"]
    assert titles(at)[0] == "Sleep and memory"  # in title and question: ranks first
    assert at.selectbox(key="wf_sort").disabled  # relevance order
    hits = at.html[0].value
    assert hits.lower().count("<mark>memory</mark>") >= 2 and "\ue000" not in hits

    at.multiselect(key="wf_filter_methodology").set_value(["meta_analysis"])
    assert titles(rerun(at)) == ["Meta-analysis of exercise"]  # search and filters combine

    at.text_input(key="wf_search").set_value("platypus")
    rerun(at)
    assert any("No workflow matches" in i.value for i in at.info)


def test_a_search_for_too_many_words_says_how_many_are_allowed(catalogue, app_env):
    from cqrs_core.read.queries import MAX_SEARCH_TERMS

    url, _ = catalogue
    app_env(url)
    at = run_page(PAGE)
    at.text_input(key="wf_search").set_value(" or ".join(f"word{i}" for i in range(MAX_SEARCH_TERMS + 1)))
    rerun(at)
    assert [e.value for e in at.error] == [md_escape(f"Search for at most {MAX_SEARCH_TERMS} words.")]
    assert not any("fewer words" in i.value for i in at.info)


def test_the_export_button_does_not_rerun_the_page(catalogue, app_env):
    """A rerun started by the click races the deferred file it asks for (Streamlit 1.67 then
    drops the file: see tests/integration/test_proxy_deployment.py, which clicks it 20 times)."""
    url, _ = catalogue
    app_env(url)

    at = run_page(PAGE)

    [export] = [b for b in at.get("download_button") if b.proto.label == "Export CSV"]
    assert export.proto.ignore_rerun and export.proto.deferred_file_id


def test_csv_export_holds_every_match_in_list_order(catalogue):
    url, _ = catalogue
    svc = open_service(url)
    try:
        rows = list(
            csv.DictReader(
                io.StringIO(
                    workflows_csv(svc, "", {"owner": "alice"}, sort="title", descending=False).decode("utf-8")
                )
            )
        )
        found = list(csv.DictReader(io.StringIO(workflows_csv(svc, "stripes", {}).decode("utf-8"))))
        capped = workflows_csv(svc, "", {}, limit=3).decode("utf-8").splitlines()
    finally:
        svc.close()
    assert [r["title"] for r in rows] == ["Coffee and focus", "Meta-analysis of exercise", "Sleep and memory"]
    # tags joined by a character no spreadsheet splits a cell on; every cell quoted
    assert rows[2]["tags"] == "sleep | memory" and rows[2]["status"] == "running"
    assert capped[0].startswith('"workflow_id","title",') and capped[1].startswith('"')
    assert [r["title"] for r in found] == ["Zebra stripes"] and "stripes" in found[0]["match"]
    assert len(capped) == 1 + 3


def test_selecting_a_row_opens_its_detail_and_back_returns_to_the_list(catalogue, app_env):
    url, ids = catalogue
    app_env(url)
    at = run_page(PAGE)
    at.text_input(key="wf_search").set_value("sleep")
    rerun(at)

    at.session_state["wf_table"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)

    assert at.query_params["workflow"] == ids["sleep"]
    assert [t.value for t in at.title] == ["Sleep and memory"]
    assert md_escape("Does sleep consolidate memory?") in [m.value for m in at.markdown]
    assert list(at.dataframe(key=f"wf_tasks_{ids['sleep']}").value["name"]) == ["Search"]
    at.switch_page(DETAIL)  # where the browser now is (AppTest reruns the page it was sent to)
    at.button(key="wf_back").click()
    rerun(at)
    assert "workflow" not in at.query_params
    assert titles(at) == ["Sleep and memory"]  # the list again, search kept, nothing selected


def test_unknown_or_malformed_workflow_links_say_so(catalogue, app_env):
    url, _ = catalogue
    app_env(url)

    at = run_page(DETAIL, query_params={"workflow": "not-a-uuid"})
    assert any("does not point to a workflow" in e.value for e in at.error)
    at.query_params["workflow"] = str(uuid.uuid4())
    rerun(at)
    assert any("was not found" in e.value for e in at.error)


def test_someone_elses_workflow_is_read_only(catalogue, app_env):
    url, ids = catalogue
    app_env(url, auth_mode="password")
    at = run_page(
        secrets={"users": {"rita": {"password_hash": bcrypt_hash("secret-rita"), "role": "researcher"}}}
    )
    sign_in(at, "rita", "secret-rita")
    at.switch_page(PAGE)
    at.query_params["workflow"] = ids["sleep"]
    rerun(at)

    assert "Only its owner (alice) or an admin can change this workflow." in texts(at)
    assert not {"Start workflow", "Pause workflow", "Cancel workflow"} & enabled_buttons(at)
    assert not at.get("expander")  # no "Add a task" either


def test_hostile_text_is_shown_verbatim_in_list_search_and_csv(hostile_db, app_env):
    url, _ = hostile_db
    app_env(url)
    at = run_page(PAGE)
    at.multiselect(key="wf_filter_tags").set_value(["hostile"])
    at.selectbox(key="wf_page_size").set_value(200)
    rerun(at)

    assert sorted(titles(at)) == sorted(s.strip() for s in HOSTILE)

    at.text_input(key="wf_search").set_value("alert")
    rerun(at)
    assert {"<img src=x onerror=alert(1)>", "javascript:alert(1)"} <= set(titles(at))
    hits = at.html[0].value
    assert (
        "<img" not in hits and "&lt;img src=x onerror=<mark>alert</mark>(1)&gt;" in hits
    )  # escaped: as typed

    svc = open_service(url)
    try:
        exported = workflows_csv(svc, "", {"tags": ["hostile"]}, limit=1000).decode("utf-8")
    finally:
        svc.close()
    # as typed, except that text a spreadsheet would run as a formula starts with a quote
    assert sorted(r["title"] for r in csv.DictReader(io.StringIO(exported))) == sorted(
        csv_safe(s.strip()) for s in HOSTILE
    )


def test_hostile_text_in_the_detail_is_shown_verbatim(hostile_db, app_env):
    url, wid = hostile_db
    app_env(url)

    at = run_page(DETAIL, query_params={"workflow": wid})

    assert [t.value for t in at.title] == [md_escape("**bold** <img src=x onerror=alert(1)> $x$ :red[red]")]
    assert md_escape("[link](javascript:alert(1))\n# heading") in [m.value for m in at.markdown]
    tasks = at.dataframe(key=f"wf_tasks_{wid}").value
    assert list(tasks["name"]) == ["<script>alert('xss')</script>"]
    assert list(tasks["assignee"]) == ["'; DROP TABLE events; --"]


def test_detail_offers_only_the_actions_the_state_allows_and_they_work(db_url, app_env, service):
    search, read = str(uuid.uuid4()), str(uuid.uuid4())
    wid = create_workflow(
        service,
        actor="admin",
        tasks=[
            {"name": "Search the literature", "task_id": search, "kind": "literature_search"},
            {
                "name": "Read the papers",
                "task_id": read,
                "kind": "review",
                "depends_on": ["Search the literature"],
            },
        ],
    )
    app_env(db_url, run_projections=True)
    at = run_page(DETAIL, query_params={"workflow": wid})

    # draft: start or cancel; tasks wait for the workflow
    assert "Start workflow" in enabled_buttons(at)
    assert not {"Resume", "Pause workflow", "Complete workflow", "Mark workflow failed"} & enabled_buttons(at)
    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    assert "Start the workflow first." in texts(at)

    at.button(key="wf_act_start").click()
    rerun(at)
    assert any("Workflow started." in t.value for t in at.toast)
    assert ":blue-badge[running]" in at.markdown[0].value
    assert {
        "Pause workflow",
        "Complete workflow",
        "Mark workflow failed",
        "Cancel workflow",
    } <= enabled_buttons(at)
    assert "Start workflow" not in enabled_buttons(at)

    # completing with open tasks and no reason is refused in one sentence, and changes nothing
    at.button(key="wf_act_complete").click()
    rerun(at)
    assert [e.value for e in at.error] == [
        md_escape(
            "Cannot complete the workflow: 2 task(s) are not completed; complete them first, or give a reason to "
            "complete it anyway."
        )
    ]
    assert ":blue-badge[running]" in at.markdown[0].value

    # the first task: start, fail, retry, complete; the second waits for it
    at.button(key="wf_task_start").click()
    rerun(at)
    assert "Start task" not in enabled_buttons(at)
    at.text_area(key="wf_task_error").set_value("database offline")
    at.button(key="FormSubmitter:wf_task_fail_form-Fail task").click()
    rerun(at)
    assert any("Task marked failed." in t.value for t in at.toast)
    assert "database offline" in [t.value for t in at.text]
    at.button(key="wf_task_retry").click()
    rerun(at)
    at.text_area(key="wf_task_summary").set_value("Found 42 papers")
    at.button(key="FormSubmitter:wf_task_complete_form-Complete task").click()
    rerun(at)
    tasks = at.dataframe(key=f"wf_tasks_{wid}").value
    assert list(tasks["status"]) == ["completed", "pending"]
    assert list(tasks["attempts"]) == [2, 0]
    assert list(tasks["result"])[0] == "Found 42 papers"
    assert "This task is completed; there is nothing more to do with it." in texts(at)

    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [1], "columns": []}}
    rerun(at)
    assert "Start task" in enabled_buttons(at)  # its dependency is completed now

    # pause / resume, then cancel with a reason
    at.button(key="wf_act_pause").click()
    rerun(at)
    assert "Resume" in enabled_buttons(at) and "Pause workflow" not in enabled_buttons(at)
    assert "Resume the workflow first." in texts(at)
    at.button(key="wf_act_resume").click()
    rerun(at)
    at.text_input(key="wf_act_cancel_reason").set_value("superseded")
    at.button(key="wf_act_cancel").click()
    rerun(at)
    assert "This workflow is cancelled; nothing more can happen to it." in texts(at)
    assert not {
        "Start workflow",
        "Resume",
        "Pause workflow",
        "Cancel workflow",
        "Start task",
    } & enabled_buttons(at)

    activity = next(d.value for d in at.dataframe if "what" in d.value.columns)
    # the pending task was cancelled with its workflow, by an event of its own
    assert list(activity["what"])[:3] == ["WorkflowCancelled", "TaskCancelled", "WorkflowResumed"]
    events = at.dataframe(key="wf_events").value  # newest first
    assert list(events["version"]) == list(range(len(events), 0, -1))
    assert events["type"].iloc[0] == "WorkflowCancelled" and events["type"].iloc[-1] == "WorkflowCreated"
    at.session_state["wf_events"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    assert at.json[0].value and "superseded" in at.json[0].value


def test_a_task_waits_for_its_dependencies_and_one_out_of_attempts_stays_failed(db_url, app_env, service):
    search, read = str(uuid.uuid4()), str(uuid.uuid4())
    wid = create_workflow(
        service,
        actor="admin",
        tasks=[
            {"name": "Search the literature", "task_id": search},
            {"name": "Read the papers", "task_id": read, "depends_on": ["Search the literature"]},
        ],
    )
    admin = CommandFactory(actor="admin")
    service.execute_command(admin.start_workflow(workflow_id=wid))
    service.execute_command(admin.start_task(workflow_id=wid, task_id=search))
    service.execute_command(admin.fail_task(workflow_id=wid, task_id=search, error="database offline"))
    catch_up(service)
    app_env(db_url, max_task_attempts="1")
    at = run_page(DETAIL, query_params={"workflow": wid})

    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [1], "columns": []}}
    rerun(at)
    assert "Waiting for “Search the literature” to be completed." in texts(at)
    assert "Start task" not in enabled_buttons(at)

    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    assert "It has used all 1 attempts; it stays failed." in texts(at)
    assert not [label for label in enabled_buttons(at) if label.startswith("Retry")]


def test_a_finished_workflows_tasks_are_closed_and_not_offered_as_work(db_url, app_env, service):
    search, read = str(uuid.uuid4()), str(uuid.uuid4())
    wid = create_workflow(
        service,
        actor="admin",
        tasks=[
            {"name": "Search the literature", "task_id": search},
            {"name": "Read the papers", "task_id": read},
        ],
    )
    admin = CommandFactory(actor="admin")
    service.execute_command(admin.start_workflow(workflow_id=wid))
    service.execute_command(admin.start_task(workflow_id=wid, task_id=search))
    service.execute_command(admin.fail_task(workflow_id=wid, task_id=search, error="database offline"))
    service.execute_command(admin.complete_workflow(workflow_id=wid, reason="the rest is out of scope"))
    catch_up(service)
    app_env(db_url)
    at = run_page(DETAIL, query_params={"workflow": wid})

    tasks = at.dataframe(key=f"wf_tasks_{wid}").value
    assert list(tasks["status"]) == ["failed", "cancelled"]
    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    assert "This task is failed and its workflow is completed; nothing more can happen to it." in texts(at)
    assert "can be worked on" not in texts(at)
    assert not [label for label in enabled_buttons(at) if label.startswith("Retry")]
    at.session_state[f"wf_tasks_{wid}"] = {"selection": {"rows": [1], "columns": []}}
    rerun(at)
    assert "This task is cancelled; there is nothing more to do with it." in texts(at)
    assert "can be worked on" not in texts(at)


def test_a_paused_workflow_says_since_when_it_is_paused(db_url, app_env, service):
    wid = create_workflow(service, actor="admin")
    admin = CommandFactory(actor="admin")
    service.execute_command(admin.start_workflow(workflow_id=wid))
    service.execute_command(admin.pause_workflow(workflow_id=wid, reason="waiting for data"))
    catch_up(service)
    paused_at = service.execute_query(Q.get_workflow(wid)).workflow["paused_at"]
    app_env(db_url)
    at = run_page(DETAIL, query_params={"workflow": wid})

    caption = next(c.value for c in at.caption if c.value.startswith("Created "))
    assert f"paused since {when(paused_at)} (" in caption
    assert "running for" not in caption


def timeline(at: AppTest):
    """The Activity tab's table (a plain table has no key to find it by: it is the one with details)."""
    [table] = [d.value for d in at.dataframe if "details" in d.value.columns]
    return table


def test_a_long_timeline_and_event_stream_are_shown_a_page_at_a_time(db_url, app_env, service):
    from sqlalchemy import text

    from cqrs_core.domain.events import stream_id_for
    from cqrs_core.read.queries import ACTIVITY_PAGE_SIZE

    wid = create_workflow(service, title="Endless study")
    catch_up(service)
    n = 260  # timeline entries and stream events beyond the first: several pages of each
    event_page = 100  # EVENT_PAGE in cqrs_core/app/screens/workflow_detail.py
    with service.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workflow_activity (position, workflow_id, event_type, actor, occurred_at, summary) "
                "SELECT 1000000 + i, CAST(:w AS uuid), 'TaskStarted', 'alice', now(), 'entry ' || i "
                "FROM generate_series(1, :n) AS i"
            ),
            {"w": wid, "n": n},
        )
        conn.execute(
            text(
                "INSERT INTO events (stream_id, version, event_type, payload, event_id, actor) "
                "SELECT :s, i + 1, 'WorkflowPaused', '{}'::jsonb, gen_random_uuid(), 'alice' "
                "FROM generate_series(1, :n) AS i"
            ),
            {"s": stream_id_for(wid), "n": n},
        )
    app_env(db_url)
    at = run_page(DETAIL, query_params={"workflow": wid})

    activity = timeline(at)
    assert len(activity) == ACTIVITY_PAGE_SIZE
    assert list(activity["details"][:2]) == [f"entry {n}", f"entry {n - 1}"]  # newest first
    events = at.dataframe(key="wf_events").value
    assert len(events) == event_page and events["version"].iloc[0] == n + 1
    assert f"{n + 1:,} in all · page 1 of {-(-(n + 1) // ACTIVITY_PAGE_SIZE)}, newest first" in texts(at)
    assert f"{n + 1:,} in all · page 1 of {-(-(n + 1) // event_page)}, newest first" in texts(at)
    assert at.button(key="wf_activity_pages_newer").disabled

    at.button(key="wf_activity_pages_older").click()
    rerun(at)
    older = timeline(at)
    assert len(older) == ACTIVITY_PAGE_SIZE
    assert older["details"].iloc[0] == f"entry {n - ACTIVITY_PAGE_SIZE}"
    assert len(at.dataframe(key="wf_events").value) == event_page  # the other list kept its page

    seen = list(activity["details"]) + list(older["details"])
    while not at.button(key="wf_activity_pages_older").disabled:  # walk to the oldest entry
        at.button(key="wf_activity_pages_older").click()
        rerun(at)
        page = timeline(at)
        assert 0 < len(page) <= ACTIVITY_PAGE_SIZE
        seen += list(page["details"])
    assert len(seen) == len(set(seen)) == n + 1  # every entry once, none skipped

    at.button(key="wf_activity_pages_newest").click()
    rerun(at)
    assert list(timeline(at)["details"]) == list(activity["details"])

    at.button(key="wf_events_pages_older").click()
    rerun(at)
    assert at.dataframe(key="wf_events").value["version"].iloc[0] == n + 1 - event_page


def test_a_person_who_asks_for_too_much_too_fast_is_told_to_wait_in_one_sentence(catalogue, app_env):
    url, _ = catalogue
    app_env(url, query_rate_limit_per_second="0.001", query_rate_limit_burst="3")
    at = run_page(PAGE)
    for _ in range(3):  # each run asks for fresh answers (the cache holds them for seconds only)
        at.session_state["runtime"].service.query_bus.cache.clear()
        rerun(at)
    assert any(e.value.startswith(md_escape("Too many requests for data; try again in ")) for e in at.error)


def test_cancelling_without_a_reason_says_so_in_the_fields_words_and_changes_nothing(
    db_url, app_env, service
):
    wid = create_workflow(service, actor="admin", title="Not cancelled yet")
    catch_up(service)
    app_env(db_url)
    at = run_page(DETAIL, query_params={"workflow": wid})
    events = service.event_store.count()

    field = at.text_input(key="wf_act_cancel_reason")
    assert field.label == "Reason for cancelling" and field.proto.required
    field.set_value("   ")
    at.button(key="wf_act_cancel").click()
    rerun(at)
    assert [e.value for e in at.error] == ["Nothing was cancelled: fill in “Reason for cancelling” first."]
    assert "reason: must not be blank" not in texts(at)
    assert ":gray-badge[draft]" in at.markdown[0].value
    assert service.event_store.count() == events


def key_columns_shown(at: AppTest, key: str, columns: list[str]) -> int:
    """The pixels `columns` take in the table `key`, after checking that they come first."""
    frame = at.dataframe(key=key)
    assert list(frame.proto.column_order)[: len(columns)] == columns
    return ui.key_columns_width(json.loads(frame.proto.columns), columns)


def test_the_list_and_task_tables_key_columns_fit_a_1024_px_screen_and_come_first(catalogue, app_env):
    """Issue 15 item 17: at 1440 px Created and Due (the list) and Took, Result and Last error (a
    workflow's tasks) ran off-screen. What a person scans by comes first, with fixed widths within
    the budget of a 1024 px screen; with a search, the hit number too."""
    url, ids = catalogue
    app_env(url)
    at = run_page(PAGE)
    listed = ["title", "status", "priority", "created", "due"]
    assert key_columns_shown(at, "wf_table", listed) <= ui.KEY_COLUMNS_WIDTH_BUDGET

    at.text_input(key="wf_search").set_value("sleep")
    rerun(at)
    assert key_columns_shown(at, "wf_table", ["hit", *listed]) <= ui.KEY_COLUMNS_WIDTH_BUDGET

    at.session_state["wf_table"] = {"selection": {"rows": [0], "columns": []}}
    rerun(at)
    tasks = ["name", "status", "duration", "result", "error"]
    assert key_columns_shown(at, f"wf_tasks_{ids['sleep']}", tasks) <= ui.KEY_COLUMNS_WIDTH_BUDGET
