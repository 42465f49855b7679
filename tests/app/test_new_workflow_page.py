"""New workflow: the form creates a workflow with its tasks in one command, shows field errors
inline, opens the new workflow once the read model has it, and a second submit of the same form
creates nothing new."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

from datetime import date, timedelta

from page_harness import app_env, rerun, run_page, service  # noqa: F401
from streamlit.testing.v1 import AppTest

from cqrs_core import QueryFactory
from cqrs_core.app.ui import md_escape

PAGE = "pages/new_workflow.py"
SUBMIT = "FormSubmitter:new_workflow-Create workflow"
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
    at.session_state["new_wf_tasks"] = {"edited_rows": {}, "added_rows": tasks, "deleted_rows": []}
    return at


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
    assert at.data_editor(key="new_wf_tasks").editing_mode == "dynamic"

    fill(at, title=TITLE, question="Does sleep consolidate memory?", tasks=TASKS)
    at.button(key=SUBMIT).click()
    rerun(at)

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
    at.button(key=SUBMIT).click()
    rerun(at)
    assert at.query_params.get("workflow") == wid
    assert any("already created" in t.value for t in at.toast)
    assert [w["title"] for w in workflows_in(service)] == [TITLE]

    # Different contents are a different workflow.
    at.switch_page(PAGE)
    rerun(at)
    fill(at, title="A second study", question="Another question?", tasks=[], tags=[])
    at.button(key=SUBMIT).click()
    rerun(at)
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
    at.button(key=SUBMIT).click()
    rerun(at)

    captions = [c.value for c in at.caption]  # rows 1-3 are the blank rows the table starts with
    assert any("Row 4 \\(Analyse\\)\\: say who does it \\(assignee\\)\\." in c for c in captions)
    assert any("depends on “Collect”\\, which is not a task listed above it" in c for c in captions)
    assert any("Row 5\\: give the task a name\\." in c for c in captions)
    assert [e.value for e in at.error] == [
        md_escape("The workflow was not created: fix the fields marked above.")
    ]
    assert "workflow" not in at.query_params

    at.session_state["new_wf_tasks"] = {"edited_rows": {}, "added_rows": [], "deleted_rows": []}
    at.button(key=SUBMIT).click()
    rerun(at)
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
    at.button(key=SUBMIT).click()
    rerun(at)
    assert at.text_input(key="new_wf_title").value == long_title
    captions = " ".join(c.value for c in at.caption)
    assert md_escape("A title can have at most 200 characters; this one has 290. Shorten it.") in captions
    assert "workflow" not in at.query_params
    assert service.event_store.count() == 0


def test_the_task_table_hands_each_edit_to_the_form_at_once(db_url, app_env):
    """A Create clicked right after the last cell's Enter must see that cell: Streamlit holds a
    "rerun" editor's edit back for 150 ms in the browser, an "ignore" one hands it over at once
    (the race itself is driven in real Chromium in tests/e2e/test_forms.py)."""
    app_env(db_url)
    at = run_page(PAGE)
    assert at.data_editor(key="new_wf_tasks").proto.ignore_rerun
