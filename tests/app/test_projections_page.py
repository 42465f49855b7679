"""The Projections page: the grid, the lag chart, pause / resume / rebuild, parked events, the
statistics views, and a researcher who may only watch. Projections do not run inside the app
here (CQRS_PROJECTIONS_IN=none); the tests drive them through their own service."""

import colorsys
import json
import re

import operator_pages
import pytest
from operator_pages import app_and_service, table
from sqlalchemy import text
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from cqrs_core.app import live, ui
from cqrs_core.app.auth import User
from cqrs_core.app.demo import inject_poison_event
from cqrs_core.infra.errors import AuthorizationError
from cqrs_core.projections import PROJECTION_NAMES, ProjectionManager
from cqrs_core.read.tables import MATERIALIZED_VIEWS
from cqrs_core.write.commands import CommandFactory

PAGE = "pages/projections.py"


@pytest.fixture
def service(db_url, monkeypatch):
    yield from app_and_service(db_url, db_url, monkeypatch)


def create_workflows(service, n: int) -> None:
    factory = CommandFactory(actor="alice", role="researcher")
    for i in range(n):
        service.execute_command(
            factory.create_research_workflow(
                title=f"Study {i}",
                research_question="Does it work?",
                methodology="exploratory",
                tasks=[{"name": "Search", "assignee": "bob", "kind": "literature_search"}],
            )
        )


def open_page(user: User | None = None) -> AppTest:
    return operator_pages.open_page(PAGE, user, timeout=30)


def grid(at: AppTest):
    return table(at, "Lag (events)").set_index("Projection")


def plain(markdown: str) -> str:
    """Text as a person reads it (the page escapes markdown in messages)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def badges(at: AppTest, projection: str) -> list[str]:
    """The badges drawn in `projection`'s card (st.badge is markdown `:color-badge[icon label]`)."""
    values = [m.value for m in at.markdown]
    start = values.index(f"**{projection}**")
    return [v for v in values[start : start + 3] if "-badge[" in v]


def test_grid_shows_position_head_and_lag_of_each_projection(service):
    create_workflows(service, 3)
    service.projections.run_once("workflow_summary")
    service.projections.sample_lag()
    service.projections.sample_lag()

    at = open_page()

    rows = grid(at)
    head = service.event_store.head()
    assert set(rows.index) == set(PROJECTION_NAMES)
    assert rows.loc["workflow_summary", "Position"] == head
    assert rows.loc["workflow_summary", "Lag (events)"] == 0
    assert rows.loc["workflow_summary", "State"] in {"running", "stopped"}  # stopped once its heartbeat ages
    assert (rows["Head"] == head).all()
    assert rows.loc["task_summary", "Position"] == 0
    assert rows.loc["task_summary", "Lag (events)"] == head
    assert rows.loc["task_summary", "Lag (s)"] >= 0
    assert {m.label: m.value for m in at.metric}["Head position"] == f"{head:,}"
    # the lag chart is drawn from the samples, per projection, as a Vega-Lite chart: its spec holds
    # no data (the same spec on every refresh keeps the chart's view; the data is swapped in place)
    (chart,) = at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    assert spec["title"] == "Lag (events) per projection, last 15 minutes"
    assert "data" not in spec and "datasets" not in spec
    samples = convert_arrow_bytes_to_pandas_df(chart.proto.data.data)
    assert set(samples["projection"]) == set(PROJECTION_NAMES)
    assert len(samples) == 2 * len(PROJECTION_NAMES)  # two lag samples of each projection
    assert not at.get("plotly_chart")  # no WebGL context, no remount per refresh
    assert any(f"{2 * len(PROJECTION_NAMES)} samples" in c.value for c in at.caption)


def test_pause_then_resume_shows_the_new_state(service):
    create_workflows(service, 1)
    at = open_page()

    at.button(key="projections.pause.task_summary").click().run()

    assert grid(at).loc["task_summary", "State"] == "paused"
    assert "Paused task_summary." in [t.value for t in at.toast]
    assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "paused"
    assert at.button(key="projections.pause.task_summary").disabled

    at.button(key="projections.resume.task_summary").click().run()

    assert grid(at).loc["task_summary", "State"] != "paused"
    assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "running"


def test_rebuild_shows_progress_with_eta_and_completes(service):
    create_workflows(service, 8)
    service.projections.catch_up(timeout=10)
    at = open_page()

    at.button(key="projections.rebuild.task_summary").click().run()
    assert "Rebuild requested; waiting for a projection runner to start it." in progress_texts(at)
    assert "rebuild requested]" in badges(at, "task_summary")[0]  # not "running"
    assert at.button(key="projections.rebuild.task_summary").disabled

    # A runner picks the request up; small batches so the page can be looked at half-way.
    seen: list[str] = []
    at_the_end: list[str] = []
    states: list[tuple[str, list[str]]] = []

    def look(done: int, total: int) -> None:
        if 0 < done < total and not seen:
            at.run()
            seen.extend(progress_texts(at))
            states.append((grid(at).loc["task_summary", "State"], badges(at, "task_summary")))
        elif done == total and not at_the_end:
            at.run()  # every event counted is replayed; the swap is still to come
            at_the_end.extend(progress_texts(at))

    runner = ProjectionManager(service.engine, service.settings, rebuild_batch_size=4)
    try:
        runner.rebuild("task_summary", progress=look)
    finally:
        runner.close()
    assert any(t.startswith("Rebuilding: ") and " of 16 events" in t and "ETA" in t for t in seen), seen
    assert [(state, [b.split("]")[0].rsplit(" ", 1)[-1] for b in shown]) for state, shown in states] == [
        ("rebuilding", ["rebuilding"])
    ], states
    # Not "16 of 16 events · ETA 0 s", frozen while the rebuild applies what came since and swaps.
    assert [t for t in at_the_end if t.startswith("Rebuilding: ")], at_the_end
    assert not [t for t in at_the_end if "ETA 0 s" in t], at_the_end
    assert any("all 16 events replayed" in t and "swapping the tables in" in t for t in at_the_end), (
        at_the_end
    )

    at.run()
    assert progress_texts(at) == []
    assert grid(at).loc["task_summary", "State"] != "rebuilding"
    assert not at.button(key="projections.rebuild.task_summary").disabled


def test_parked_poison_event_is_listed_retried_and_discarded(service):
    create_workflows(service, 1)
    poison = inject_poison_event(service.event_store, actor="ops", role="operator")
    service.projections.catch_up(timeout=20)

    at = open_page()

    parked = table(at, "Attempts")
    assert set(parked["Position"]) == {poison.position}
    # Not yet resolved: an empty date (a missing value, which the table draws as ui.MISSING), not the text "None".
    assert str(parked["Resolved at"].dtype).startswith("datetime64") and parked["Resolved at"].isna().all()
    assert "task_summary" in set(parked["Projection"])
    assert grid(at).loc["workflow_summary", "State"] == "faulted"  # its policy stops at the poison
    ids = dict(zip(parked["Projection"], parked["Id"], strict=True))

    at.multiselect(key="parked.chosen").set_value([ids["task_summary"]]).run()
    at.button(key="parked.retry").click().run()
    assert [plain(w.value) for w in at.warning if "failed again" in w.value] == [
        "1 event failed again and stays parked (the Error column says why); discard it if it can never apply."
    ]
    assert table(at, "Attempts").set_index("Id").loc[ids["task_summary"], "Attempts"] > 3

    at.multiselect(key="parked.chosen").set_value(list(ids.values())).run()
    at.button(key="parked.discard").click().run()

    assert f"{len(ids)} parked events discarded." in [t.value for t in at.toast]
    assert any("No parked events" in i.value for i in at.info)
    assert service.projections.parked() == []
    assert grid(at).loc["workflow_summary", "State"] != "faulted"


def test_views_freshness_is_listed_and_refreshed_on_request(service):
    at = open_page()
    views = table(at, "View")
    assert list(views["View"]) == list(MATERIALIZED_VIEWS)

    at.button(key="views.refresh").click().run()

    assert "Statistics views refreshed." in [t.value for t in at.toast]
    assert table(at, "View")["Last refreshed"].notna().all()


def test_researcher_may_watch_but_is_refused_operator_actions(service):
    create_workflows(service, 1)
    at = open_page(User("rita", "researcher"))

    assert any("need the operator role" in i.value for i in at.info)
    for action in ("pause", "resume", "rebuild"):
        assert at.button(key=f"projections.{action}.task_summary").disabled
    assert at.button(key="views.refresh").disabled
    assert grid(at).loc["task_summary", "Head"] == service.event_store.head()  # watching works

    # The core refuses too, whatever the page offers.
    pause = CommandFactory(actor="rita", role="researcher").pause_projection(projection="task_summary")
    with pytest.raises(AuthorizationError) as refused:
        service.execute_command(pause)
    assert refused.value.user_message == "A researcher cannot pause projection; it needs the operator role."
    assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "running"


def test_a_refused_action_says_why_in_one_sentence_and_changes_nothing(service):
    at = open_page(User("otto", "operator"))
    at.session_state["user"] = User("otto", "researcher")  # the role was taken away while the page was open

    at.button(key="projections.pause.task_summary").click().run()

    assert [plain(e.value) for e in at.error] == [
        "A researcher cannot pause projection; it needs the operator role."
    ]
    assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "running"
    assert at.button(key="projections.pause.task_summary").disabled  # and the page now offers only watching


def test_lag_chart_draws_projections_in_calm_colours_not_red(service):
    create_workflows(service, 1)
    service.projections.sample_lag()
    at = open_page()

    (chart,) = at.get("vega_lite_chart")
    colours = json.loads(chart.proto.spec)["encoding"]["color"]["scale"]["range"]
    assert len(colours) >= 3  # every projection gets one of these, none the default palette's red

    def hue(colour: str) -> float:
        r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
        return colorsys.rgb_to_hsv(r, g, b)[0] * 360

    assert [c for c in colours if hue(c) < 30 or hue(c) > 330] == []


def test_grid_key_columns_fit_a_1024_px_screen_and_come_first(service):
    at = open_page()

    frame = next(f for f in at.dataframe if "Lag (events)" in f.value.columns)
    config = json.loads(frame.proto.columns)
    order = list(frame.proto.column_order)
    key = ["Projection", "State", "Lag (events)", "Lag (s)", "Parked", "Runner"]
    assert order[: len(key)] == key
    assert ui.key_columns_width(config, key) <= ui.KEY_COLUMNS_WIDTH_BUDGET


def add_lag_samples(service, projection: str, lags: list[int], rate: float) -> None:
    """Lag samples of `projection` 10 s apart, the newest 5 s ago, as the runner's sampler writes them."""
    with service.engine.begin() as conn:
        for i, lag in enumerate(lags):
            conn.execute(
                text(
                    "INSERT INTO lag_samples (projection, sampled_at, position, head, lag_events, "
                    "lag_seconds, events_per_second, events_applied) VALUES (:p, clock_timestamp() "
                    "- make_interval(secs => :ago), 0, :lag, :lag, 1.0, :rate, 0)"
                ),
                {"p": projection, "ago": 5 + 10 * (len(lags) - 1 - i), "lag": lag, "rate": rate},
            )


def trend_lines(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if "trending" in c.value or "more_horiz" in c.value]


def test_each_projection_shows_its_lag_trend_and_when_it_will_catch_up(service):
    create_workflows(service, 2)
    lag = service.event_store.head()  # nothing applied yet: every projection is this far behind
    add_lag_samples(service, "workflow_summary", [lag + 300, lag + 200, lag + 100], rate=25.0)
    add_lag_samples(service, "task_summary", [lag - 20, lag - 10, lag], rate=3.0)

    at = open_page()

    lines = trend_lines(at)
    # Falling 10 events a second, from `lag` now.
    eta = live.duration(lag / 10)
    falling = f":material/trending_down: lag falling · catching up in ~{eta} at 25 events/s"
    assert lines == [
        falling,
        ":material/trending_up: not catching up: lag rising (3 events/s applied)",
        ":material/more_horiz: trend: not enough lag samples yet",  # workflow_activity
        ":material/more_horiz: trend: not enough lag samples yet",  # alert_summary
    ]


def metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_verification_card_before_any_pass_says_so(service):
    at = open_page()
    assert metric_values(at)["Last pass"] == "not yet"
    assert any("No round started yet." in c.value for c in at.caption)
    assert not [f for f in at.dataframe if "Differences" in f.value.columns]


def test_verification_card_shows_the_round_and_open_findings_with_hostile_text_as_text(
    service, hostile_inputs
):
    hostile = [h for h in hostile_inputs if h.strip() and "\x00" not in h and len(h) <= 60][:8]
    create_workflows(service, len(hostile) + 2)
    service.projections.catch_up(timeout=30)
    with service.engine.begin() as conn:
        ids = (
            conn.execute(text("SELECT workflow_id FROM workflow_summary ORDER BY workflow_id"))
            .scalars()
            .all()
        )
        for wid, value in zip(ids, hostile, strict=False):  # hand edits behind the projection's back
            conn.execute(
                text("UPDATE workflow_summary SET title = :t WHERE workflow_id = :w"), {"t": value, "w": wid}
            )
    report = service.projections.verify_sample()
    assert report is not None and report.round_done

    at = open_page()
    metrics = metric_values(at)
    assert metrics["Open findings"] == str(len(hostile))
    assert (metrics["This round"], metrics["Rounds completed"]) == ("0%", "1")  # a new round has begun
    assert metrics["Last pass"].endswith(" s ago")
    findings = table(at, "Differences")
    assert set(findings["Projection"]) == {"workflow_summary"} and set(findings["Columns"]) == {"title"}
    assert set(findings["Stream"]) == {f"workflow-{w}" for w in ids[: len(hostile)]}
    for value in hostile:  # shown verbatim, as a table cell
        assert any(f"found {value!r}" in cell for cell in findings["Differences"]), value
    rendered = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not [v for v in hostile if any(v in r for r in rendered) and any(c in v for c in "*[<`_#")]
    assert any(f"last pass: {len(ids)} streams checked" in c.value.lower() for c in at.caption)

    with service.engine.begin() as conn:  # a failed pass leaves its one line behind
        conn.execute(text("UPDATE verification_progress SET last_pass_error = :e"), {"e": "**boom** [x](y)"})
    at.run()
    assert [e.value for e in at.error if "last pass failed" in e.value] == [
        f"The last pass failed: {ui.md_escape('**boom** [x](y)')}"
    ]

    service.projections.rebuild("workflow_summary")
    service.projections.verify_sample()  # the open findings' streams are rechecked at once
    at.button(key="verification.refresh").click().run()
    assert metric_values(at)["Open findings"] == "0"
    assert any("No open drift findings" in s.value for s in at.success)


@pytest.fixture
def split_service(db_url, monkeypatch):
    monkeypatch.setenv("CQRS_PROJECTION_PARTITIONS", "2")
    yield from app_and_service(db_url, db_url, monkeypatch)


def test_partitions_table_shows_which_worker_holds_which_partition(split_service):
    from waiting import wait_until

    from cqrs_core.infra.config import load_settings

    create_workflows(split_service, 4)
    settings = load_settings()
    workers = [ProjectionManager(split_service.engine, settings, owner=o) for o in ("worker-a", "worker-b")]
    try:

        def shared() -> bool:
            for w in workers:
                w.run_once()
            return all(len(w.held()) == len(PROJECTION_NAMES) for w in workers)

        wait_until(shared, 15, "the two workers to hold one partition of each projection")
        workers[0].catch_up(timeout=20)
        for w in workers:  # a heartbeat names each partition's holder
            w.runner._heartbeat(sorted(w.held()), force=True)

        at = open_page()
        parts = table(at, "Held by")
        assert len(parts) == 2 * len(PROJECTION_NAMES)
        assert set(parts["Projection"]) == set(PROJECTION_NAMES)
        assert set(parts["Partition"]) == {"1 of 2", "2 of 2"}
        for name in PROJECTION_NAMES:
            assert set(parts[parts["Projection"] == name]["Held by"]) == {"worker-a", "worker-b"}
        assert grid(at).loc["workflow_summary", "Runner"] == "2 worker(s), 2 of 2 partitions held"
        assert not at.exception
    finally:
        for w in workers:
            w.close()
