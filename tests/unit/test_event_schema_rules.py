"""Event schemas (issue 16, parts 1-3): upcaster chains, renames, validated decoding and the typed
errors for everything that cannot become a typed event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from cqrs_core.domain import events as ev
from cqrs_core.domain.schema import SchemaRegistry
from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError

V1_TASK_ADDED = {
    "task_id": "t-1",
    "name": "Search",
    "kind": "literature_search",
    "assignee": "bob",
    "estimate_minutes": 45,
    "depends_on": [],
}


def test_a_v1_task_added_is_upcast_to_a_structured_estimate_with_no_confidence():
    stored = dict(V1_TASK_ADDED)
    event = ev.event_from_payload("TaskAdded", stored, schema_version=1)
    assert isinstance(event, ev.TaskAdded)
    assert event.estimate == ev.TaskEstimate(45, None) and event.estimate_minutes == 45
    assert stored == V1_TASK_ADDED  # the stored payload is never changed
    none = ev.event_from_payload("TaskAdded", {**V1_TASK_ADDED, "estimate_minutes": None}, schema_version=1)
    assert none.estimate is None and none.estimate_minutes is None


def test_new_task_added_events_are_written_at_version_2_and_read_back_unchanged():
    event = ev.TaskAdded("t", "n", "analysis", "a", ev.TaskEstimate(30, "high"), ["d"])
    assert ev.TaskAdded.schema_version == 2
    payload = event.to_payload()
    assert payload["estimate"] == {"minutes": 30, "confidence": "high"} and "estimate_minutes" not in payload
    assert ev.event_from_payload("TaskAdded", payload, schema_version=2) == event


@pytest.mark.parametrize(
    "payload, problem",
    [
        ({**V1_TASK_ADDED, "estimate": {"minutes": "soon", "confidence": None}}, "estimate.minutes"),
        ({**V1_TASK_ADDED, "estimate": {"minutes": 5, "confidence": "certain"}}, "estimate.confidence"),
        ({"task_id": "t"}, "name: Field required"),
    ],
)
def test_a_current_payload_of_the_wrong_shape_is_a_corrupt_stream_naming_the_field(payload, problem):
    with pytest.raises(CorruptStreamError) as info:
        ev.event_from_payload("TaskAdded", payload, schema_version=2, stream_id="workflow-w", version=3)
    assert not isinstance(info.value, UnknownEventError)
    assert "TaskAdded event at version 3 of stream workflow-w" in info.value.user_message
    assert problem in info.value.context["problem"]


def test_a_wrong_type_inside_a_field_is_refused_where_the_old_decoder_accepted_it():
    with pytest.raises(CorruptStreamError, match="attempt"):
        ev.event_from_payload("TaskStarted", {"task_id": "t", "attempt": "twice"}, schema_version=1)


def test_a_v1_missing_the_field_its_upcaster_reads_is_a_corrupt_stream_not_a_key_error():
    payload = {k: v for k, v in V1_TASK_ADDED.items() if k != "estimate_minutes"}
    with pytest.raises(
        CorruptStreamError, match=r"upcaster TaskAdded v1 -> v2: the field 'estimate_minutes'"
    ):
        ev.event_from_payload("TaskAdded", payload, schema_version=1, stream_id="workflow-w", version=2)


def test_a_version_newer_than_the_code_is_a_corrupt_stream():
    with pytest.raises(CorruptStreamError, match="schema version 3, newer than this code knows") as info:
        ev.event_from_payload("TaskAdded", V1_TASK_ADDED, schema_version=3, stream_id="workflow-w", version=2)
    assert not isinstance(info.value, UnknownEventError)


def test_an_unknown_type_is_an_unknown_event_error():
    with pytest.raises(UnknownEventError, match="unknown type 'TaskArchived'"):
        ev.event_from_payload("TaskArchived", {}, schema_version=1, stream_id="workflow-w", version=2)


# ---------------------------------------------------------------- chains and renames on a registry of its own


@dataclass(frozen=True)
class Measured:
    schema_version: ClassVar[int] = 3
    value: int
    unit: str


def registry() -> SchemaRegistry:
    r = SchemaRegistry()
    r.register_event(Measured)

    @r.upcaster("Measured", 1)
    def v1_to_v2(p):
        return {"value": p.pop("amount")}

    @r.upcaster("Measured", 2)
    def v2_to_v3(p):
        return {**p, "unit": "mm"}

    @r.upcaster("Sized", 4, to_type="Measured", to_version=1)
    def renamed(p):
        return {"amount": p["size"]}

    return r


def test_a_chain_runs_every_step_in_order_and_a_rename_joins_it():
    r = registry()
    assert r.decode("Measured", {"amount": 7}, 1) == Measured(7, "mm")
    up = r.upcast("Sized", 4, {"size": 9})
    assert (up.event_type, up.schema_version, up.payload) == ("Measured", 3, {"value": 9, "unit": "mm"})
    assert [s.name for s in up.steps] == ["Sized v4 -> Measured v1", "Measured v1 -> v2", "Measured v2 -> v3"]
    assert r.stored_names("Measured") == {"Measured", "Sized"}


def test_a_missing_link_is_a_corrupt_stream_until_the_step_is_added():
    r = registry()
    step = r.remove_step("Measured", 2)
    with pytest.raises(CorruptStreamError, match=r"no upcaster takes Measured v2 further") as info:
        r.decode("Measured", {"amount": 7}, 1, stream_id="s", version=1)
    assert not isinstance(info.value, UnknownEventError)
    r.add_step(step)  # the cached chain is forgotten when the registry changes
    assert r.decode("Measured", {"amount": 7}, 1) == Measured(7, "mm")


def test_an_upcaster_that_returns_no_object_is_a_corrupt_stream():
    r = registry()
    r.upcaster("Measured", 0)(lambda p: ["not", "an", "object"])
    with pytest.raises(CorruptStreamError, match="did not return an object"):
        r.decode("Measured", {}, 0)


def test_every_domain_event_is_registered_at_its_declared_version():
    from cqrs_core.domain.schema import REGISTRY

    for name, cls in ev.EVENT_CLASSES.items():
        assert REGISTRY.current_version(name) == cls.schema_version
