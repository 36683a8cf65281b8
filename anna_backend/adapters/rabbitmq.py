"""Full mode's request queue: train and score requests carried by RabbitMQ (pika, AMQP 0-9-1).

The database stays the state of record; a message only says "there is work for run N". Delivery is at
least once (a publish repeated after a lost connection, a dead consumer's delivery redelivered), so
handlers must be idempotent. Topology, declared identically by every connection as it opens:

- exchange ``<prefix>`` (direct, durable); routing keys ``requests``, ``retry``, ``dead`` bound to the
  durable classic queues ``<prefix>.requests``, ``<prefix>.retry``, ``<prefix>.dead``;
- ``<prefix>.requests`` dead-letters (reject without requeue, expiry) to ``<prefix>.dead``;
- ``<prefix>.retry`` has no consumer: a retried request waits there for its per-message TTL
  (``retry_delay_s * 2**retries``), then expires back into ``<prefix>.requests``. Only a queue's head
  expires, so a short delay may wait behind a longer one: the delay is a lower bound;
- ``<prefix>.dead`` keeps what ANNA gave up on, the reason in header ``x-anna-reason``.

Classic, not quorum, queues: a quorum queue counts each requeue towards its delivery limit, and ANNA's
worker requeues requests it merely had no free slot for. Messages are persistent, publishes confirmed.

The broker's ``consumer_timeout`` (default 30 min) closes a channel that keeps a delivery unacked longer.
The worker holds a train request only until its run has started (at most about a minute, then it
requeues it); the run itself lives in the database and the orchestrator, never in an unacked message, so
runs of any length stay far from that timeout. A score request is held while its job runs (the ack after
the scores are stored is what makes a killed worker's job run again); a job longer than the timeout is
redelivered and taken over, and the worker gives it up after ``retries + 1`` attempts. Heartbeats are
served by a thread, however long a handler takes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Empty, Queue
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pika
from pika import exceptions as amqp

from anna_backend.domain.errors import ServiceUnavailable
from anna_backend.service_layer.ports import DeadRequest, RunQueue

log = logging.getLogger(__name__)

KINDS = ("train", "score")
RETRIES_HEADER, REASON_HEADER, DEAD_AT_HEADER = "x-anna-retries", "x-anna-reason", "x-anna-dead-at"
_DEAD_LETTER_TO = {"requests": "dead", "retry": "requests", "dead": None}  # route -> where it dead-letters
_BLOCKED_TIMEOUT_S = 60.0  # a broker in a resource alarm blocks publishers; give up after this long
_ALARMS = "check the broker's disk and memory alarms (rabbitmq-diagnostics alarms)"
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """What a message carries: JSON ``{"kind": ..., "run_id": ..., "job_id": ...}``."""

    kind: str  # "train" | "score"
    run_id: int
    job_id: int | None = None

    def to_json(self) -> bytes:
        return json.dumps({"kind": self.kind, "run_id": self.run_id, "job_id": self.job_id}).encode()


@dataclass(frozen=True)
class Delivery:
    tag: int
    body: bytes
    request: Request | None  # None when the body is not a valid request
    problem: str | None  # why it is not valid
    redelivered: bool
    retries: int  # how often ANNA has retried it (x-anna-retries)


@dataclass(frozen=True)
class DeadLetter(DeadRequest):
    """The port's ``DeadRequest`` plus the whole request (None when the body is not one). ``reason`` is
    ANNA's ``x-anna-reason``, else the broker's x-death reason ("rejected", "expired", ...)."""

    request: Request | None = None


def parse_request(body: bytes) -> tuple[Request | None, str | None]:
    """The request a body carries, or None and what is wrong with it."""
    try:
        data = json.loads(body)
    except ValueError as error:
        return None, f"body is not JSON: {error}"
    if not isinstance(data, dict):
        return None, f"body is not a JSON object: {body[:80]!r}"
    kind, run_id, job_id = data.get("kind"), data.get("run_id"), data.get("job_id")
    if kind not in KINDS:
        return None, f"kind must be one of {', '.join(KINDS)}, got {kind!r}"
    if not _is_id(run_id):
        return None, f"run_id must be a positive integer, got {run_id!r}"
    if job_id is not None and not _is_id(job_id):
        return None, f"job_id must be a positive integer or null, got {job_id!r}"
    return Request(kind, run_id, job_id), None


def masked(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


class RabbitRequestQueue(RunQueue):
    """Publishes requests and peeks at the dead letters over one lazily opened connection behind a
    lock (thread-safe); a keeper thread serves its heartbeats while idle. Consumers have their own."""

    def __init__(self, url: str, prefix: str, *, retries: int = 3, retry_delay_s: float = 5.0,
                 heartbeat_s: int = 30, connect_timeout_s: float = 5.0) -> None:
        if not prefix:
            raise ValueError("the RabbitMQ prefix (ANNA_RABBITMQ_PREFIX) must not be empty")
        try:
            pika.URLParameters(url)
        except Exception as error:
            raise ValueError(f"ANNA_RABBITMQ_URL {masked(url)!r} is not an AMQP URL: {error}") from error
        self.url, self.prefix, self.retries, self.retry_delay_s = url, prefix, retries, retry_delay_s
        self.heartbeat_s, self.connect_timeout_s = heartbeat_s, connect_timeout_s
        self.queues = {route: f"{prefix}.{route}" for route in _DEAD_LETTER_TO}
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        self._keeper: threading.Thread | None = None

    def declare(self) -> None:
        self._with_channel("declare the queues", self.declare_on)

    def submitted(self, run_id: int) -> None:
        self.publish(Request("train", run_id))

    def submitted_score(self, job_id: int, run_id: int) -> None:
        self.publish(Request("score", run_id, job_id))

    def publish(self, request: Request) -> None:
        self._with_channel(f"publish the {request.kind} request for run {request.run_id}",
                           lambda channel: channel.basic_publish(self.prefix, "requests", request.to_json(),
                                                                 _properties({RETRIES_HEADER: 0}), True))

    def dead_letters(self, limit: int = 100) -> list[DeadRequest]:
        """Up to ``limit`` dead letters, oldest first, each a ``DeadLetter``: peeked, not consumed."""
        def peek(_: Any) -> list[DeadRequest]:
            peeker = self._connection.channel()  # closing it hands every message back, in place
            found: list[DeadRequest] = []
            try:
                while len(found) < limit:
                    method, properties, body = peeker.basic_get(self.queues["dead"])
                    if method is None:
                        break
                    found.append(_dead_letter(properties, body))
                return found
            finally:
                peeker.close()
        return self._with_channel("read the dead letters", peek)

    def purge(self) -> None:
        """Empty all of ANNA's queues (tests, dev reset)."""
        self._with_channel("purge the queues", lambda ch: [ch.queue_purge(q) for q in self.queues.values()])

    def delete(self) -> None:
        """Remove the queues and the exchange (tests); the next connection declares them again."""
        def remove(channel: Any) -> None:
            for name in self.queues.values():
                channel.queue_delete(name)
            channel.exchange_delete(self.prefix)
        self._with_channel("delete the queues", remove)
        self.close()

    def consumer(self, *, prefetch: int = 1) -> RequestConsumer:
        return RequestConsumer(self, prefetch=prefetch)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def declare_on(self, channel: Any) -> None:
        """Declare the topology (idempotent; the broker refuses it where it exists with other arguments)."""
        channel.exchange_declare(self.prefix, "direct", durable=True)
        for route, target in _DEAD_LETTER_TO.items():
            arguments = {"x-dead-letter-exchange": self.prefix, "x-dead-letter-routing-key": target} \
                if target else {}
            channel.queue_declare(self.queues[route], durable=True, arguments=arguments)
            channel.queue_bind(self.queues[route], self.prefix, routing_key=route)

    def parameters(self, role: str) -> pika.URLParameters:
        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = self.heartbeat_s
        parameters.socket_timeout = self.connect_timeout_s
        parameters.stack_timeout = 2 * self.connect_timeout_s  # TCP connect plus the AMQP handshake
        parameters.connection_attempts = 1
        parameters.blocked_connection_timeout = _BLOCKED_TIMEOUT_S
        parameters.client_properties = {"connection_name": f"anna {role} ({self.prefix})"}
        return parameters

    def unavailable(self, what: str, error: BaseException) -> ServiceUnavailable:
        """What failed, naming the broker (password masked) and what to check."""
        if isinstance(error, amqp.NackError):
            hint = f"the broker refused the message: {_ALARMS}"
        elif isinstance(error, amqp.UnroutableError):
            hint = f"no queue took the message: {', '.join(self.queues.values())} must exist (declare())"
        elif isinstance(error, amqp.ConnectionBlockedTimeout):
            hint = f"the broker blocked publishers for over {_BLOCKED_TIMEOUT_S:.0f} s: {_ALARMS}"
        elif isinstance(error, amqp.ProbableAuthenticationError):
            hint = "the login was refused: check the user and password in ANNA_RABBITMQ_URL"
        elif isinstance(error, amqp.ProbableAccessDeniedError):
            hint = "access was refused: check the vhost in ANNA_RABBITMQ_URL and the user's permissions"
        elif isinstance(error, amqp.ChannelClosedByBroker):
            hint = f"the broker said {error.reply_code} {error.reply_text}" + (
                f"; queues {self.prefix}.* exist with other arguments: delete them or change "
                "ANNA_RABBITMQ_PREFIX" if error.reply_code == 406 else "")
        else:
            hint = (f"check that the broker is running and that ANNA_RABBITMQ_URL points to it "
                    f"({type(error).__name__}: {str(error)[:200] or 'connection lost'})")
        return ServiceUnavailable(f"RabbitMQ at {masked(self.url)}: could not {what}: {hint}")

    def _with_channel(self, what: str, work: Callable[[Any], T]) -> T:
        """Run ``work`` on the shared channel; reopen once if a connection that was up has been lost."""
        with self._lock:
            reused = self._channel is not None and self._channel.is_open
            while True:
                try:
                    return work(self._open())
                except amqp.AMQPError as error:
                    self._drop()
                    lost = isinstance(error, amqp.AMQPConnectionError | amqp.ChannelWrongStateError)
                    if not (reused and lost):
                        raise self.unavailable(what, error) from error
                    log.warning("lost the connection to RabbitMQ at %s (%r); reconnecting once",
                                masked(self.url), error)
                    reused = False

    def _open(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._drop()
            self._connection = pika.BlockingConnection(self.parameters("publisher"))
            self._channel = self._connection.channel()
            self.declare_on(self._channel)
            self._channel.confirm_delivery()
            if self._keeper is None and self.heartbeat_s > 0:
                self._keeper = threading.Thread(target=self._keep, name=f"rabbitmq-keeper-{self.prefix}",
                                                daemon=True)
                self._keeper.start()
        return self._channel

    def _keep(self) -> None:
        """Serve the idle connection's heartbeats, else the broker drops it after two missed ones."""
        while True:
            time.sleep(self.heartbeat_s / 2)
            with self._lock:
                if self._connection is None:
                    self._keeper = None
                    return
                try:
                    self._connection.process_data_events(0)
                except amqp.AMQPError as error:  # the next publish opens a new one
                    log.info("RabbitMQ at %s closed the idle connection: %r", masked(self.url), error)
                    self._drop()

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except amqp.AMQPError:  # already going away
                pass


class RequestConsumer:
    """One connection + channel consuming ``<prefix>.requests`` with ``basic_qos(prefetch)``.

    Its I/O runs in a background thread it owns (``start()``), calling ``process_data_events``
    continuously so heartbeats are served however long the handlers take. Deliveries land in a
    thread-safe queue. Every settle method may be called from any thread: it hands the work to the I/O
    thread (``add_callback_threadsafe``) and waits until it is done, or raises ``ServiceUnavailable`` when
    the connection is gone (the broker then redelivers what was unacked). A consumer does not reconnect:
    when ``alive`` turns false, ``get`` raises and the caller makes a new one.
    """

    def __init__(self, queue: RabbitRequestQueue, *, prefetch: int = 1) -> None:
        self._queue, self._prefetch = queue, prefetch
        self._deliveries: Queue[Delivery] = Queue()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._publisher: Any = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name=f"rabbitmq-{self._queue.prefix}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()  # bounded by the connection's stack timeout
        if self._failure is not None:
            raise self._queue.unavailable("start consuming", self._failure) from self._failure

    @property
    def alive(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and not self._stop.is_set()
                and self._channel is not None and self._channel.is_open)

    def get(self, timeout_s: float) -> Delivery | None:
        """The next delivery, or None after ``timeout_s``; raises when the consumer is not alive."""
        if not self.alive:
            raise self._gone("take a request")
        try:
            return self._deliveries.get(timeout=timeout_s)
        except Empty:
            return None

    def ack(self, delivery: Delivery) -> None:
        self._settle("ack", lambda: self._channel.basic_ack(delivery.tag))

    def requeue(self, delivery: Delivery) -> None:
        self._settle("requeue", lambda: self._channel.basic_nack(delivery.tag, requeue=True))

    def retry(self, delivery: Delivery, reason: str) -> bool:
        """Send a copy to wait in ``<prefix>.retry``, then ack; once retries are used up, dead-letter."""
        if delivery.retries >= self._queue.retries:
            self.dead_letter(delivery, reason)
            return False
        delay_ms = round(self._queue.retry_delay_s * 2**delivery.retries * 1000)
        headers = {RETRIES_HEADER: delivery.retries + 1, REASON_HEADER: reason}
        self._settle("retry", lambda: self._copy_and_ack(delivery, "retry", _properties(headers, delay_ms)))
        return True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = {RETRIES_HEADER: delivery.retries, REASON_HEADER: reason,
                   DEAD_AT_HEADER: datetime.now(UTC).isoformat()}
        self._settle("dead-letter", lambda: self._copy_and_ack(delivery, "dead", _properties(headers)))

    def close(self) -> None:
        """Stop the I/O thread and close the connection; the broker requeues what was not acked."""
        self._stop.set()
        if self._thread is None or self._thread is threading.current_thread():
            return
        try:
            self._connection.add_callback_threadsafe(lambda: None)  # wake the loop now
        except (AttributeError, amqp.AMQPError):  # never connected, or already closed
            pass
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        try:
            self._connection = pika.BlockingConnection(self._queue.parameters("consumer"))
            self._channel = self._connection.channel()
            self._queue.declare_on(self._channel)
            self._channel.basic_qos(prefetch_count=self._prefetch)
            self._channel.add_on_cancel_callback(self._on_cancel)
            self._publisher = self._connection.channel()
            self._publisher.confirm_delivery()
            self._channel.basic_consume(self._queue.queues["requests"], self._on_message)
        except Exception as error:  # start() raises it
            self._failure = error
        self._ready.set()
        try:
            while self._failure is None and not self._stop.is_set() and self._channel.is_open:
                self._connection.process_data_events(time_limit=0.5)
        except amqp.AMQPError as error:
            self._failure = error
            log.warning("the consumer of %s lost its connection: %r", self._queue.queues["requests"], error)
        finally:
            if self._connection is not None and self._connection.is_open:
                try:
                    self._connection.close()
                except amqp.AMQPError:
                    pass

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        request, problem = parse_request(body)
        retries = _count((properties.headers or {}).get(RETRIES_HEADER))
        self._deliveries.put(Delivery(tag=method.delivery_tag, body=body, request=request, problem=problem,
                                      redelivered=bool(method.redelivered), retries=retries))

    def _on_cancel(self, _frame: Any) -> None:
        self._failure = RuntimeError(f"the broker cancelled the consumer ({self._queue.queues['requests']} "
                                     "deleted?)")
        self._stop.set()

    def _copy_and_ack(self, delivery: Delivery, route: str, properties: pika.BasicProperties) -> None:
        # Confirmed before the ack: a crash in between duplicates the request rather than losing it.
        self._publisher.basic_publish(self._queue.prefix, route, delivery.body, properties, True)
        self._channel.basic_ack(delivery.tag)

    def _settle(self, what: str, work: Callable[[], None]) -> None:
        thread, connection = self._thread, self._connection
        if thread is None or not self.alive:
            raise self._gone(what)
        if thread is threading.current_thread():
            return work()
        done, failure = threading.Event(), []  # type: tuple[threading.Event, list[BaseException]]

        def on_io_thread() -> None:
            try:
                work()
            except BaseException as error:  # handed to the waiting caller
                failure.append(error)
            finally:
                done.set()

        try:
            connection.add_callback_threadsafe(on_io_thread)
        except amqp.AMQPError as error:
            raise self._gone(what, error) from error
        while not done.wait(0.1):
            if not thread.is_alive():
                raise self._gone(what)
        if failure and isinstance(failure[0], amqp.AMQPError):
            raise self._queue.unavailable(what, failure[0]) from failure[0]
        if failure:
            raise failure[0]

    def _gone(self, what: str, error: BaseException | None = None) -> ServiceUnavailable:
        cause = error or self._failure
        return ServiceUnavailable(
            f"RabbitMQ at {masked(self._queue.url)}: could not {what}: the consumer of "
            f"{self._queue.queues['requests']} {'was never started' if self._thread is None else 'is closed'}"
            f"{f' ({type(cause).__name__}: {cause})' if cause else ''}; its unacked requests go back to the "
            "queue: start a new consumer")


def _properties(headers: dict[str, Any], expiration_ms: int | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, app_id="anna",
        headers=headers, timestamp=int(time.time()),
        expiration=None if expiration_ms is None else str(expiration_ms))


def _dead_letter(properties: Any, body: bytes) -> DeadLetter:
    headers = properties.headers or {}
    death = (headers.get("x-death") or [{}])[0]  # the newest
    dead_at = headers.get(DEAD_AT_HEADER)
    request, _ = parse_request(body)
    return DeadLetter(body=body.decode(errors="replace"), kind=request.kind if request else None,
                      run_id=request.run_id if request else None, request=request,
                      job_id=request.job_id if request else None,
                      reason=_text(headers.get(REASON_HEADER) or death.get("reason") or "unknown"),
                      retries=_count(headers.get(RETRIES_HEADER)),
                      dead_at=datetime.fromisoformat(_text(dead_at)) if dead_at else death.get("time"))


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
