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
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pika
from pika import exceptions as amqp

from anna_backend.domain.errors import ServiceUnavailable
from anna_backend.service_layer.ports import DeadRequest, RunQueue

if TYPE_CHECKING:
    from anna_backend.adapters.rabbitmq_consumer import RequestConsumer

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
    lock (thread-safe); a keeper thread serves its heartbeats while idle. Consumers
    (``adapters.rabbitmq_consumer.RequestConsumer``) have their own."""

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
        properties = message_properties({RETRIES_HEADER: 0})
        self._with_channel(f"publish the {request.kind} request for run {request.run_id}",
                           lambda channel: channel.basic_publish(self.prefix, "requests", request.to_json(),
                                                                 properties, True))

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
        from anna_backend.adapters.rabbitmq_consumer import RequestConsumer

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


def message_properties(headers: dict[str, Any], expiration_ms: int | None = None) -> pika.BasicProperties:
    """Persistent JSON message properties; ``expiration_ms``: a per-message TTL (the retry queue's delay)."""
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
                      retries=count_header(headers.get(RETRIES_HEADER)),
                      dead_at=datetime.fromisoformat(_text(dead_at)) if dead_at else death.get("time"))


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def count_header(value: object) -> int:
    """A non-negative count header's value (0 when absent or malformed)."""
    return value if isinstance(value, int) and value >= 0 else 0
