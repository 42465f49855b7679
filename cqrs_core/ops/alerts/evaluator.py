"""The alert evaluator: every CQRS_ALERT_EVALUATE_SECONDS the worker's scheduler runs `evaluate`,
which, in the one process holding the leader lock (`leader.py`; the others skip),

1. gathers one snapshot of facts (`facts.py`) and runs every rule over it (`rules.py`);
2. raises an alert for a (rule, subject) whose condition has lasted the rule's hold, unless one is
   open already (one open alert per rule and subject);
3. resolves by itself an open alert whose condition is gone (a rule that cannot tell, because
   its facts could not be read, leaves its alerts as they are);
4. ends the snooze of an alert whose snooze ran out while its condition still holds, which
   raises (announces) it again: a snoozed alert is silent until then;
5. right after raising an alert whose rule has a remedy (`remedies`: "projection_stalled" →
   the opt-in auto-restart of its runner, CQRS_ALERT_AUTO_RESTART), applies it once and records
   what it did as the alert's next step ("action taken": `AlertActionTaken`). A remedy that
   says None did nothing (auto-restart off) and leaves no step. The alert still resolves only
   when its condition clears.

Every step is a command through the command bus, so it lands in the alert's stream with the
evaluator ("alerts") as its actor, the alert's id as its correlation id and the time the
evaluator decided as its `occurred_at`, and is announced once committed (`notify`).

While the database cannot be reached, the leader goes on deciding: the steps it takes (raising
"database unreachable", for one) are folded into its own copy of the alerts, announced at once,
and kept in order; when the database answers again they are sent first, with their true times
(a command id makes each idempotent: a step whose acknowledgement was lost is not taken twice).
A failing `notify` is logged and never stops an evaluation.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import Engine

from cqrs_core.domain.alert import MAX_ALERT_TEXT, Alert
from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import Settings
from cqrs_core.infra.errors import CQRSError, InfrastructureError, RateLimitedError, TimeoutError_
from cqrs_core.ops.alerts.facts import FactGatherer
from cqrs_core.ops.alerts.leader import LeaderLock
from cqrs_core.ops.alerts.notice_log import log_notice
from cqrs_core.ops.alerts.open_alerts import open_alerts, read_alerts
from cqrs_core.ops.alerts.rules import RULES, Condition, Rule
from cqrs_core.write import commands as c
from cqrs_core.write.command_bus import CommandBus, announce
from cqrs_core.write.handlers import decide_alert

log = logging.getLogger(__name__)

EVALUATOR_ACTOR = "alerts"
# The database is away: try again next time (everything else a step can meet is final for it).
_TRY_LATER = (InfrastructureError, TimeoutError_, RateLimitedError)

Key = tuple[str, str]  # (rule, subject)


class Remedy(NamedTuple):
    """A rule's remedy: `apply(subject)`, given the subject of an alert just raised, does something
    about it and says what (for the alert's history), or returns None when it is switched off.
    `action` names it in the history ("auto_restart")."""

    action: str
    apply: Callable[[str], str | None]


class AlertEvaluator:
    """Raises, resolves and wakes alerts from the rules. Thread-safe; `evaluate` never raises."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        bus: CommandBus,
        gatherer: FactGatherer,
        *,
        notify: Callable[[AlertNotice], None] = log_notice,
        rules: Mapping[str, Rule] = RULES,
        leader: LeaderLock | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        remedies: Mapping[str, Remedy] | None = None,
    ) -> None:
        self.engine, self.settings, self.bus, self.gatherer = engine, settings, bus, gatherer
        self.notify, self.rules, self.clock = notify, rules, clock
        self.remedies: dict[str, Remedy] = dict(remedies or {})  # rule name → remedy
        self.leader = leader or LeaderLock(engine)
        self.commands = c.CommandFactory(actor=EVALUATOR_ACTOR, role="operator")
        self._mutex = threading.Lock()
        self._leading = False
        self._open: dict[Key, Alert] = {}  # the open alerts, with the steps still pending folded in
        self._since: dict[Key, datetime] = {}  # when each condition was first found (the hold)
        self._pending: list[c.AlertCommand] = []  # steps taken while the database was away, in order

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def pending(self) -> int:
        """Steps taken while the database was away and not in the log yet."""
        return len(self._pending)

    def open_alerts(self) -> dict[Key, Alert]:
        """The open alerts as this evaluator sees them (with its pending steps)."""
        with self._mutex:
            return dict(self._open)

    def evaluate(self) -> None:
        """One evaluation (the scheduled job). Never raises: a failure is logged."""
        try:
            with self._mutex:
                self._evaluate()
        except Exception:
            log.exception("alert evaluation failed")

    def close(self) -> None:
        """Give the leadership up (another process takes it on its next evaluation)."""
        with self._mutex:
            self.leader.release()
            self._step_down()

    # ------------------------------------------------------------ one evaluation

    def _evaluate(self) -> None:
        held = self.leader.hold()
        if held is False or (held is None and not self._leading):
            if self._pending:
                self._flush()  # what it saw while it led is true: it goes into the log all the same
            if self._leading:
                log.info("another process evaluates the alert rules now")
            self._step_down()
            return
        if held and not self._leading:
            self._step_down()
            self._leading = True
        now = self.clock()
        facts = self.gatherer.gather(now)
        online = facts.database.reachable and self._flush() and self._sync()
        for rule in self.rules.values():
            found = rule.check(facts, rule.limits(self.settings))
            if found is not None:
                online = self._follow(rule, found, now, online)

    def _step_down(self) -> None:
        self._leading = False
        self._open.clear()
        self._since.clear()
        self._pending.clear()

    def _follow(self, rule: Rule, found: list[Condition], now: datetime, online: bool) -> bool:
        """Raise, wake and resolve the alerts of `rule` by what it found; returns whether the
        database still answers."""
        present = {condition.subject: condition for condition in found}
        hold = rule.limits(self.settings).hold_seconds
        for subject, condition in present.items():
            key = (rule.name, subject)
            since = self._since.setdefault(key, now)
            alert = self._open.get(key)
            if alert is None:
                if (now - since).total_seconds() >= hold:
                    alert_id = uuid.uuid4()
                    online = self._take(
                        key,
                        Alert(str(alert_id)),
                        self.commands.raise_alert(
                            alert_id=alert_id,
                            rule=rule.name,
                            subject=subject,
                            severity=rule.severity,
                            summary=condition.summary,
                            correlation_id=alert_id,
                            occurred_at=now,
                        ),
                        now,
                        online,
                    )
                    if rule.name in self.remedies and key in self._open:
                        online = self._remedy(key, self.remedies[rule.name], now, online)
            elif alert.snooze_over(now):
                until = alert.snoozed_until.isoformat(timespec="seconds") if alert.snoozed_until else "?"
                online = self._take(
                    key,
                    alert,
                    self.commands.end_alert_snooze(
                        alert_id=alert.alert_id,
                        reason=f"The snooze until {until} ran out and it still holds: {condition.summary}",
                        correlation_id=alert.alert_id,
                        occurred_at=now,
                    ),
                    now,
                    online,
                )
        for key, alert in list(self._open.items()):
            if key[0] == rule.name and key[1] not in present:
                online = self._take(
                    key,
                    alert,
                    self.commands.resolve_alert(
                        alert_id=alert.alert_id,
                        reason=f"Cleared: the {rule.title.lower()} condition no longer holds for {key[1]}.",
                        automatic=True,
                        correlation_id=alert.alert_id,
                        occurred_at=now,
                    ),
                    now,
                    online,
                )
        for key in [k for k in self._since if k[0] == rule.name and k[1] not in present]:
            del self._since[key]
        return online

    def _remedy(self, key: Key, remedy: Remedy, now: datetime, online: bool) -> bool:
        """Apply `key`'s rule's remedy to the alert just raised, and record what it did."""
        alert = self._open[key]
        try:
            done = remedy.apply(key[1])
            if not done:
                return online
            command = self.commands.record_alert_action(
                alert_id=alert.alert_id,
                action=remedy.action,
                reason=_clip(done),  # a restart of many partitions says a lot
                correlation_id=alert.alert_id,
                occurred_at=self.clock(),
            )
        except Exception:  # a remedy must not raise; if it does, the alert stands as raised
            log.exception("the remedy of %s on %s failed", *key)
            return online
        return self._take(key, alert, command, now, online)

    # ------------------------------------------------------------ taking a step

    def _take(self, key: Key, alert: Alert, command: c.AlertCommand, now: datetime, online: bool) -> bool:
        """Send one step (or keep it, announced, while the database is away); returns whether the
        database still answers."""
        if online and not self._pending:
            try:
                self.bus.execute(command, trusted_import=True)  # the bus announces it
            except _TRY_LATER:
                online = False
            except CQRSError as exc:  # someone changed the alert meanwhile: the next sync reads it
                log.info("alert step %s not taken: %s", command.command_type, exc.user_message)
                return online
            else:
                self._reread(key, alert, command, now)
                return online
        try:
            decided = decide_alert(alert, command, now)
        except CQRSError as exc:
            log.warning("alert step %s not taken: %s", command.command_type, exc.user_message)
            return online
        for event in decided:
            alert.apply(event)
        self._keep(key, alert)
        self._pending.append(command)
        log.warning("the database is away: alert step %s kept to be written later", command.command_type)
        announce(self.notify, alert.notice(command.actor, now))
        return online

    def _keep(self, key: Key, alert: Alert) -> None:
        if alert.is_open:
            self._open[key] = alert
        else:
            self._open.pop(key, None)

    def _reread(self, key: Key, alert: Alert, command: c.AlertCommand, now: datetime) -> None:
        """The alert as the log has it after a step the bus took (so that a database gone away
        by the next evaluation does not make this one raise it twice); if it cannot be read, the
        step folded into the copy this evaluator had."""
        try:
            found = read_alerts(self.engine, [alert.alert_id])
        except CQRSError:
            found = []
            try:
                for event in decide_alert(alert, command, now):
                    alert.apply(event)
            except CQRSError:  # the copy was behind the log: the next sync reads it whole
                return
        self._keep(key, found[0] if found else alert)

    # ------------------------------------------------------------ the log

    def _flush(self) -> bool:
        """Send the steps kept while the database was away, oldest first; returns whether all went."""
        sent = bool(self._pending)
        while self._pending:
            command = self._pending[0]
            try:
                self.bus.execute(command, trusted_import=True, notify=False)  # announced when taken
            except _TRY_LATER:
                return False
            except CQRSError as exc:  # superseded (someone resolved it meanwhile): nothing to write
                log.warning("kept alert step %s dropped: %s", command.command_type, exc.user_message)
            self._pending.pop(0)
        if sent:
            log.info("the alert steps kept while the database was away are in the log")
        return True

    def _sync(self) -> bool:
        """Read the open alerts from the log, every evaluation: people acknowledge, snooze and
        resolve them from other processes, and a former leader may just have written the steps it
        took while the database was away. (Only the alert streams are read, through their partial
        index: a few rows per alert.)"""
        try:
            alerts = open_alerts(self.engine)
        except (InfrastructureError, TimeoutError_):
            return False
        self._open = {(a.rule, a.subject): a for a in alerts}
        return True


def _clip(text: str) -> str:
    """`text` cut to what an alert step carries (MAX_ALERT_TEXT characters)."""
    return text if len(text) <= MAX_ALERT_TEXT else text[: MAX_ALERT_TEXT - 1] + "…"
