"""WebhookNotifier: alert notices POSTed to their webhook from a thread of its own.

`submit(notice)` only puts the notice in a bounded in-memory queue and returns: the alert evaluator
never waits for a webhook, a slow receiver or the database. When the queue is full the oldest
notice is dropped, counted, logged and recorded as dropped. One delivery thread sends what is
queued; a failed try (no connection, a timeout, HTTP 408, 425, 429 or 5xx) is tried again after a
backoff that doubles up to a cap (a 429 or 503's `Retry-After` is honoured within the same cap),
while later notices go out in between. Any other answer (a 4xx: a revoked token, an archived
channel) is final: the notice is recorded as failed.

At most once per alert and step: a key (alert_id, step) submitted again while this process knows it
(queued, being sent, or delivered) is ignored, and before the first try the delivery records
(`alert_deliveries`) are asked whether any process delivered it already, before a restart too.
Each try carries `Idempotency-Key: <alert_id>:<step>`, so a receiver can drop a repeat the records
could not prevent (delivered while the database was down, then the process restarted).

The records are never needed to send: while the database is unreachable the notifier sends all the
same, keeps the latest state of each delivery in memory, and writes them once it answers again
(asked again after a backoff, not before every notice, so an outage does not slow delivery).

Webhook URLs carry tokens: they reach logs, records and errors only through `redact()`, and error
texts (a receiver's answer, an exception) have every part of the URL masked (`without_url`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import Engine

from cqrs_core.domain.alert_notice import AlertNotice
from cqrs_core.infra.config import Settings
from cqrs_core.infra.db import redact
from cqrs_core.ops.webhooks import message, records
from cqrs_core.ops.webhooks.records import DeliveryRecord, DeliveryStatus
from cqrs_core.ops.webhooks.routes import WebhookRoutes, without_url

log = logging.getLogger(__name__)

# Answers worth another try: the receiver was busy, throttling or broken for a moment.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Keys this process remembers as queued, in flight or delivered (oldest forgotten first): far more
# than the state changes of a day; an older key is still found in the delivery records.
KNOWN_KEYS = 10_000
# Delivery records waiting for the database at most (oldest dropped first, counted in the log).
UNRECORDED_MAX = 10_000
# After the database failed to answer, it is asked again after this long, doubling up to the cap.
RECORDS_RETRY_SECONDS = 2.0
RECORDS_RETRY_MAX_SECONDS = 60.0
# How much of a receiver's answer an error keeps (Slack's "invalid_token", "channel_is_archived").
ANSWER_EXCERPT = 200
# The default of `close`: how long queued notices may still go out when the process stops.
CLOSE_TIMEOUT_SECONDS = 5.0

Key = tuple[str, int]


class _RedactedRequestLines(logging.Filter):
    """httpx logs every request's full URL at INFO ("HTTP Request: POST https://…"): with a
    webhook, its token. On httpx's logger, this shows every URL argument through `redact()`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(str(arg)) if isinstance(arg, httpx.URL) or _is_web_url(arg) else arg
                for arg in record.args
            )
        return True


def _is_web_url(value: object) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


_HTTPX_LOGGER = logging.getLogger("httpx")
if not any(isinstance(f, _RedactedRequestLines) for f in _HTTPX_LOGGER.filters):
    _HTTPX_LOGGER.addFilter(_RedactedRequestLines())


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard a notice is tried: `attempts` tries in all, `backoff` seconds before the second,
    doubling each time up to `backoff_max`; each POST may take `timeout` seconds; at most
    `queue_size` notices wait."""

    attempts: int = 6
    backoff: float = 2.0
    backoff_max: float = 300.0
    timeout: float = 10.0
    queue_size: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        return cls(
            attempts=settings.alert_webhook_attempts,
            backoff=settings.alert_webhook_backoff_seconds,
            backoff_max=settings.alert_webhook_backoff_max_seconds,
            timeout=settings.alert_webhook_timeout_seconds,
            queue_size=settings.alert_webhook_queue_size,
        )

    def delay(self, failed_tries: int, retry_after: float | None = None) -> float:
        """Seconds before the next try after `failed_tries` failed ones (at least the receiver's
        `Retry-After`, never more than `backoff_max`)."""
        backoff = self.backoff * 2 ** max(0, failed_tries - 1)
        return min(self.backoff_max, max(backoff, retry_after or 0.0))


@dataclass(frozen=True)
class NotifierStatus:
    """What this process's notifier has done since it started (routes shown redacted)."""

    routes: dict[str, str | None]
    queued: int
    retrying: int
    delivered: int
    failed: int
    dropped: int
    repeats_ignored: int
    unrecorded: int
    last_error: str | None


@dataclass
class _Delivery:
    notice: AlertNotice
    url: str
    tries: int = 0
    first_try: bool = True
    last_error: str | None = None

    @property
    def key(self) -> Key:
        return (self.notice.alert_id, self.notice.step)


@dataclass
class _Outcome:
    ok: bool
    error: str | None = None
    retry: bool = False
    retry_after: float | None = None


@dataclass
class _Counters:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    dropped_unlogged: int = 0
    repeats_ignored: int = 0
    unrecorded_lost: int = 0
    last_error: str | None = None
    dropped_notices: deque[AlertNotice] = field(default_factory=lambda: deque(maxlen=UNRECORDED_MAX))


class WebhookNotifier:
    """Sends alert notices to their webhooks; `submit` is the evaluator's `notify` callable.
    Thread-safe. `engine` (optional) keeps the delivery records; without one nothing is recorded
    and a restart forgets what was delivered."""

    def __init__(
        self,
        routes: WebhookRoutes,
        policy: DeliveryPolicy | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.routes = routes
        self.policy = policy or DeliveryPolicy()
        self.engine = engine
        self._cond = threading.Condition()
        self._queue: deque[_Delivery] = deque()
        self._retries: list[tuple[float, int, _Delivery]] = []  # (due, tie-breaker, delivery)
        self._order = itertools.count()
        self._known: OrderedDict[Key, None] = OrderedDict()
        self._in_flight = 0
        self._counters = _Counters()
        self._unrecorded: OrderedDict[Key, DeliveryRecord] = OrderedDict()
        self._records_retry_at = 0.0
        self._records_failures = 0
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------ the evaluator's side

    def submit(self, notice: AlertNotice) -> None:
        """Queue `notice` for its webhook and return at once; never raises. A notice whose
        severity has no webhook, or whose (alert_id, step) this process already has, is ignored."""
        try:
            url = self.routes.url_for(notice.severity)
            if url is None:
                return
            delivery = _Delivery(notice, url)
            with self._cond:
                if self._closed:
                    log.warning(
                        "alert %s step %d not sent: the notifier is closed", notice.alert_id, notice.step
                    )
                    return
                if delivery.key in self._known:
                    self._counters.repeats_ignored += 1
                    return
                if len(self._queue) >= self.policy.queue_size:
                    oldest = self._queue.popleft()
                    self._known.pop(oldest.key, None)  # dropped: submitting it again may send it
                    self._counters.dropped += 1
                    self._counters.dropped_unlogged += 1
                    self._counters.dropped_notices.append(oldest.notice)
                self._remember(delivery.key)
                self._queue.append(delivery)
                self._start_thread()
                self._cond.notify_all()
        except Exception:  # the evaluator must go on whatever happens here
            log.exception("could not queue the notification of alert %s", getattr(notice, "alert_id", "?"))

    __call__ = submit

    def status(self) -> NotifierStatus:
        with self._cond:
            c = self._counters
            return NotifierStatus(
                routes=self.routes.shown(),
                queued=len(self._queue),
                retrying=len(self._retries),
                delivered=c.delivered,
                failed=c.failed,
                dropped=c.dropped,
                repeats_ignored=c.repeats_ignored,
                unrecorded=len(self._unrecorded),
                last_error=c.last_error,
            )

    def idle(self) -> bool:
        """Nothing queued, in flight, waiting for a retry or waiting to be recorded."""
        with self._cond:
            return not (self._queue or self._retries or self._in_flight or self._unrecorded)

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Send what is queued (and retries due now) for up to `timeout` seconds, record what is
        left as failed, and stop; returns whether the delivery thread finished in time."""
        with self._cond:
            if self._closed:
                return True
            self._closing = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(max(0.5, self.policy.timeout))  # a POST under way gets its own timeout
        return thread is None or not thread.is_alive()

    # ------------------------------------------------------------ the delivery thread

    def _start_thread(self) -> None:
        """Under the lock: the delivery thread, started with the first notice to send (a daemon:
        a receiver that never answers must not keep the process from exiting)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-webhooks", daemon=True)
            self._thread.start()

    def _remember(self, key: Key) -> None:
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_KEYS:
            self._known.popitem(last=False)

    def _run(self) -> None:
        # Made here, not in `submit`: building its TLS context takes milliseconds.
        self._client = httpx.Client(timeout=self.policy.timeout, follow_redirects=False)
        try:
            self._deliver_until_stopped()
        finally:
            self._client.close()

    def _deliver_until_stopped(self) -> None:
        while True:
            delivery, stop = self._next()
            try:
                self._note_drops()
                if delivery is not None:
                    self._deliver(delivery)
                self._write_records()
            except Exception:  # a bug must not end delivery for good
                log.exception("the alert webhook thread hit an error; it goes on")
            finally:
                if delivery is not None:
                    with self._cond:
                        self._in_flight -= 1
            if stop:
                self._give_up_retries()
                self._write_records(force=True)
                return

    def _next(self) -> tuple[_Delivery | None, bool]:
        """The next delivery to try (queued first, then a retry that is due), or None when the
        records are due to be written again; `True` with it when the thread should stop after."""
        with self._cond:
            while True:
                now = time.monotonic()
                job: _Delivery | None = None
                if self._closed:
                    return None, True
                if self._queue:
                    job = self._queue.popleft()
                elif self._retries and self._retries[0][0] <= now:
                    job = heapq.heappop(self._retries)[2]
                elif self._closing:
                    return None, True
                if job is not None:
                    self._in_flight += 1
                    return job, False
                if self._counters.dropped_unlogged or (
                    self._unrecorded and self.engine is not None and now >= self._records_retry_at
                ):
                    return None, False
                waits = [self._retries[0][0] - now] if self._retries else []
                if self._unrecorded and self.engine is not None:
                    waits.append(self._records_retry_at - now)
                self._cond.wait(max(0.01, min(waits)) if waits else None)

    def _deliver(self, delivery: _Delivery) -> None:
        notice = delivery.notice
        shown = redact(delivery.url)
        if delivery.first_try:
            delivery.first_try = False
            if self._delivered_before(delivery):
                log.info(
                    "alert %s step %d was delivered before; not sent again", notice.alert_id, notice.step
                )
                with self._cond:
                    self._counters.repeats_ignored += 1
                return
        delivery.tries += 1
        tried_at = datetime.now(UTC)
        outcome = self._post(delivery)
        if outcome.ok:
            with self._cond:
                self._counters.delivered += 1
            log.info(
                "alert %s step %d (%s, %s) delivered to %s (try %d)",
                notice.alert_id,
                notice.step,
                notice.rule,
                notice.state,
                shown,
                delivery.tries,
            )
            self._record(delivery, "delivered", last_attempt_at=tried_at, delivered_at=datetime.now(UTC))
            return
        delivery.last_error = outcome.error
        if outcome.retry and delivery.tries < self.policy.attempts:
            delay = self.policy.delay(delivery.tries, outcome.retry_after)
            log.warning(
                "alert %s step %d: %s answered %s (try %d of %d); trying again in %.1f s",
                notice.alert_id,
                notice.step,
                shown,
                outcome.error,
                delivery.tries,
                self.policy.attempts,
                delay,
            )
            with self._cond:
                self._counters.last_error = outcome.error
                heapq.heappush(self._retries, (time.monotonic() + delay, next(self._order), delivery))
            self._record(
                delivery,
                "sending",
                last_attempt_at=tried_at,
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
            )
            return
        self._fail(delivery, tried_at)

    def _fail(self, delivery: _Delivery, tried_at: datetime | None) -> None:
        notice = delivery.notice
        log.error(
            "alert %s step %d (%s, %s) not delivered to %s after %d tries: %s",
            notice.alert_id,
            notice.step,
            notice.rule,
            notice.state,
            redact(delivery.url),
            delivery.tries,
            delivery.last_error,
        )
        with self._cond:
            self._counters.failed += 1
            self._counters.last_error = delivery.last_error
            self._known.pop(delivery.key, None)  # not delivered: submitting it again may send it
        self._record(delivery, "failed", last_attempt_at=tried_at)

    def _post(self, delivery: _Delivery) -> _Outcome:
        notice = delivery.notice
        assert self._client is not None  # created with the thread
        try:
            response = self._client.post(
                delivery.url, content=message.encoded_body(notice), headers=message.headers(notice)
            )
        except httpx.TimeoutException:
            return _Outcome(False, f"no answer within {self.policy.timeout:g} s", retry=True)
        except httpx.HTTPError as exc:
            return _Outcome(False, self._error_text(exc, delivery.url), retry=True)
        except Exception as exc:  # an invalid header value, a URL httpx refuses: no try will do better
            return _Outcome(False, self._error_text(exc, delivery.url), retry=False)
        if response.is_success:
            return _Outcome(True)
        answer = message.one_line(response.text[:ANSWER_EXCERPT]) if response.content else ""
        error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if response.is_redirect:
            error += " (a webhook URL must not redirect; set the URL it points to)"
        elif answer:
            error += f": {answer}"
        return _Outcome(
            False,
            without_url(error, delivery.url),
            retry=response.status_code in RETRY_STATUSES,
            retry_after=_retry_after(response),
        )

    @staticmethod
    def _error_text(exc: BaseException, url: str) -> str:
        detail = message.one_line(str(exc))[:ANSWER_EXCERPT]
        return without_url(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, url)

    def _give_up_retries(self) -> None:
        """On close: the deliveries still waiting for a retry are recorded as failed."""
        with self._cond:
            left = [entry[2] for entry in self._retries] + list(self._queue)
            self._retries.clear()
            self._queue.clear()
        for delivery in left:
            delivery.last_error = (
                f"{delivery.last_error or 'not tried'}; the process stopped before the next try"
            )
            self._fail(delivery, None)

    # ------------------------------------------------------------ the delivery records

    def _delivered_before(self, delivery: _Delivery) -> bool:
        """Whether the records say this key was delivered (False when they cannot be read)."""
        if self.engine is None or time.monotonic() < self._records_retry_at:
            return False
        try:
            return records.was_delivered(self.engine, *delivery.key)
        except Exception as exc:
            self._records_unreachable(exc)
            return False

    def _record(self, delivery: _Delivery, status: DeliveryStatus, **when: datetime | None) -> None:
        if self.engine is None:
            return
        record = DeliveryRecord.of(
            delivery.notice, delivery.url, status, delivery.tries, last_error=delivery.last_error, **when
        )
        with self._cond:
            self._keep(record)
        self._write_records()

    def _keep(self, record: DeliveryRecord) -> None:
        """Under the lock: `record` waits to be written (replacing an older state of its delivery)."""
        key = (record.alert_id, record.step)
        self._unrecorded[key] = record
        self._unrecorded.move_to_end(key)
        while len(self._unrecorded) > UNRECORDED_MAX:
            self._unrecorded.popitem(last=False)
            self._counters.unrecorded_lost += 1

    def _note_drops(self) -> None:
        """Log the notices the full queue dropped (one line per batch of them) and record them."""
        with self._cond:
            count, self._counters.dropped_unlogged = self._counters.dropped_unlogged, 0
            dropped = list(self._counters.dropped_notices)
            self._counters.dropped_notices.clear()
            if count:
                self._counters.last_error = "the notification queue was full"
        if not count:
            return
        log.error(
            "dropped %d alert notification(s), oldest first: the queue of %d was full "
            "(a webhook slower than the alerts; CQRS_ALERT_WEBHOOK_QUEUE_SIZE)",
            count,
            self.policy.queue_size,
        )
        if self.engine is None:
            return
        with self._cond:
            for notice in dropped:
                url = self.routes.url_for(notice.severity) or ""
                self._keep(
                    DeliveryRecord.of(
                        notice,
                        url,
                        "dropped",
                        0,
                        last_error=f"dropped: the queue of {self.policy.queue_size} notifications was full",
                    )
                )

    def _write_records(self, force: bool = False) -> None:
        """Write the waiting records, unless the database failed a moment ago (`force`: try anyway)."""
        if self.engine is None or (not force and time.monotonic() < self._records_retry_at):
            return
        with self._cond:
            pending = list(self._unrecorded.values())
            lost, self._counters.unrecorded_lost = self._counters.unrecorded_lost, 0
        if lost:
            log.error("%d delivery record(s) were forgotten while the database was unreachable", lost)
        if not pending:
            return
        try:
            records.save(self.engine, pending)
        except Exception as exc:
            self._records_unreachable(exc)
            return
        if self._records_failures:
            log.info("the database answers again: %d delivery record(s) written", len(pending))
        self._records_failures = 0
        self._records_retry_at = 0.0
        with self._cond:
            for record in pending:
                key = (record.alert_id, record.step)
                if self._unrecorded.get(key) is record:  # not replaced by a newer state meanwhile
                    del self._unrecorded[key]

    def _records_unreachable(self, exc: BaseException) -> None:
        self._records_failures += 1
        delay = min(RECORDS_RETRY_MAX_SECONDS, RECORDS_RETRY_SECONDS * 2 ** (self._records_failures - 1))
        self._records_retry_at = time.monotonic() + delay
        level = logging.WARNING if self._records_failures == 1 else logging.DEBUG
        log.log(
            level,
            "delivery records not written (%s); notifications still go out, records follow when "
            "the database answers (next try in %.0f s)",
            type(exc).__name__,
            delay,
        )


def _retry_after(response: httpx.Response) -> float | None:
    """A 429's or 503's `Retry-After`, in seconds (a number or an HTTP date); None without one."""
    value = response.headers.get("Retry-After")
    if not value or response.status_code not in (429, 503):
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def open_notifier(settings: Settings, engine: Engine | None) -> WebhookNotifier:
    """The notifier the settings describe (CQRS_ALERT_WEBHOOK_*), recording into `engine`'s
    database. With no webhook set it sends nothing and starts no thread."""
    return WebhookNotifier(
        WebhookRoutes.from_settings(settings), DeliveryPolicy.from_settings(settings), engine
    )
