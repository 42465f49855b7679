"""Demo data and load: realistic research workflows, run through the command bus.

`WorkloadGenerator` turns a seed into *plans*: a workflow (title, question, tags, a DAG of 3–12
tasks with assignees) and the ordered commands of one lifecycle — completed, completed after
failed-and-retried tasks, failed, cancelled, or left running / paused / in draft. Everything
random comes from one `random.Random(seed)`, command ids included, so a seed always yields the
same commands; running the same seed twice therefore changes nothing (the bus de-duplicates by
`command_id`), and an interrupted seed is finished by running it again.

`seed()` executes plans on a thread pool: different workflows in parallel, the commands of one
workflow in order (each is one stream). `run_steady_load()` sends commands at a fixed rate from a
token schedule. `reset()` empties the event log, the command log and every read model.
Nothing here writes a read model: the projections do, from the events the commands cause.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2.errors
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from cqrs_core.domain.vocabulary import TASK_KINDS
from cqrs_core.infra.db import translate_db_errors
from cqrs_core.infra.errors import CQRSError, InfrastructureError
from cqrs_core.infra.metrics import percentile
from cqrs_core.write.commands import Command, CommandFactory, WorkflowCommand

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- vocabulary

RESEARCHERS: tuple[str, ...] = (
    "a.okafor",
    "m.chen",
    "s.patel",
    "j.garcia",
    "l.nguyen",
    "k.ivanova",
    "r.haddad",
    "e.larsen",
    "t.yamamoto",
    "d.mensah",
    "f.rossi",
    "h.kowalski",
    "n.silva",
    "p.obrien",
    "g.dubois",
    "y.kim",
)
AGENTS: tuple[str, ...] = (
    "lit-bot",
    "scraper-bot",
    "etl-bot",
    "stats-agent",
    "summariser-agent",
    "review-agent",
)


@dataclass(frozen=True)
class ResearchField:
    """A research field: what is studied, on whom, measured how; and the tags it brings."""

    interventions: tuple[str, ...]
    outcomes: tuple[str, ...]
    populations: tuple[str, ...]
    settings: tuple[str, ...]
    tags: tuple[str, ...]


FIELDS: tuple[ResearchField, ...] = (
    ResearchField(
        interventions=(
            "mindfulness-based therapy",
            "remote patient monitoring",
            "telehealth consultations",
            "community health workers",
            "digital cognitive behavioural therapy",
            "exercise prescription",
            "low-dose aspirin",
            "peer support groups",
        ),
        outcomes=(
            "anxiety symptoms",
            "hospital readmissions",
            "medication adherence",
            "sleep quality",
            "blood pressure control",
            "quality of life",
            "emergency visits",
        ),
        populations=(
            "adolescents",
            "older adults",
            "patients with type 2 diabetes",
            "rural clinics",
            "post-operative patients",
            "night-shift nurses",
            "first-time mothers",
        ),
        settings=("a regional hospital network", "primary care practices", "a university clinic"),
        tags=("health", "clinical", "mental-health", "public-health", "cardiology", "digital-health"),
    ),
    ResearchField(
        interventions=(
            "LLM tutoring",
            "flipped classrooms",
            "school meal programmes",
            "peer instruction",
            "formative feedback",
            "reduced class sizes",
            "coding bootcamps",
        ),
        outcomes=(
            "reading comprehension",
            "maths attainment",
            "course completion",
            "student engagement",
            "dropout rates",
            "teacher workload",
        ),
        populations=(
            "undergraduate students",
            "primary school pupils",
            "adult learners",
            "first-generation students",
            "secondary schools",
        ),
        settings=("an online university", "a state school district", "community colleges"),
        tags=("education", "edtech", "learning-analytics", "equity"),
    ),
    ResearchField(
        interventions=(
            "microfinance",
            "cash transfers",
            "minimum wage increases",
            "remote work policies",
            "carbon pricing",
            "four-day work weeks",
            "open banking",
        ),
        outcomes=(
            "household income",
            "employment",
            "firm productivity",
            "small-business survival",
            "consumer prices",
            "worker retention",
        ),
        populations=(
            "smallholder farmers",
            "small firms",
            "gig workers",
            "urban households",
            "manufacturing firms",
        ),
        settings=("East African cooperatives", "a European labour market", "Latin American fintechs"),
        tags=("economics", "labour", "policy", "development", "finance"),
    ),
    ResearchField(
        interventions=(
            "electric bus fleets",
            "rooftop solar subsidies",
            "heat pump retrofits",
            "congestion charging",
            "urban tree planting",
            "grid-scale batteries",
        ),
        outcomes=(
            "CO2 emissions",
            "air quality",
            "energy bills",
            "peak electricity demand",
            "urban heat",
            "commuting times",
        ),
        populations=("mid-sized cities", "social housing tenants", "coastal towns", "industrial regions"),
        settings=("a Nordic municipality", "a megacity transit authority", "island grids"),
        tags=("climate", "energy", "sustainability", "transport", "urban"),
    ),
    ResearchField(
        interventions=(
            "code review bots",
            "large language models",
            "static analysis",
            "pair programming",
            "automated test generation",
            "federated learning",
            "differential privacy",
        ),
        outcomes=(
            "defect rates",
            "developer productivity",
            "model accuracy",
            "re-identification risk",
            "time to merge",
            "energy use of training",
        ),
        populations=(
            "open-source projects",
            "enterprise developer teams",
            "hospital datasets",
            "mobile apps",
            "student programmers",
        ),
        settings=("a large monorepo", "a national statistics office", "a cloud provider"),
        tags=("ai", "software-engineering", "privacy", "machine-learning", "open-source"),
    ),
    ResearchField(
        interventions=(
            "social media moderation",
            "participatory budgeting",
            "community policing",
            "nudges in tax letters",
            "universal basic income pilots",
            "library outreach",
        ),
        outcomes=(
            "civic participation",
            "trust in institutions",
            "misinformation spread",
            "tax compliance",
            "loneliness",
            "volunteering",
        ),
        populations=("young voters", "migrant communities", "retirees", "online communities", "small towns"),
        settings=("a city council", "a national tax agency", "three public libraries"),
        tags=("social-science", "politics", "behavioural", "survey", "communities"),
    ),
)
EXTRA_TAGS: tuple[str, ...] = (
    "pilot",
    "replication",
    "preregistered",
    "open-data",
    "funded",
    "phd",
    "q3-review",
    "collaboration",
    "mixed-methods",
    "longitudinal",
)
COMPARATORS: tuple[str, ...] = (
    "usual care",
    "no intervention",
    "a waiting-list control",
    "the previous policy",
    "standard practice",
    "a matched comparison group",
)

TITLES: dict[str, tuple[str, ...]] = {
    "systematic_review": ("Systematic review of {i} for {o} in {p}", "{I} and {o}: a systematic review"),
    "meta_analysis": ("Meta-analysis: effect of {i} on {o}", "Pooled effect of {i} on {o} in {p}"),
    "exploratory": ("Exploring {o} among {p}", "What drives {o} in {p}?"),
    "comparative_analysis": ("{I} vs {c}: {o} in {p}", "Comparing {i} across {p}"),
    "experimental": ("Randomised trial of {i} on {o}", "Controlled experiment: {i} and {o} in {p}"),
    "case_study": ("Case study: {i} in {s}", "{I} at {s}: lessons on {o}"),
}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "systematic_review": (
        "What does the published evidence say about the effect of {i} on {o} among {p}, and how strong is it?",
        "Across studies published since {y}, does {i} improve {o} in {p} compared with {c}?",
    ),
    "meta_analysis": (
        "What is the pooled effect size of {i} on {o} across randomised studies of {p} since {y}?",
        "Is the effect of {i} on {o} moderated by study quality or by how {p} were recruited?",
    ),
    "exploratory": (
        "How do {p} experience {o}, and which factors are associated with it?",
        "Which patterns in {o} among {p} suggest hypotheses worth testing about {i}?",
    ),
    "comparative_analysis": (
        "Does {i} lead to better {o} than {c} among {p}?",
        "How do outcomes in {o} differ between {p} exposed to {i} and those under {c}?",
    ),
    "experimental": (
        "Does {i} causally change {o} among {p} compared with {c} over twelve weeks?",
        "What is the average treatment effect of {i} on {o} in a randomised sample of {p}?",
    ),
    "case_study": (
        "How was {i} introduced at {s}, and what happened to {o}?",
        "What can other organisations learn from {s} about {i} and {o}?",
    ),
}
METHODOLOGY_WEIGHTS: dict[str, int] = {
    "systematic_review": 22,
    "meta_analysis": 12,
    "exploratory": 20,
    "comparative_analysis": 18,
    "experimental": 16,
    "case_study": 12,
}
PRIORITY_WEIGHTS: dict[str, int] = {"low": 20, "normal": 55, "high": 20, "urgent": 5}

# Tasks come in stages; a task depends on tasks of earlier stages, so the DAG is built in order.
# The vocabulary lists the task kinds in the order the work is done; "other" is no stage.
STAGES: tuple[str, ...] = tuple(kind for kind in TASK_KINDS if kind != "other")
TASK_NAMES: dict[str, tuple[str, ...]] = {
    "literature_search": (
        "Search PubMed and Scopus",
        "Screen titles and abstracts",
        "Full-text screening",
        "Snowball citations",
        "Draft search protocol",
        "Grey literature search",
    ),
    "data_collection": (
        "Extract study data",
        "Run participant survey",
        "Scrape public records",
        "Collect interview transcripts",
        "Clean raw dataset",
        "Request data from registries",
    ),
    "analysis": (
        "Risk-of-bias assessment",
        "Fit mixed-effects model",
        "Sensitivity analysis",
        "Thematic coding",
        "Subgroup analysis",
        "Power calculation",
        "Robustness checks",
    ),
    "synthesis": (
        "Draft synthesis of findings",
        "Write results section",
        "Build evidence tables",
        "Prepare figures",
        "Summarise for policy brief",
    ),
    "review": ("Internal peer review", "Statistical review", "Ethics sign-off", "Co-author review"),
    "other": ("Register protocol on OSF", "Book reviewer meeting", "Archive data and code"),
}
TASK_AGENTS: dict[str, tuple[str, ...]] = {
    "literature_search": ("lit-bot",),
    "data_collection": ("scraper-bot", "etl-bot"),
    "analysis": ("stats-agent",),
    "synthesis": ("summariser-agent",),
    "review": ("review-agent",),
    "other": (),
}
ESTIMATES: dict[str, tuple[int, int]] = {
    "literature_search": (60, 600),
    "data_collection": (120, 2400),
    "analysis": (60, 900),
    "synthesis": (60, 480),
    "review": (30, 240),
    "other": (15, 120),
}
TASK_ERRORS: dict[str, tuple[str, ...]] = {
    "literature_search": ("Timed out fetching records from the Scopus API", "Search returned no records"),
    "data_collection": (
        "Dataset checksum mismatch after download",
        "Survey platform export failed",
        "Rate limited by the registry API",
    ),
    "analysis": (
        "Model did not converge",
        "Out of memory during bootstrap",
        "Missing covariate in 12% of rows",
    ),
    "synthesis": ("Reference manager sync conflict", "Figure rendering failed"),
    "review": ("Reviewer requested major changes", "Ethics board asked for a revised consent form"),
    "other": ("Service unavailable",),
}
RESULTS: dict[str, tuple[str, ...]] = {
    "literature_search": (
        "Identified {n} candidate records; {m} met the inclusion criteria.",
        "Screened {n} abstracts; {m} go to full-text review.",
    ),
    "data_collection": (
        "Collected {n} responses ({m}% complete).",
        "Extracted data from {m} studies into the sheet.",
    ),
    "analysis": ("Effect estimate 0.{m} (95% CI 0.{k}–0.{n}).", "Coded {n} excerpts into {m} themes."),
    "synthesis": ("Draft of {n} words shared with co-authors.", "{m} evidence tables and {k} figures ready."),
    "review": ("Approved with {m} minor comments.", "Signed off after {k} rounds of review."),
    "other": ("Done.",),
}
WORKFLOW_FAILURES: tuple[str, ...] = (
    "Data source withdrawn access",
    "Funding ended before the analysis",
    "Protocol deviation found in review",
    "Key task failed after all retries",
)
CANCEL_REASONS: tuple[str, ...] = (
    "Duplicate of an existing study",
    "Superseded by a larger trial",
    "Sponsor changed priorities",
    "Scope merged into another workflow",
    "Principal investigator left the team",
)
PAUSE_REASONS: tuple[str, ...] = (
    "Waiting for ethics approval",
    "Waiting for data access agreement",
    "Team on leave",
    "Blocked by an upstream dataset",
)

# Lifecycle mix: ≈55 % complete, ≈15 % fail tasks then retry and complete, ≈10 % fail, ≈10 % are
# cancelled, the rest stay open (running, paused or draft).
OUTCOME_WEIGHTS: dict[str, int] = {
    "completed": 55,
    "retried": 15,
    "failed": 10,
    "cancelled": 10,
    "running": 6,
    "paused": 2,
    "draft": 2,
}
OUTCOMES: tuple[str, ...] = tuple(OUTCOME_WEIGHTS)
# The status the workflow ends in for each outcome.
FINAL_STATUS: dict[str, str] = {
    "completed": "completed",
    "retried": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "running": "running",
    "paused": "paused",
    "draft": "draft",
}
# Task counts: 3–12, most workflows between 4 and 7.
TASK_COUNT_WEIGHTS: dict[int, int] = {3: 9, 4: 15, 5: 17, 6: 15, 7: 12, 8: 9, 9: 7, 10: 6, 11: 5, 12: 5}


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class WorkflowPlan:
    """One workflow and the commands of its lifecycle, to be executed in order."""

    workflow_id: uuid.UUID
    owner: str
    outcome: str  # a key of OUTCOME_WEIGHTS
    task_count: int
    commands: tuple[WorkflowCommand, ...]

    @property
    def final_status(self) -> str:
        return FINAL_STATUS[self.outcome]


@dataclass
class _Step:
    method: str
    at: datetime
    fields: dict[str, Any]


@dataclass
class _TaskDraft:
    task_id: uuid.UUID
    name: str
    kind: str
    assignee: str
    estimate_minutes: int
    depends_on: list[uuid.UUID]


class WorkloadGenerator:
    """Deterministic source of workflow plans.

    `backfill=True` stamps each command with a business time (`occurred_at`) so the workflows are
    spread over the `days` before `end`; `backfill=False` leaves it unset for live load, where
    the commit clock is the truth. `max_task_attempts` must match the server's setting: a task
    is retried only while it has attempts left, and a failed workflow's task uses them all."""

    def __init__(
        self,
        seed: int,
        *,
        days: float = 90.0,
        end: datetime | None = None,
        backfill: bool = True,
        max_task_attempts: int = 3,
    ) -> None:
        if days <= 0:
            raise ValueError("days must be positive")
        self.seed = seed
        self.rng = random.Random(seed)
        self.end = (end or datetime.now(UTC)).astimezone(UTC)
        self.start = self.end - timedelta(days=days)
        self.backfill = backfill
        self.max_task_attempts = max(1, max_task_attempts)

    # ------------------------------------------------------------ randomness

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _weighted(self, weights: dict[Any, int]) -> Any:
        return self.rng.choices(tuple(weights), weights=tuple(weights.values()))[0]

    def _minutes(self, low: float, high: float) -> timedelta:
        return timedelta(minutes=self.rng.uniform(low, high))

    # ------------------------------------------------------------ public

    def workflows(self, count: int) -> Iterator[WorkflowPlan]:
        for _ in range(count):
            yield self.workflow()

    def workflow(self) -> WorkflowPlan:
        rng = self.rng
        workflow_id = self._uuid()
        owner = rng.choice(RESEARCHERS)
        methodology = self._weighted(METHODOLOGY_WEIGHTS)
        topic = rng.choice(FIELDS)
        words = {
            "i": rng.choice(topic.interventions),
            "o": rng.choice(topic.outcomes),
            "p": rng.choice(topic.populations),
            "s": rng.choice(topic.settings),
            "c": rng.choice(COMPARATORS),
            "y": str(rng.randint(2005, 2021)),
        }
        words["I"] = words["i"][:1].upper() + words["i"][1:]
        title = rng.choice(TITLES[methodology]).format(**words)
        question = rng.choice(QUESTIONS[methodology]).format(**words)
        tags = rng.sample(topic.tags, k=rng.randint(1, 2))
        tags += rng.sample(EXTRA_TAGS, k=rng.choice((0, 0, 1, 1, 2)))
        priority = self._weighted(PRIORITY_WEIGHTS)

        created = self.start + (self.end - self.start) * rng.random()
        due: date | None = None
        if rng.random() < 0.6:
            due = (created + timedelta(days=rng.randint(14, 120))).date()
        tasks = self._tasks(self._weighted(TASK_COUNT_WEIGHTS))
        outcome = self._weighted(OUTCOME_WEIGHTS)

        steps = [
            _Step(
                "create_research_workflow",
                created,
                dict(
                    workflow_id=workflow_id,
                    title=title,
                    research_question=question,
                    methodology=methodology,
                    tags=tags,
                    priority=priority,
                    due_date=due,
                    tasks=[
                        dict(
                            task_id=t.task_id,
                            name=t.name,
                            kind=t.kind,
                            assignee=t.assignee,
                            estimate_minutes=t.estimate_minutes,
                            depends_on=t.depends_on,
                        )
                        for t in tasks
                    ],
                ),
            )
        ]
        steps += self._lifecycle(outcome, created, tasks)
        factory = CommandFactory(actor=owner, role="researcher")
        commands = tuple(self._materialize(factory, workflow_id, steps, created))
        return WorkflowPlan(workflow_id, owner, outcome, len(tasks), commands)

    # ------------------------------------------------------------ building blocks

    def _tasks(self, count: int) -> list[_TaskDraft]:
        rng = self.rng
        # Spread `count` tasks over the stages in order; every stage present gets at least one task.
        stages = list(STAGES) if count >= len(STAGES) else sorted(rng.sample(STAGES, count), key=STAGES.index)
        per_stage = dict.fromkeys(stages, 1)
        for _ in range(count - len(stages)):
            per_stage[rng.choice(stages[:-1] or stages)] += 1
        drafts: list[_TaskDraft] = []
        previous: list[_TaskDraft] = []
        used: Counter[str] = Counter()
        for stage in stages:
            current: list[_TaskDraft] = []
            kind = stage if rng.random() > 0.05 else "other"
            for _ in range(per_stage[stage]):
                name = rng.choice(TASK_NAMES[kind])
                used[name] += 1
                if used[name] > 1:
                    name = f"{name} (part {used[name]})"
                agents = TASK_AGENTS[kind]
                assignee = rng.choice(agents) if agents and rng.random() < 0.45 else rng.choice(RESEARCHERS)
                depends = (
                    rng.sample(previous, k=min(len(previous), rng.choice((1, 1, 1, 2)))) if previous else []
                )
                low, high = ESTIMATES[kind]
                draft = _TaskDraft(
                    self._uuid(),
                    name,
                    kind,
                    assignee,
                    round(rng.uniform(low, high) / 15) * 15 or 15,
                    [d.task_id for d in depends],
                )
                current.append(draft)
                drafts.append(draft)
            previous = current
        return drafts

    def _lifecycle(self, outcome: str, created: datetime, tasks: list[_TaskDraft]) -> list[_Step]:
        rng = self.rng
        steps: list[_Step] = []
        clock = created

        def step(method: str, after: timedelta, **fields: Any) -> None:
            nonlocal clock
            clock = clock + after
            steps.append(_Step(method, clock, fields))

        if outcome == "draft":
            return steps
        if outcome == "cancelled" and rng.random() < 0.3:
            step("cancel_workflow", timedelta(hours=rng.uniform(1, 72)), reason=rng.choice(CANCEL_REASONS))
            return steps
        step("start_workflow", timedelta(hours=rng.uniform(0.5, 48)))

        n = len(tasks)
        done_before_end = {
            "completed": n,
            "retried": n,
            "failed": rng.randrange(n),
            "cancelled": rng.randrange(n),
            "running": rng.randrange(n),
            "paused": rng.randrange(n),
        }[outcome]
        retried = (
            set(rng.sample(range(n), k=min(n, rng.choice((1, 1, 2))))) if outcome == "retried" else set()
        )
        pause_at = rng.randrange(n) if outcome == "completed" and rng.random() < 0.1 else None

        for index, task in enumerate(tasks[:done_before_end]):
            if index == pause_at:
                step("pause_workflow", self._minutes(10, 600), reason=rng.choice(PAUSE_REASONS))
                step("resume_workflow", timedelta(hours=rng.uniform(2, 96)))
            ids = dict(task_id=task.task_id)
            step("start_task", self._minutes(5, 240), **ids)
            if index in retried:
                for _ in range(
                    rng.randint(1, self.max_task_attempts - 1) if self.max_task_attempts > 1 else 0
                ):
                    step(
                        "fail_task",
                        self._work(task, 0.2, 0.8),
                        error=rng.choice(TASK_ERRORS[task.kind]),
                        **ids,
                    )
                    step("retry_task", self._minutes(15, 720), **ids)
            step("complete_task", self._work(task, 0.6, 1.6), result_summary=self._result(task.kind), **ids)

        if outcome in ("completed", "retried"):
            step("complete_workflow", self._minutes(5, 600))
        elif outcome == "failed":
            task = tasks[done_before_end]
            ids = dict(task_id=task.task_id)
            step("start_task", self._minutes(5, 240), **ids)
            for attempt in range(self.max_task_attempts):
                if attempt:
                    step("retry_task", self._minutes(15, 720), **ids)
                step("fail_task", self._work(task, 0.2, 0.9), error=rng.choice(TASK_ERRORS[task.kind]), **ids)
            step("fail_workflow", self._minutes(30, 1440), reason=rng.choice(WORKFLOW_FAILURES))
        elif outcome == "cancelled":
            if rng.random() < 0.5:
                step("start_task", self._minutes(5, 240), task_id=tasks[done_before_end].task_id)
            step("cancel_workflow", timedelta(hours=rng.uniform(1, 120)), reason=rng.choice(CANCEL_REASONS))
        elif outcome == "running":
            if rng.random() < 0.7:
                step("start_task", self._minutes(5, 240), task_id=tasks[done_before_end].task_id)
        elif outcome == "paused":
            step("pause_workflow", self._minutes(10, 600), reason=rng.choice(PAUSE_REASONS))
        return steps

    def _work(self, task: _TaskDraft, low: float, high: float) -> timedelta:
        return timedelta(minutes=task.estimate_minutes * self.rng.uniform(low, high))

    def _result(self, kind: str) -> str:
        rng = self.rng
        return rng.choice(RESULTS[kind]).format(
            n=rng.randint(40, 900), m=rng.randint(3, 39), k=rng.randint(1, 9)
        )

    def _materialize(
        self, factory: CommandFactory, workflow_id: uuid.UUID, steps: list[_Step], created: datetime
    ) -> Iterator[WorkflowCommand]:
        # A lifecycle that would run past `end` is compressed to end there: back-filled history
        # never lies in the future.
        last = steps[-1].at
        scale = 1.0
        if last > self.end and last > created:
            scale = max(0.0, (self.end - created) / (last - created))
        for s in steps:
            at = created + (s.at - created) * scale
            fields = dict(s.fields)
            if s.method != "create_research_workflow":
                fields["workflow_id"] = workflow_id
            stamp = dict(
                command_id=self._uuid(),
                correlation_id=self._uuid(),
                occurred_at=at if self.backfill else None,
            )
            yield getattr(factory, s.method)(**fields, **stamp)


# ---------------------------------------------------------------- executing plans


@dataclass
class SeedReport:
    """What a seed run did."""

    workflows: int = 0  # plans whose every command succeeded
    commands: int = 0
    duplicates: int = 0  # commands already executed by an earlier run of the same seed
    events: int = 0
    failed_workflows: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # "category: message" → count
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    threads: int = 1

    @property
    def commands_per_second(self) -> float:
        return self.commands / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """Thread-safe counters handed to a `progress(done, total, commands)` callback."""

    def __init__(self, total: int, callback: Callable[[int, int, int], None] | None) -> None:
        self.total, self.callback = total, callback
        self.lock = threading.Lock()
        self.report = SeedReport()

    def plan_done(
        self, plan: WorkflowPlan, commands: int, duplicates: int, events: int, error: CQRSError | None
    ) -> None:
        with self.lock:
            r = self.report
            r.commands += commands
            r.duplicates += duplicates
            r.events += events
            if error is None:
                r.workflows += 1
                r.outcomes[plan.outcome] += 1
            else:
                r.failed_workflows += 1
                r.errors[f"{error.category}: {error.user_message}"] += 1
            if self.callback is not None:  # under the lock: a progress bar is not thread-safe
                self.callback(r.workflows + r.failed_workflows, self.total, r.commands)


def execute_plan(service: Any, plan: WorkflowPlan) -> tuple[int, int, int, CQRSError | None]:
    """Run one plan's commands in order; stops at the first refused command.
    Returns (commands executed, duplicates, events appended, the error or None).
    Plans are made here, not typed by a person: they run as a trusted import, so their back-filled
    business times (`occurred_at` in the past) are accepted."""
    executed = duplicates = events = 0
    for command in plan.commands:
        try:
            result = service.execute_command(command, trusted_import=True)
        except CQRSError as exc:
            return executed, duplicates, events, exc
        executed += 1
        if result.duplicate:
            duplicates += 1
        else:
            events += len(result.events)
    return executed, duplicates, events, None


def run_plans(
    service: Any,
    plans: Iterable[WorkflowPlan],
    total: int,
    *,
    threads: int = 8,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = 1,
) -> SeedReport:
    """Execute plans on `threads` threads: a thread takes `batch` whole plans at a time.

    With `batch` > 1 a thread sends all their commands as one `execute_many` (one transaction,
    two statements); if that batch is refused, its plans are run again one command at a time, so
    a plan that cannot run stops at its first refused command and the others still land."""
    tracker = _Progress(total, progress)
    source = iter(plans)
    source_lock = threading.Lock()  # the generator is not thread-safe; plans come out in seed order
    stop = threading.Event()
    batch = max(1, batch)

    def next_plans() -> list[WorkflowPlan]:
        with source_lock:
            return [] if stop.is_set() else list(itertools.islice(source, batch))

    def work() -> None:
        while chunk := next_plans():
            if batch > 1 and _execute_batch(service, chunk, tracker):
                continue
            for plan in chunk:
                tracker.plan_done(plan, *execute_plan(service, plan))

    started = time.perf_counter()
    threads = max(1, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        _wait_all([pool.submit(work) for _ in range(threads)], stop)
    report = tracker.report
    report.seconds = time.perf_counter() - started
    report.threads = threads
    return report


def _execute_batch(service: Any, plans: list[WorkflowPlan], tracker: _Progress) -> bool:
    """All the plans' commands in one `execute_many`; False when the batch was refused (nothing
    of it was written)."""
    commands = [cmd for plan in plans for cmd in plan.commands]
    try:
        results = service.execute_many(commands, trusted_import=True)
    except CQRSError as exc:
        log.info(
            "a seed batch of %d workflows was refused (%s); running them one command at a time",
            len(plans),
            exc.user_message,
        )
        return False
    done = 0
    for plan in plans:
        mine = results[done : done + len(plan.commands)]
        done += len(plan.commands)
        duplicates = sum(r.duplicate for r in mine)
        events = sum(len(r.events) for r in mine if not r.duplicate)
        tracker.plan_done(plan, len(mine), duplicates, events, None)
    return True


def _wait_all(futures: list, stop: threading.Event) -> None:
    """Wait for the worker threads; on Ctrl-C tell them to stop, let them finish the workflow in
    hand (its commands stay in order), then let the interrupt through."""
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        for future in futures:
            future.result()
        raise


SEED_BATCH_WORKFLOWS = 50  # workflows per execute_many in a seed (about 700 commands, 1,000 events)


def seed(
    service: Any,
    workflows: int,
    *,
    seed: int,
    days: float = 90.0,
    threads: int = 2,
    end: datetime | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    batch: int = SEED_BATCH_WORKFLOWS,
) -> SeedReport:
    """Create `workflows` workflows with back-filled lifecycles over the last `days` days, `batch`
    workflows per transaction (1: every command on its own, as the forms send them).

    Build `service` with a high rate limit (`.with_rate_limit(1e9, 10**9)`): a seed sends
    thousands of commands a second as a handful of owners."""
    generator = WorkloadGenerator(
        seed, days=days, end=end, max_task_attempts=service.settings.max_task_attempts
    )
    return run_plans(
        service, generator.workflows(workflows), workflows, threads=threads, progress=progress, batch=batch
    )


# ---------------------------------------------------------------- steady load


@dataclass(frozen=True)
class LoadReport:
    """What a steady load achieved: rate, latency (ms) and how late commands started."""

    target_rate: float
    duration_seconds: float
    elapsed_seconds: float
    commands: int
    errors: dict[str, int]
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    late_p95_ms: float  # how far behind its slot a command started: > 0 means the system could not keep up
    dropped: int  # slots never sent: the system was too far behind when the time was up
    workflows_started: int
    threads: int


class _LoadSource:
    """Hands out the next command of an open workflow. Each thread keeps its own open workflows
    (so one workflow's commands never run concurrently) and asks here for new ones."""

    def __init__(self, generator: WorkloadGenerator) -> None:
        self.generator = generator
        self.lock = threading.Lock()
        self.started = 0

    def new_plan(self) -> Iterator[Command]:
        with self.lock:
            self.started += 1
            return iter(self.generator.workflow().commands)


def run_steady_load(
    service: Any,
    *,
    rate: float,
    duration: float,
    threads: int = 4,
    seed: int | None = None,
    open_per_thread: int = 8,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Send `rate` commands a second for `duration` seconds from a token schedule: command n is
    due at start + n / rate; a thread takes the next slot, waits for it, and sends the next
    command of one of its open workflows (interleaving them, as real users do). When the system
    is slower than the schedule, commands start late and the achieved rate says so; the load still
    ends on time (plus a short grace for the last late slots) and the slots left are `dropped`.
    Setting `stop` (or Ctrl-C) ends the load early; the report covers what was sent."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    generator = WorkloadGenerator(
        seed if seed is not None else random.SystemRandom().randrange(2**63),
        backfill=False,
        max_task_attempts=service.settings.max_task_attempts,
    )
    source = _LoadSource(generator)
    stop = stop or threading.Event()
    slots = iter(range(2**62))
    slot_lock = threading.Lock()
    total_slots = max(1, math.floor(rate * duration))
    latencies: list[float] = []
    lateness: list[float] = []
    errors: Counter[str] = Counter()
    results_lock = threading.Lock()
    started = time.perf_counter()
    cutoff = started + duration + min(1.0, 0.1 * duration)
    taken = [0]

    def work() -> None:
        open_plans: deque[Iterator[Command]] = deque()
        my_latency: list[float] = []
        my_late: list[float] = []
        my_errors: Counter[str] = Counter()
        while not stop.is_set():
            with slot_lock:
                n = next(slots)
                if n >= total_slots or time.perf_counter() > cutoff:
                    break
                taken[0] += 1
            due = started + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                if stop.wait(wait):
                    break
            while len(open_plans) < open_per_thread:
                open_plans.append(source.new_plan())
            plan = open_plans.popleft()
            command = next(plan, None)
            while command is None:  # that workflow's lifecycle is over (or had no commands left)
                plan = source.new_plan()
                command = next(plan, None)
            t0 = time.perf_counter()
            my_late.append(max(0.0, t0 - due) * 1000)
            try:
                service.execute_command(command)
                open_plans.append(plan)
            except CQRSError as exc:
                my_errors[exc.category] += 1  # drop that workflow: its next commands depend on this one
            my_latency.append((time.perf_counter() - t0) * 1000)
        with results_lock:
            latencies.extend(my_latency)
            lateness.extend(my_late)
            errors.update(my_errors)

    threads = max(1, threads)
    interrupted = False
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="load") as pool:
        try:
            _wait_all([pool.submit(work) for _ in range(threads)], stop)
        except KeyboardInterrupt:
            interrupted = True
    elapsed = time.perf_counter() - started
    ordered, late = sorted(latencies), sorted(lateness)
    done = len(ordered)
    return LoadReport(
        target_rate=rate,
        duration_seconds=duration,
        elapsed_seconds=elapsed,
        commands=done,
        errors=dict(errors),
        achieved_rate=done / (elapsed if interrupted or stop.is_set() else max(elapsed, duration))
        if done
        else 0.0,
        p50_ms=percentile(ordered, 0.5),
        p95_ms=percentile(ordered, 0.95),
        p99_ms=percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else 0.0,
        late_p95_ms=percentile(late, 0.95),
        dropped=0 if interrupted or stop.is_set() else total_slots - taken[0],
        workflows_started=source.started,
        threads=threads,
    )


# ---------------------------------------------------------------- reset


@dataclass(frozen=True)
class ResetReport:
    events: int
    commands: int
    tables: tuple[str, ...]


def reset(engine: Engine, *, actor: str = "cqrs-console", lock_timeout_seconds: float = 10.0) -> ResetReport:
    """Empty the event log, the command log and every read model, and put every projection back
    at the start of the log — in one transaction, so a failure leaves everything as it was.

    The work is done by `cqrs_reset_all` (migration 0005), a SECURITY DEFINER function only the
    runtime role may call: no session can empty `events` by itself. It records `actor`, the time
    and the counts in `reset_audit`, which a reset never empties. Deciding who may reset is the
    caller's part (cqrs_core.app.demo: admins only; the command line: whoever runs it locally)."""
    from cqrs_core.projections.registry import PROJECTIONS

    read_models = {spec.name for p in PROJECTIONS.values() for spec in p.tables}
    with translate_db_errors(), engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout_seconds * 1000))}")
        try:
            row = conn.execute(
                text(
                    "SELECT deleted_events, deleted_commands, emptied_tables FROM public.cqrs_reset_all(:actor)"
                ),
                {"actor": actor},
            ).one()
        except OperationalError as exc:
            if isinstance(exc.orig, psycopg2.errors.LockNotAvailable):
                raise InfrastructureError(
                    "Could not reset: another process keeps the tables busy; stop the app and workers, then retry."
                ) from exc
            raise
        if missing := read_models - set(row.emptied_tables):  # raising here rolls the reset back
            raise InfrastructureError(
                "Could not reset: the database does not know every read model yet; run `cqrs-console migrate`.",
                detail=", ".join(sorted(missing)),
            )
    return ResetReport(int(row.deleted_events), int(row.deleted_commands), tuple(row.emptied_tables))
