"""Every lifecycle rule of the ResearchWorkflow aggregate, and the field rules of its commands.

No database: the aggregate decides from the events it was given, and commands are built by the
CommandFactory. Each refusal is checked for a fragment of its message, so a person reading the
error learns which rule stopped them."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqrs_core.domain import events as ev
from cqrs_core.domain.vocabulary import METHODOLOGIES, PRIORITIES
from cqrs_core.domain.workflow import MAX_TASKS_PER_WORKFLOW, ResearchWorkflow
from cqrs_core.infra.errors import DomainRuleViolation, ValidationError
from cqrs_core.write.commands import CommandFactory

OWNER = "olivia"
STRANGER = "sam"
MAX_ATTEMPTS = 3
HOSTILE_INPUTS: list[str] = json.loads(
    (Path(__file__).parents[1] / "data" / "hostile_inputs.json").read_text()
)


@dataclass(frozen=True)
class TaskSpec:
    """A task listed at creation, shaped like what the command bus hands the aggregate."""

    task_id: str
    name: str
    depends_on: list[str] = field(default_factory=list)
    kind: str = "other"
    assignee: str = "agent-1"
    estimate_minutes: int | None = None


def spec(task_id: str, *depends_on: str) -> TaskSpec:
    return TaskSpec(task_id, name=task_id.title(), depends_on=list(depends_on))


def decide(wf: ResearchWorkflow, events: list[ev.DomainEvent]) -> list[ev.DomainEvent]:
    """Apply what a decision returned, as the command bus does after appending it."""
    for e in events:
        wf.apply(e)
    return events


def created(*tasks: TaskSpec) -> ResearchWorkflow:
    wf = ResearchWorkflow("wf-1")
    decide(
        wf,
        wf.create(
            title="Sleep and memory",
            research_question="Does sleep help recall?",
            methodology="systematic_review",
            tags=["sleep"],
            priority="normal",
            owner=OWNER,
            due_date=None,
            tasks=list(tasks),
        ),
    )
    return wf


def running(*tasks: TaskSpec) -> ResearchWorkflow:
    wf = created(*tasks)
    decide(wf, wf.start())
    return wf


def in_status(status: str, *tasks: TaskSpec) -> ResearchWorkflow:
    """A workflow brought to `status` through the ordinary transitions."""
    if status == "draft":
        return created(*tasks)
    wf = running(*tasks)
    moves = {
        "running": lambda: [],
        "paused": lambda: wf.pause("waiting for data"),
        "completed": lambda: wf.complete(OWNER, "done early"),
        "failed": lambda: wf.fail("funding stopped"),
        "cancelled": lambda: wf.cancel("no longer needed"),
    }
    decide(wf, moves[status]())
    assert wf.status == status
    return wf


def add(wf: ResearchWorkflow, task_id: str, *depends_on: str) -> None:
    decide(
        wf,
        wf.add_task(
            task_id=task_id,
            name=task_id.title(),
            kind="analysis",
            assignee="agent-1",
            estimate_minutes=30,
            depends_on=list(depends_on),
        ),
    )


def finish(wf: ResearchWorkflow, task_id: str) -> None:
    decide(wf, wf.start_task(task_id))
    decide(wf, wf.complete_task(task_id, "found 12 papers"))


def every_decision(wf: ResearchWorkflow) -> dict[str, object]:
    """One call of every decide method, for rules that refuse everything."""
    return {
        "create": lambda: wf.create(
            title="t",
            research_question="q",
            methodology="exploratory",
            tags=[],
            priority="low",
            owner=OWNER,
            due_date=None,
            tasks=[],
        ),
        "update_details": lambda: wf.update_details(title="A brand new title"),
        "start": wf.start,
        "pause": lambda: wf.pause(None),
        "resume": wf.resume,
        "complete": lambda: wf.complete(OWNER, "because"),
        "fail": lambda: wf.fail("broken"),
        "cancel": lambda: wf.cancel("unwanted"),
        "add_task": lambda: wf.add_task(
            task_id="new", name="New", kind="other", assignee="a", estimate_minutes=None, depends_on=[]
        ),
        "remove_task": lambda: wf.remove_task("search"),
        "start_task": lambda: wf.start_task("search"),
        "complete_task": lambda: wf.complete_task("search", "ok"),
        "fail_task": lambda: wf.fail_task("search", "boom"),
        "retry_task": lambda: wf.retry_task("search", MAX_ATTEMPTS),
    }


DECISIONS = list(every_decision(ResearchWorkflow("x")))


# ---------------------------------------------------------------- creation


def test_new_workflow_is_a_draft_owned_by_its_creator_with_its_tasks():
    wf = created(spec("search"), spec("review", "search"))

    assert wf.status == "draft"
    assert wf.owner == OWNER
    assert wf.version == 3
    assert list(wf.tasks) == ["search", "review"]
    assert all(t.status == "pending" and t.attempts == 0 for t in wf.tasks.values())


def test_workflow_can_be_created_only_once():
    wf = created()
    with pytest.raises(DomainRuleViolation, match="already exists"):
        wf.create(
            title="t",
            research_question="q",
            methodology="exploratory",
            tags=[],
            priority="low",
            owner=OWNER,
            due_date=None,
            tasks=[],
        )


@pytest.mark.parametrize("decision", [d for d in DECISIONS if d != "create"])
def test_commands_on_a_workflow_that_was_never_created_are_refused(decision):
    wf = ResearchWorkflow("ghost")
    with pytest.raises(DomainRuleViolation, match="does not exist"):
        every_decision(wf)[decision]()


def test_create_rejects_out_of_order_task_dependencies():
    wf = ResearchWorkflow("wf-1")
    with pytest.raises(DomainRuleViolation, match="list tasks in dependency order"):
        wf.create(
            title="t",
            research_question="q",
            methodology="exploratory",
            tags=[],
            priority="low",
            owner=OWNER,
            due_date=None,
            tasks=[spec("review", "search"), spec("search")],
        )


def test_create_rejects_a_task_that_depends_on_itself():
    wf = ResearchWorkflow("wf-1")
    with pytest.raises(DomainRuleViolation, match="dependency order"):
        wf.create(
            title="t",
            research_question="q",
            methodology="exploratory",
            tags=[],
            priority="low",
            owner=OWNER,
            due_date=None,
            tasks=[spec("search", "search")],
        )


def test_create_rejects_two_tasks_with_the_same_id():
    # Ids come from the client (NewTask.task_id), so the command model lets duplicates through.
    # Were they accepted, the second listing would replace the first and could depend on it,
    # i.e. on itself: a task that can never start and never be removed.
    same = str(uuid.uuid4())
    cmd = CommandFactory(actor=OWNER).create_research_workflow(
        title="t",
        research_question="q",
        methodology="exploratory",
        tasks=[
            {"task_id": same, "name": "Search", "assignee": "a"},
            {"task_id": same, "name": "Review", "assignee": "a", "depends_on": [same]},
        ],
    )
    tasks = [TaskSpec(str(t.task_id), t.name, [str(d) for d in t.depends_on]) for t in cmd.tasks]
    wf = ResearchWorkflow(str(cmd.workflow_id))

    with pytest.raises(DomainRuleViolation, match="listed twice"):
        wf.create(
            title=cmd.title,
            research_question=cmd.research_question,
            methodology=cmd.methodology,
            tags=cmd.tags,
            priority=cmd.priority,
            owner=OWNER,
            due_date=None,
            tasks=tasks,
        )


def test_workflow_holds_at_most_200_tasks():
    assert MAX_TASKS_PER_WORKFLOW == 200
    too_many = [spec(f"t{i}") for i in range(MAX_TASKS_PER_WORKFLOW + 1)]
    with pytest.raises(DomainRuleViolation, match="at most 200 tasks"):
        ResearchWorkflow("wf-1").create(
            title="t",
            research_question="q",
            methodology="exploratory",
            tags=[],
            priority="low",
            owner=OWNER,
            due_date=None,
            tasks=too_many,
        )

    wf = created(*too_many[:-1])
    assert len(wf.tasks) == MAX_TASKS_PER_WORKFLOW
    with pytest.raises(DomainRuleViolation, match="at most 200 tasks"):
        add(wf, "one-more")


# ---------------------------------------------------------------- workflow lifecycle


@pytest.mark.parametrize("status", ["running", "paused", "completed", "failed", "cancelled"])
def test_workflow_can_start_only_from_draft(status):
    wf = in_status(status)
    expected = f"Cannot start the workflow: the workflow is {status}; it must be draft"
    with pytest.raises(DomainRuleViolation, match=expected):
        wf.start()


def test_draft_workflow_starts_running():
    wf = created()
    assert decide(wf, wf.start()) == [ev.WorkflowStarted()]
    assert wf.status == "running"


def test_running_workflow_pauses_with_its_reason_and_resumes():
    wf = running()
    assert decide(wf, wf.pause("waiting for ethics approval")) == [
        ev.WorkflowPaused("waiting for ethics approval")
    ]
    assert wf.status == "paused"
    assert decide(wf, wf.resume()) == [ev.WorkflowResumed()]
    assert wf.status == "running"


@pytest.mark.parametrize("status", ["draft", "paused", "completed", "failed", "cancelled"])
def test_only_a_running_workflow_can_be_paused(status):
    wf = in_status(status)
    with pytest.raises(DomainRuleViolation, match=f"Cannot pause the workflow: the workflow is {status}"):
        wf.pause(None)


@pytest.mark.parametrize("status", ["draft", "running", "completed", "failed", "cancelled"])
def test_only_a_paused_workflow_can_be_resumed(status):
    wf = in_status(status)
    expected = f"Cannot resume the workflow: the workflow is {status}; it must be paused"
    with pytest.raises(DomainRuleViolation, match=expected):
        wf.resume()


@pytest.mark.parametrize("status", ["draft", "paused"])
def test_tasks_run_only_while_the_workflow_is_running(status):
    wf = in_status(status, spec("search"))
    with pytest.raises(
        DomainRuleViolation, match=f"Cannot start a task: the workflow is {status}; it must be running"
    ):
        wf.start_task("search")


def test_workflow_completes_only_when_every_task_is_completed_unless_owner_gives_reason():
    wf = running(spec("search"), spec("review"))
    finish(wf, "search")

    for no_reason in (None, ""):
        with pytest.raises(DomainRuleViolation, match=r"1 task\(s\) are not completed.*give a reason"):
            wf.complete(OWNER, no_reason)

    forced = copy.deepcopy(wf)
    assert decide(forced, forced.complete(OWNER, "the review is out of scope")) == [
        ev.TaskCancelled("review", "workflow completed"),
        ev.WorkflowCompleted("the review is out of scope"),
    ]
    assert forced.status == "completed"

    finish(wf, "review")
    assert decide(wf, wf.complete(OWNER, None)) == [ev.WorkflowCompleted(None)]
    assert wf.status == "completed"


def test_non_owner_cannot_force_complete():
    wf = running(spec("search"))
    with pytest.raises(
        DomainRuleViolation, match="Only the workflow's owner can complete it while tasks are still"
    ):
        wf.complete(STRANGER, "I think we are done")


def _workflow_with_tasks_in_every_state() -> ResearchWorkflow:
    wf = running(spec("done"), spec("pending"), spec("busy"), spec("broken"))
    finish(wf, "done")
    decide(wf, wf.start_task("busy"))
    decide(wf, wf.start_task("broken"))
    decide(wf, wf.fail_task("broken", "API quota exceeded"))
    return wf


@pytest.mark.parametrize(
    ("end", "reason", "status"),
    [
        (lambda wf: wf.complete(OWNER, "enough evidence"), "workflow completed", "completed"),
        (lambda wf: wf.fail("funding stopped"), "workflow failed", "failed"),
        (lambda wf: wf.cancel("grant withdrawn"), "workflow cancelled", "cancelled"),
    ],
    ids=["complete", "fail", "cancel"],
)
def test_ending_a_workflow_cancels_its_unfinished_tasks_with_an_event_each(end, reason, status):
    wf = _workflow_with_tasks_in_every_state()

    decided = decide(wf, end(wf))

    # One TaskCancelled per pending or running task, in the order the tasks were added, then
    # the workflow's end; the failed task keeps its outcome.
    assert decided[:2] == [ev.TaskCancelled("pending", reason), ev.TaskCancelled("busy", reason)]
    assert len(decided) == 3 and type(decided[2]).__name__ == f"Workflow{status.capitalize()}"
    assert wf.status == status
    assert {t.task_id: t.status for t in wf.tasks.values()} == {
        "done": "completed",
        "pending": "cancelled",
        "busy": "cancelled",
        "broken": "failed",
    }


def test_a_cancel_names_its_reason_and_leaves_the_old_task_list_empty():
    wf = _workflow_with_tasks_in_every_state()
    *_, cancelled = decide(wf, wf.cancel("grant withdrawn"))
    assert cancelled == ev.WorkflowCancelled("grant withdrawn", [])


def test_a_workflow_that_ended_before_task_cancelled_existed_has_no_unfinished_task():
    # An old log: the workflow was completed (or failed) with tasks still pending or running.
    for end in (ev.WorkflowCompleted("done early"), ev.WorkflowFailed("data lost")):
        wf = _workflow_with_tasks_in_every_state()
        wf.apply(end)
        assert {t.task_id: t.status for t in wf.tasks.values()} == {
            "done": "completed",
            "pending": "cancelled",
            "busy": "cancelled",
            "broken": "failed",
        }
    # An old cancel listed its open tasks, a failed one included: the event's word stands.
    wf = _workflow_with_tasks_in_every_state()
    wf.apply(ev.WorkflowCancelled("grant withdrawn", ["pending", "busy", "broken"]))
    assert {t.task_id: t.status for t in wf.tasks.values()} == {
        "done": "completed",
        "pending": "cancelled",
        "busy": "cancelled",
        "broken": "cancelled",
    }


def test_completing_a_workflow_whose_tasks_are_all_done_cancels_nothing():
    wf = running(spec("search"))
    finish(wf, "search")
    assert decide(wf, wf.complete(OWNER, None)) == [ev.WorkflowCompleted(None)]


@pytest.mark.parametrize("status", ["draft", "running", "paused"])
def test_an_open_workflow_can_be_cancelled(status):
    wf = in_status(status)
    decide(wf, wf.cancel("duplicate of another study"))
    assert wf.status == "cancelled"


@pytest.mark.parametrize("status", ["running", "paused"])
def test_a_started_workflow_can_fail_with_a_reason(status):
    wf = in_status(status)
    assert decide(wf, wf.fail("data source retired")) == [ev.WorkflowFailed("data source retired")]
    assert wf.status == "failed"


def test_a_draft_workflow_cannot_fail():
    with pytest.raises(DomainRuleViolation, match="Cannot fail the workflow: the workflow is draft"):
        created().fail("never started")


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_terminal_states_refuse_everything(status, decision):
    wf = in_status(status, spec("search"))
    before = copy.deepcopy(wf)
    expected = "already exists" if decision == "create" else f"the workflow is {status}"

    with pytest.raises(DomainRuleViolation, match=expected):
        every_decision(wf)[decision]()
    assert wf == before


# ---------------------------------------------------------------- details


@pytest.mark.parametrize("status", ["draft", "running", "paused"])
def test_details_can_change_while_the_workflow_is_open(status):
    wf = in_status(status)
    [updated] = decide(
        wf,
        wf.update_details(
            title="Sleep and long-term memory",
            research_question=None,
            methodology=None,
            tags=None,
            priority="urgent",
            due_date=None,
        ),
    )
    assert updated == ev.WorkflowDetailsUpdated(title="Sleep and long-term memory", priority="urgent")
    assert (wf.title, wf.priority, wf.methodology) == (
        "Sleep and long-term memory",
        "urgent",
        "systematic_review",
    )


def test_update_carries_only_the_fields_that_changed():
    wf = created()
    [updated] = wf.update_details(
        title=wf.title,
        research_question=wf.research_question,
        tags=["sleep", "memory"],
        methodology="meta_analysis",
        priority=wf.priority,
        due_date=None,
    )
    assert updated == ev.WorkflowDetailsUpdated(methodology="meta_analysis", tags=["sleep", "memory"])


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_details_cannot_change_after_completion(status):
    wf = in_status(status)
    with pytest.raises(DomainRuleViolation, match=f"Cannot update the details: the workflow is {status}"):
        wf.update_details(title="Too late")


def test_update_with_no_change_is_refused():
    wf = created()
    with pytest.raises(DomainRuleViolation, match="Nothing to update"):
        wf.update_details(
            title=wf.title,
            research_question=wf.research_question,
            methodology=wf.methodology,
            tags=list(wf.tags),
            priority=wf.priority,
            due_date=None,
        )
    with pytest.raises(DomainRuleViolation, match="Nothing to update"):
        wf.update_details(title=None, research_question=None)


# ---------------------------------------------------------------- tasks


def test_add_task_rejects_unknown_dependency():
    wf = running(spec("search"))
    with pytest.raises(DomainRuleViolation, match="Dependency nowhere is not a task of this workflow"):
        add(wf, "review", "search", "nowhere")


def test_add_task_rejects_self_dependency():
    wf = running(spec("search"))
    with pytest.raises(DomainRuleViolation, match="cannot depend on itself"):
        add(wf, "review", "review")


def test_add_task_rejects_an_id_already_in_use():
    wf = running(spec("search"))
    with pytest.raises(DomainRuleViolation, match="Task search already exists"):
        add(wf, "search")


@pytest.mark.parametrize("status", ["draft", "running", "paused"])
def test_tasks_can_be_added_while_the_workflow_is_open(status):
    wf = in_status(status, spec("search"))
    add(wf, "review", "search")
    assert wf.tasks["review"].depends_on == ["search"]
    assert wf.tasks["review"].status == "pending"


def test_task_cannot_start_before_its_dependencies_complete():
    wf = running(spec("search"), spec("extract", "search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot start 'Extract': its dependencies 'Search' are not"
    ):
        wf.start_task("extract")

    decide(wf, wf.start_task("search"))
    with pytest.raises(DomainRuleViolation, match="are not completed"):
        wf.start_task("extract")

    decide(wf, wf.complete_task("search", "40 papers"))
    assert decide(wf, wf.start_task("extract")) == [ev.TaskStarted("extract", 1)]
    assert wf.tasks["extract"].status == "running"


def test_task_starts_only_while_pending():
    wf = running(spec("search"))
    decide(wf, wf.start_task("search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot start 'Search': the task is running; it must be pending"
    ):
        wf.start_task("search")


def test_task_completes_only_while_running():
    wf = running(spec("search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot complete 'Search': the task is pending; it must be running"
    ):
        wf.complete_task("search", "nothing yet")
    finish(wf, "search")
    with pytest.raises(DomainRuleViolation, match="the task is completed; it must be running"):
        wf.complete_task("search", "twice")


def test_task_fails_only_while_running():
    wf = running(spec("search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot fail 'Search': the task is pending; it must be running"
    ):
        wf.fail_task("search", "timeout")


def test_completed_task_records_its_result_summary():
    wf = running(spec("search"))
    decide(wf, wf.start_task("search"))
    assert wf.complete_task("search", "40 papers") == [ev.TaskCompleted("search", "40 papers")]


def test_failed_task_can_be_retried_until_max_attempts():
    wf = running(spec("search"))
    assert decide(wf, wf.start_task("search")) == [ev.TaskStarted("search", 1)]
    for attempt in range(1, MAX_ATTEMPTS):
        assert decide(wf, wf.fail_task("search", "timeout")) == [ev.TaskFailed("search", "timeout", attempt)]
        assert decide(wf, wf.retry_task("search", MAX_ATTEMPTS)) == [ev.TaskRetried("search", attempt + 1)]
        assert (wf.tasks["search"].status, wf.tasks["search"].attempts) == ("running", attempt + 1)
    decide(wf, wf.fail_task("search", "timeout"))

    with pytest.raises(
        DomainRuleViolation, match=f"Cannot retry 'Search': it has used all {MAX_ATTEMPTS} attempts"
    ):
        wf.retry_task("search", MAX_ATTEMPTS)
    assert wf.tasks["search"].status == "failed"


def test_only_a_failed_task_can_be_retried():
    wf = running(spec("search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot retry 'Search': the task is pending; it must be failed"
    ):
        wf.retry_task("search", MAX_ATTEMPTS)


def test_task_can_be_removed_only_while_pending():
    wf = running(spec("search"), spec("notes"))
    assert decide(wf, wf.remove_task("notes")) == [ev.TaskRemoved("notes")]
    assert "notes" not in wf.tasks

    decide(wf, wf.start_task("search"))
    with pytest.raises(
        DomainRuleViolation, match="Cannot remove 'Search': the task is running; it must be pending"
    ):
        wf.remove_task("search")
    decide(wf, wf.complete_task("search", "done"))
    with pytest.raises(DomainRuleViolation, match="the task is completed; it must be pending"):
        wf.remove_task("search")


def test_cannot_remove_a_task_others_depend_on():
    wf = created(spec("search"), spec("extract", "search"), spec("screen", "search"))
    with pytest.raises(DomainRuleViolation, match="Cannot remove 'Search': 'Extract', 'Screen' depend on it"):
        wf.remove_task("search")

    decide(wf, wf.remove_task("extract"))
    decide(wf, wf.remove_task("screen"))
    decide(wf, wf.remove_task("search"))
    assert wf.tasks == {}


@pytest.mark.parametrize(
    "decision", ["remove_task", "start_task", "complete_task", "fail_task", "retry_task"]
)
def test_a_task_that_is_not_in_the_workflow_is_refused(decision):
    wf = running()
    with pytest.raises(DomainRuleViolation, match="Task search is not part of this workflow"):
        every_decision(wf)[decision]()


def test_deciding_never_changes_the_aggregate():
    wf = running(spec("search"), spec("review", "search"))
    before = copy.deepcopy(wf)
    for decision in every_decision(wf).values():
        try:
            decision()
        except DomainRuleViolation:
            pass
        assert wf == before


# ---------------------------------------------------------------- command fields (CommandFactory)

factory = CommandFactory(actor=OWNER, role="researcher")


def create_command(**overrides):
    fields = {
        "title": "Sleep and memory",
        "research_question": "Does sleep help recall?",
        "methodology": "systematic_review",
    }
    fields.update(overrides)
    return factory.create_research_workflow(**fields)


def problems_of(**overrides) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        create_command(**overrides)
    assert not isinstance(caught.value, DomainRuleViolation)
    return caught.value.problems


def test_title_must_be_1_to_200_characters():
    assert create_command(title="x").title == "x"
    assert create_command(title="x" * 200).title == "x" * 200
    assert problems_of(title="x" * 201) == ["title: String should have at most 200 characters"]
    assert problems_of(title="") == ["title: must not be blank"]


def test_a_10_kb_title_is_refused_with_a_message_that_mentions_200():
    with pytest.raises(ValidationError, match="200") as caught:
        create_command(title="x" * 10_240)
    assert len(caught.value.problems) == 1
    assert "200" in caught.value.user_message
    assert len(caught.value.user_message) < 300


def test_research_question_must_be_1_to_2000_characters():
    assert create_command(research_question="?").research_question == "?"
    assert create_command(research_question="q" * 2000).research_question == "q" * 2000
    assert problems_of(research_question="q" * 2001) == [
        "research question: String should have at most 2000 characters"
    ]


@pytest.mark.parametrize("methodology", METHODOLOGIES)
def test_each_of_the_six_methodologies_is_accepted(methodology):
    assert create_command(methodology=methodology).methodology == methodology


def test_methodology_outside_the_six_is_refused_with_the_choices():
    assert set(METHODOLOGIES) == {
        "systematic_review",
        "meta_analysis",
        "exploratory",
        "comparative_analysis",
        "experimental",
        "case_study",
    }
    [problem] = problems_of(methodology="vibes")
    assert problem.startswith("methodology:")
    assert "case_study" in problem


@pytest.mark.parametrize("priority", PRIORITIES)
def test_each_priority_is_accepted(priority):
    assert create_command(priority=priority).priority == priority


def test_priority_outside_low_normal_high_urgent_is_refused():
    assert set(PRIORITIES) == {"low", "normal", "high", "urgent"}
    [problem] = problems_of(priority="asap")
    assert problem.startswith("priority:") and "urgent" in problem


def test_priority_defaults_to_normal():
    assert create_command().priority == "normal"


def test_at_most_10_tags():
    ten = [f"tag{i}" for i in range(10)]
    assert create_command(tags=ten).tags == ten
    assert problems_of(tags=[*ten, "one-too-many"]) == ["tags: at most 10 tags"]


def test_each_tag_is_at_most_40_characters():
    assert create_command(tags=["t" * 40]).tags == ["t" * 40]
    assert problems_of(tags=["t" * 41]) == ["tags: each tag must be at most 40 characters"]


def test_tags_are_stripped_and_deduplicated_keeping_their_order():
    assert create_command(tags=[" sleep ", "memory", "sleep", "memory "]).tags == ["sleep", "memory"]
    # Twelve tags with only three distinct values are three tags, within the limit.
    assert create_command(tags=["a", "b", "c"] * 4).tags == ["a", "b", "c"]


@pytest.mark.parametrize("blank", ["", " ", "   ", "\t\n", "\u3000"])
@pytest.mark.parametrize("field_name", ["title", "research_question", "tags"])
def test_blank_or_whitespace_only_text_is_refused(field_name, blank):
    value = [blank] if field_name == "tags" else blank
    assert problems_of(**{field_name: value}) == [f"{field_name.replace('_', ' ')}: must not be blank"]


@pytest.mark.parametrize("field_name", ["title", "research_question", "tags"])
def test_nul_character_is_refused(field_name):
    value = ["a\x00b"] if field_name == "tags" else "before\x00after"
    assert problems_of(**{field_name: value}) == [
        f"{field_name.replace('_', ' ')}: must not contain NUL characters"
    ]


def test_surrounding_whitespace_is_stripped():
    cmd = create_command(title="  Sleep and memory \n", research_question="\tDoes sleep help recall? ")
    assert (cmd.title, cmd.research_question) == ("Sleep and memory", "Does sleep help recall?")


def test_every_field_problem_is_listed_at_once():
    problems = problems_of(
        title=" ", research_question="q" * 2001, methodology="vibes", tags=["t" * 41], priority="asap"
    )
    assert [p.split(":")[0] for p in problems] == [
        "title",
        "research question",
        "methodology",
        "tags",
        "priority",
    ]


def test_text_fields_of_task_and_closing_commands_refuse_blank_text():
    wid, tid = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(ValidationError, match="result summary: must not be blank"):
        factory.complete_task(workflow_id=wid, task_id=tid, result_summary="  ")
    with pytest.raises(ValidationError, match="error: must not be blank"):
        factory.fail_task(workflow_id=wid, task_id=tid, error="")
    with pytest.raises(ValidationError, match="reason: must not be blank"):
        factory.cancel_workflow(workflow_id=wid, reason="\n")
    with pytest.raises(ValidationError, match="name: must not be blank"):
        factory.add_task(workflow_id=wid, name=" ", assignee="agent-1")


def test_a_task_kind_outside_the_six_kinds_is_refused():
    with pytest.raises(ValidationError, match="kind"):
        factory.add_task(workflow_id=uuid.uuid4(), name="Search", kind="magic", assignee="agent-1")


def _accepted_verbatim_or_refused(build, read, raw: str) -> None:
    try:
        cmd = build(raw)
    except ValidationError as refused:
        assert refused.problems, "a refusal lists its problems"
        return
    assert read(cmd) == raw.strip()


TEXT_FIELDS = {
    "title": (lambda s: create_command(title=s), lambda c: c.title),
    "research_question": (lambda s: create_command(research_question=s), lambda c: c.research_question),
    "tag": (lambda s: create_command(tags=[s]), lambda c: c.tags[0]),
    "task_name": (
        lambda s: create_command(tasks=[{"name": s, "assignee": "agent-1"}]),
        lambda c: c.tasks[0].name,
    ),
    "assignee": (
        lambda s: create_command(tasks=[{"name": "n", "assignee": s}]),
        lambda c: c.tasks[0].assignee,
    ),
    "cancel_reason": (
        lambda s: factory.cancel_workflow(workflow_id=uuid.uuid4(), reason=s),
        lambda c: c.reason,
    ),
    "task_error": (
        lambda s: factory.fail_task(workflow_id=uuid.uuid4(), task_id=uuid.uuid4(), error=s),
        lambda c: c.error,
    ),
}
LIMITS = {
    "title": 200,
    "research_question": 2000,
    "tag": 40,
    "task_name": 200,
    "assignee": 100,
    "cancel_reason": 500,
    "task_error": 5000,
}


@pytest.mark.parametrize("field_name", list(TEXT_FIELDS))
@pytest.mark.parametrize("raw", HOSTILE_INPUTS, ids=[f"hostile{i}" for i in range(len(HOSTILE_INPUTS))])
def test_hostile_input_is_accepted_verbatim_or_refused_with_a_validation_error(field_name, raw):
    build, read = TEXT_FIELDS[field_name]
    _accepted_verbatim_or_refused(build, read, raw)

    ordinary = raw.strip() and "\x00" not in raw and len(raw) <= LIMITS[field_name]
    if ordinary:  # injection-looking text is just text: it must not be refused
        assert read(build(raw)) == raw.strip()


@given(st.text(max_size=300))
def test_any_title_is_accepted_stripped_or_refused_with_a_validation_error(raw):
    _accepted_verbatim_or_refused(*TEXT_FIELDS["title"], raw)


@given(st.lists(st.text(max_size=50), max_size=15))
def test_any_tag_list_is_accepted_within_limits_or_refused_with_a_validation_error(raw):
    try:
        tags = create_command(tags=raw).tags
    except ValidationError:
        return
    assert tags == list(dict.fromkeys(t.strip() for t in raw))
    assert len(tags) <= 10 and all(0 < len(t) <= 40 for t in tags)
