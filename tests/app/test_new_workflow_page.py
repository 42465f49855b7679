"""New workflow: the form creates a workflow with its tasks in one command, shows field errors
inline, opens the new workflow once the read model has it, and a second submit of the same form
creates nothing new."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import json
from datetime import date, timedelta

from page_harness import app_env, rerun, run_page, service  # noqa: F401
from streamlit.testing.v1 import AppTest

from cqrs_core import QueryFactory
from cqrs_core.app.ui import md_escape

PAGE = "pages/new_workflow.py"
SUBMIT = "new_wf_create_button"
TITLE = "Sleep & memory: **a review** <b>2024</b> 🧪"
DUE = date.today() + timedelta(days=30)


def fill(
    at: AppTest, *, title: str, question: str, tasks: list[dict], tags: list[str] | None = None
) -> AppTest:
    at.text_input(key="new_wf_title").set_value(title)
    at.text_area(key="new_wf_question").set_value(question)
    at.selectbox(key="new_wf_methodology").set_value("meta_analysis")
    at.button_group(key="new_wf_priority").set_value("high")
    at.multiselect(key="new_wf_tags").set_value(tags if tags is not None else ["sleep", "memory"])
    at.date_input(key="new_wf_due").set_value(DUE)
    type_tasks(at, tasks)
    return at


def type_tasks(at: AppTest, tasks: list[dict]) -> None:
    """Type `tasks` into the first rows of the task table, as the browser hands them over."""
    edited = {row: {k: v for k, v in task.items()} for row, task in enumerate(tasks)}
    at.session_state["new_wf_tasks"] = {"edited_rows": edited, "added_rows": [], "deleted_rows": []}


def create(at: AppTest) -> AppTest:
    """Click Create: its own run only asks and waits for the table to settle; the next run (in
    the browser the table's last edit or the armed timer) creates."""
    at.button(key=SUBMIT).click()
    rerun(at)
    assert any("Creating the workflow" in c.value for c in at.caption)  # asked, not yet created
    return rerun(at)


TASKS = [
    {"name": "Search the literature", "kind": "literature_search", "assignee": "admin", "estimate": 120},
    {
        "name": "<script>alert('xss')</script>",
        "kind": "analysis",
        "assignee": "bob",
        "depends_on": ["Search the literature"],
    },
    {
        "name": "Write it up",
        "kind": "synthesis",
        "assignee": "admin",
        "depends_on": ["Search the literature", "<script>alert('xss')</script>"],
    },
]


def workflows_in(svc) -> list[dict]:
    svc.projections.catch_up()
    return svc.execute_query(QueryFactory().get_workflow_list(), cache=False).items


def test_submit_creates_the_workflow_with_its_tasks_and_opens_it(db_url, app_env, service):
    app_env(db_url, run_projections=True)
    at = run_page(PAGE)
    assert at.data_editor(key="new_wf_tasks").editing_mode == "fixed"

    fill(at, title=TITLE, question="Does sleep consolidate memory?", tasks=TASKS)
    create(at)

    wid = at.query_params.get("workflow")
    assert wid  # switched to the new workflow's detail on the Workflows page
    assert any("Workflow created as a draft." in t.value for t in at.toast)
    assert [t.value for t in at.title] == [md_escape(TITLE)]
    assert ":gray-badge[draft] · Meta analysis · High priority · owner admin" in at.markdown[0].value
    tasks = at.dataframe(key=f"wf_tasks_{wid}").value
    assert list(tasks["name"]) == [t["name"] for t in TASKS]
    assert list(tasks["assignee"]) == ["admin", "bob", "admin"]
    assert [list(d) for d in tasks["depends_on"]] == [
        [],
        ["Search the literature"],
        ["Search the literature", "<script>alert('xss')</script>"],
    ]
    assert list(tasks["estimate"])[0] == 120
    detail = service.execute_query(QueryFactory().get_workflow(wid))
    assert detail.workflow["tags"] == ["sleep", "memory"] and detail.workflow["due_date"] == DUE

    # The same form submitted again in this session (a double-click, a retry) re-sends the same command.
    at.switch_page(PAGE)
    rerun(at)
    fill(at, title=TITLE, question="Does sleep consolidate memory?", tasks=TASKS)
    create(at)
    assert at.query_params.get("workflow") == wid
    assert any("already created" in t.value for t in at.toast)
    assert [w["title"] for w in workflows_in(service)] == [TITLE]

    # Different contents are a different workflow.
    at.switch_page(PAGE)
    rerun(at)
    fill(at, title="A second study", question="Another question?", tasks=[], tags=[])
    create(at)
    assert at.query_params.get("workflow") not in (None, wid)
    assert sorted(w["title"] for w in workflows_in(service)) == ["A second study", TITLE]


def test_invalid_input_shows_field_errors_and_writes_nothing(db_url, app_env, service):
    app_env(db_url)
    at = run_page(PAGE)

    fill(
        at,
        title="   ",
        question="",
        tags=["x" * 41],
        tasks=[
            {"name": "Analyse", "kind": "analysis", "assignee": "", "depends_on": ["Collect"]},
            {"name": "", "kind": "review", "assignee": "bob", "estimate": 30},
        ],
    )
    create(at)

    captions = [c.value for c in at.caption]  # the rows as typed
    assert any("Row 1 \\(Analyse\\)\\: say who does it \\(assignee\\)\\." in c for c in captions)
    assert any("depends on “Collect”\\, which is not a task listed above it" in c for c in captions)
    assert any("Row 2\\: give the task a name\\." in c for c in captions)
    assert [e.value for e in at.error] == [
        md_escape("The workflow was not created: fix the fields marked above.")
    ]
    assert "workflow" not in at.query_params

    type_tasks(at, [])
    create(at)
    captions = " ".join(c.value for c in at.caption)
    assert captions.count("must not be blank") == 2  # title and question, each under its field
    assert "each tag must be at most 40 characters" in captions
    assert service.event_store.count() == 0


def test_a_title_over_the_limit_is_kept_and_the_limit_is_said(db_url, app_env, service):
    """The browser refuses a paste longer than a text input's max_chars and leaves the field
    empty, so the title has no max_chars: the page checks the limit and names it."""
    app_env(db_url)
    at = run_page(PAGE)
    assert at.text_input(key="new_wf_title").proto.max_chars == 0  # 0: no limit in the browser

    long_title = "Remote work and productivity " * 10  # 290 characters
    fill(at, title=long_title, question="Does it?", tasks=[])
    create(at)
    assert at.text_input(key="new_wf_title").value == long_title
    captions = " ".join(c.value for c in at.caption)
    assert md_escape("A title can have at most 200 characters; this one has 290. Shorten it.") in captions
    assert "workflow" not in at.query_params
    assert service.event_store.count() == 0


def test_depends_on_offers_the_names_typed_so_far(db_url, app_env):
    """Before any Create, each table edit reruns the page's table, and "Depends on" offers the
    task names typed so far (it offered only those of a previous submit)."""
    app_env(db_url)
    at = run_page(PAGE)
    assert depends_on_options(at) == []

    type_tasks(at, [{"name": "Collect <data>"}, {"name": "Analyse"}, {"name": "Collect <data>"}])
    rerun(at)
    assert depends_on_options(at) == ["Collect <data>", "Analyse"]
    assert not at.data_editor(key="new_wf_tasks").proto.ignore_rerun  # an edit reruns the table


def depends_on_options(at: AppTest) -> list[str]:
    columns = json.loads(at.data_editor(key="new_wf_tasks").proto.columns)
    return [o["value"] for o in columns["depends_on"]["type_config"]["options"]]
