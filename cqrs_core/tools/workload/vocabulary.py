"""The words a generated workflow is made of: who does the work (researchers, agents), what is
studied (`ResearchField`s and their interventions, outcomes, populations, settings, tags), the
title, question, task-name and result templates, and the weights of methodology, priority,
task count and lifecycle outcome. Data only: `plans.WorkloadGenerator` draws from it.
Every table keyed by a domain word covers exactly the words of `cqrs_core.domain.vocabulary`
(tests/unit/test_vocabulary.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from cqrs_core.domain.vocabulary import TASK_KINDS

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
