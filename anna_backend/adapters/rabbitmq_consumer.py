"""The consuming side of full mode's request queue (topology and publishing in ``adapters.rabbitmq``):
one connection whose I/O thread serves heartbeats however long a handler holds a delivery, and settles
(ack, requeue, retry, dead-letter) handed to that thread from any other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from queue import Empty, Queue
from typing import Any

import pika
from pika import exceptions as amqp

from anna_backend.adapters.rabbitmq import (
    DEAD_AT_HEADER,
    REASON_HEADER,
    RETRIES_HEADER,
    RabbitRequestQueue,
    Request,
    count_header,
    masked,
    message_properties,
    parse_request,
)
from anna_backend.domain.errors import ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    tag: int
    body: bytes
    request: Request | None  # None when the body is not a valid request
    problem: str | None  # why it is not valid
    redelivered: bool
    retries: int  # how often ANNA has retried it (x-anna-retries)



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
        properties = message_properties(headers, delay_ms)
        self._settle("retry", lambda: self._copy_and_ack(delivery, "retry", properties))
        return True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = {RETRIES_HEADER: delivery.retries, REASON_HEADER: reason,
                   DEAD_AT_HEADER: datetime.now(UTC).isoformat()}
        self._settle("dead-letter", lambda: self._copy_and_ack(delivery, "dead", message_properties(headers)))

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
        retries = count_header((properties.headers or {}).get(RETRIES_HEADER))
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
