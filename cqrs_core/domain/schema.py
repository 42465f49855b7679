"""Event schemas: each event type's current version, the upcasters that bring older stored
events up to it, and the validated decoding every reader of the log goes through.

A stored event is `(event_type, schema_version, payload)`. Its class (in `domain/events.py`)
declares the version this code writes (`schema_version`). An older stored version passes through
a chain of small pure functions, one per step (`v1 -> v2 -> v3`), each registered next to its
event class with `@upcaster("TaskAdded", 1)`. Renaming a type is a step too: `@upcaster("Old", 3,
to_type="New", to_version=1)` turns version 3 of `Old` into version 1 of `New`. The upcast payload
is then validated against the class (a pydantic `TypeAdapter` over the dataclass, compiled once per
class) and becomes the typed event. The log itself is never rewritten: events are upcast as they
are read, every time.

Everything that cannot become a typed event is a typed error: `UnknownEventError` for a type
nothing knows, `CorruptStreamError` for a version newer than the code, a missing step in a chain,
an upcaster that cannot read the payload, or a payload that does not fit its class.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from cqrs_core.infra.errors import CorruptStreamError, UnknownEventError

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


@dataclass(frozen=True)
class Step:
    """One link of a chain: version `from_version` of `from_type` into `to_version` of `to_type`."""

    from_type: str
    from_version: int
    to_type: str
    to_version: int
    function: Upcaster

    @property
    def name(self) -> str:
        if self.from_type == self.to_type:
            return f"{self.from_type} v{self.from_version} -> v{self.to_version}"
        return f"{self.from_type} v{self.from_version} -> {self.to_type} v{self.to_version}"


@dataclass(frozen=True)
class Upcast:
    """A stored event brought up to the current schema: its type and version now, its payload,
    and the steps it went through (none for an event stored at the current version)."""

    event_type: str
    schema_version: int
    payload: Payload
    steps: tuple[Step, ...]


def _where(stream_id: str | None, version: int | None) -> str:
    return f" at version {version} of stream {stream_id}" if stream_id is not None else ""


def validation_problem(exc: pydantic.ValidationError) -> str:
    """The field problems of a payload as one line: 'field: message; ...'."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


class SchemaRegistry:
    """The event classes this code knows, their current versions and the upcasters between versions."""

    def __init__(self) -> None:
        self.classes: dict[str, type] = {}
        self.steps: dict[tuple[str, int], Step] = {}
        self._adapters: dict[type, pydantic.TypeAdapter[Any]] = {}
        self._chains: dict[tuple[str, int], tuple[Step, ...]] = {}
        # Per current type: its version and its compiled validator (the hot path's one lookup).
        self.current: dict[str, tuple[int, Callable[[Any], Any]]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ registering

    def register_event(self, cls: type) -> type:
        """Know `cls` by its name, at the version it declares (`schema_version`)."""
        with self._lock:
            self.classes[cls.__name__] = cls
            adapter = self._adapters[cls] = pydantic.TypeAdapter(cls)
            self.current[cls.__name__] = (int(cls.schema_version), adapter.validate_python)  # type: ignore[attr-defined]
            self._chains.clear()
        return cls

    def upcaster(
        self, event_type: str, from_version: int, *, to_type: str | None = None, to_version: int | None = None
    ) -> Callable[[Upcaster], Upcaster]:
        """Register the decorated pure function as the step from `from_version` of `event_type`
        (to the next version of the same type, unless `to_type`/`to_version` say otherwise)."""

        def register(function: Upcaster) -> Upcaster:
            self.add_step(
                Step(
                    event_type,
                    from_version,
                    to_type or event_type,
                    to_version if to_version is not None else (from_version + 1 if to_type is None else 1),
                    function,
                )
            )
            return function

        return register

    def add_step(self, step: Step) -> None:
        key = (step.from_type, step.from_version)
        with self._lock:
            if key in self.steps and self.steps[key] != step:
                raise ValueError(f"{step.from_type} v{step.from_version} already has an upcaster")
            self.steps[key] = step
            self._chains.clear()

    def remove_step(self, event_type: str, from_version: int) -> Step:
        """Forget a step (for tests and tools that show what a missing link does)."""
        with self._lock:
            step = self.steps.pop((event_type, from_version))
            self._chains.clear()
        return step

    # ------------------------------------------------------------ reading

    def current_versions(self) -> dict[str, int]:
        """Every known event type's current version."""
        with self._lock:
            return {name: version for name, (version, _) in self.current.items()}

    def current_version(self, event_type: str) -> int | None:
        cls = self.classes.get(event_type)
        return None if cls is None else int(cls.schema_version)  # type: ignore[attr-defined]

    def stored_names(self, event_type: str) -> frozenset[str]:
        """Every stored type name whose chain can end at `event_type` (itself included)."""
        names = {event_type}
        grew = True
        while grew:
            grew = False
            for step in list(self.steps.values()):
                if step.to_type in names and step.from_type not in names:
                    names.add(step.from_type)
                    grew = True
        return frozenset(names)

    def chain(
        self,
        event_type: str,
        schema_version: int,
        *,
        stream_id: str | None = None,
        version: int | None = None,
    ) -> tuple[Step, ...]:
        """The steps from a stored (type, version) to a current one; raises the typed error
        when there is no way there."""
        key = (event_type, schema_version)
        found = self._chains.get(key)
        if found is not None:
            return found
        steps: list[Step] = []
        at_type, at_version = event_type, schema_version
        seen: set[tuple[str, int]] = set()
        while True:
            current = self.current_version(at_type)
            if current is not None and at_version == current:
                break
            if current is not None and at_version > current:
                raise CorruptStreamError(
                    f"The stored {event_type[:80]} event{_where(stream_id, version)} is at schema version "
                    f"{schema_version}, newer than this code knows ({at_type} v{current}); deploy the code "
                    "that wrote it before reading this stream.",
                    event_type=event_type,
                    stream_id=stream_id,
                    version=version,
                    problem=f"schema version {schema_version} is newer than {at_type} v{current}",
                )
            step = self.steps.get((at_type, at_version))
            if step is None or (at_type, at_version) in seen:
                if current is None and not steps and not any(t == event_type for t, _ in self.steps):
                    raise UnknownEventError(
                        f"The stored event{_where(stream_id, version)} has the unknown type {event_type[:80]!r}, "
                        "so this workflow cannot be changed until an operator repairs the stream or an "
                        "upgrade teaches it that event.",
                        event_type=event_type,
                        stream_id=stream_id,
                        version=version,
                        problem=f"unknown event type {event_type[:80]!r}",
                    )
                raise CorruptStreamError(
                    f"The stored {event_type[:80]} event{_where(stream_id, version)} is at schema version "
                    f"{schema_version} and no upcaster takes {at_type} v{at_version} further, so it cannot "
                    "be read until an upgrade adds that step.",
                    event_type=event_type,
                    stream_id=stream_id,
                    version=version,
                    problem=f"no upcaster from {at_type[:80]} v{at_version}",
                )
            seen.add((at_type, at_version))
            steps.append(step)
            at_type, at_version = step.to_type, step.to_version
        found = tuple(steps)
        with self._lock:
            self._chains[key] = found
        return found

    def reading(self, event_type: str, schema_version: int) -> str:
        """How this code reads stored events of this type and version, in a few words: "current",
        "upcast to TaskAdded v2", "unknown type" or why it cannot."""
        try:
            steps = self.chain(event_type, schema_version)
        except UnknownEventError:
            return "unknown type"
        except CorruptStreamError as exc:
            return str(exc.context.get("problem", "cannot be read"))
        return "current" if not steps else f"upcast to {steps[-1].to_type} v{steps[-1].to_version}"

    def upcast(
        self,
        event_type: str,
        schema_version: int,
        payload: Any,
        *,
        stream_id: str | None = None,
        version: int | None = None,
    ) -> Upcast:
        """The stored event at the current version of its (possibly renamed) type, with the steps
        it went through."""
        steps = self.chain(event_type, schema_version, stream_id=stream_id, version=version)
        if not steps:
            return Upcast(event_type, schema_version, payload, ())
        out = self._run(steps, event_type, payload, stream_id, version)
        return Upcast(steps[-1].to_type, steps[-1].to_version, out, steps)

    def _run(
        self,
        steps: tuple[Step, ...],
        event_type: str,
        payload: Any,
        stream_id: str | None,
        version: int | None,
    ) -> Payload:
        if type(payload) is not dict:
            raise self._corrupt(
                event_type, stream_id, version, f"payload is a {type(payload).__name__}, not an object"
            )
        out: Payload = payload
        for step in steps:
            try:
                # A copy: upcasters are pure, and the stored payload may be shared by many readers.
                out = step.function(dict(out))
            except KeyError as exc:  # the field it upcasts is missing
                raise self._corrupt(
                    event_type, stream_id, version, f"upcaster {step.name}: the field {exc} is missing"
                ) from None
            except Exception as exc:  # an upcaster that cannot read this payload
                raise self._corrupt(
                    event_type,
                    stream_id,
                    version,
                    f"upcaster {step.name} failed: {type(exc).__name__}: {exc}",
                ) from None
            if type(out) is not dict:
                raise self._corrupt(
                    event_type, stream_id, version, f"upcaster {step.name} did not return an object"
                )
        return out

    def decode(
        self,
        event_type: str,
        payload: Any,
        schema_version: int | None = None,
        *,
        stream_id: str | None = None,
        version: int | None = None,
    ) -> Any:
        """The typed event of a stored row: upcast (`schema_version` None: the type's current
        version), then validated against its class. This runs for every event a projection or
        a command reads, so the common case (a current version) is one lookup and one validation."""
        cls = self.classes.get(event_type)
        if cls is None or (schema_version is not None and schema_version != cls.schema_version):  # type: ignore[attr-defined]
            stored = 1 if schema_version is None else schema_version
            steps = self._chains.get((event_type, stored))
            if steps is None:
                steps = self.chain(event_type, stored, stream_id=stream_id, version=version)
            if steps:
                payload = self._run(steps, event_type, payload, stream_id, version)
                cls = self.classes[steps[-1].to_type]
            assert cls is not None  # an empty chain: the type is current
        if type(payload) is not dict:
            raise self._corrupt(
                event_type, stream_id, version, f"payload is a {type(payload).__name__}, not an object"
            )
        try:
            return self._adapters[cls].validate_python(payload)
        except pydantic.ValidationError as exc:
            raise self._corrupt(event_type, stream_id, version, validation_problem(exc)) from None

    @staticmethod
    def _corrupt(
        event_type: str, stream_id: str | None, version: int | None, problem: str
    ) -> CorruptStreamError:
        return CorruptStreamError(
            f"The stored {event_type[:80]} event{_where(stream_id, version)} does not fit its schema "
            f"({problem[:300]}), so this workflow cannot be changed until an operator repairs the stream "
            "or an upgrade adds an upcaster for it.",
            event_type=event_type,
            stream_id=stream_id,
            version=version,
            problem=problem,
        )


REGISTRY = SchemaRegistry()
upcaster = REGISTRY.upcaster
