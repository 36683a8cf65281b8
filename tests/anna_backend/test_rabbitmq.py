"""The RabbitMQ request queue against a real broker (``ANNA_TEST_RABBITMQ_URL``, default the local one).

Each test declares its own queues under a fresh prefix and deletes them afterwards. Without a broker the
tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from anna_backend.adapters.rabbitmq import DeadLetter, RabbitRequestQueue, Request, masked
from anna_backend.adapters.rabbitmq_consumer import Delivery, RequestConsumer
from anna_backend.domain.errors import ServiceUnavailable

pytestmark = pytest.mark.integration

BROKER_URL = os.environ.get("ANNA_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(scope="module")
def broker_url() -> str:
    parameters = pika.URLParameters(BROKER_URL)
    parameters.socket_timeout = parameters.stack_timeout = 3
    parameters.connection_attempts = 1
    try:
        pika.BlockingConnection(parameters).close()
    except Exception as error:  # no server, refused login: both mean "no RabbitMQ here"
        problem = f"RabbitMQ at {masked(BROKER_URL)} is unreachable: {error!r}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem + " (CI=true: RabbitMQ tests must run)", pytrace=False)
        pytest.skip(problem)
    return BROKER_URL


class Broker:
    """A test's own prefix: queues and consumers made here are closed and deleted at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"anna-test-{uuid.uuid4().hex[:12]}"
        self.queues: list[RabbitRequestQueue] = []
        self.consumers: list[RequestConsumer] = []
        self.connection = pika.BlockingConnection(pika.URLParameters(url))

    def queue(self, url: str | None = None, **options: Any) -> RabbitRequestQueue:
        options = {"retries": 2, "retry_delay_s": 0.2, **options}
        queue = RabbitRequestQueue(url or self.url, self.prefix, **options)
        queue.declare()
        self.queues.append(queue)
        return queue

    def consumer(self, queue: RabbitRequestQueue, **options: Any) -> RequestConsumer:
        consumer = queue.consumer(**options)
        self.consumers.append(consumer)
        consumer.start()
        return consumer

    def channel(self) -> Any:
        return self.connection.channel()

    def waiting(self, route: str = "requests") -> int:
        """Messages ready in ``<prefix>.<route>`` (not counting unacked ones)."""
        channel = self.channel()
        try:
            return int(channel.queue_declare(f"{self.prefix}.{route}", passive=True).method.message_count)
        finally:
            channel.close()

    def publish_raw(self, body: bytes) -> None:
        channel = self.channel()
        channel.basic_publish(self.prefix, "requests", body)
        channel.close()

    def cleanup(self) -> None:
        for consumer in self.consumers:
            consumer.close()
        for queue in self.queues:
            queue.close()
        RabbitRequestQueue(self.url, self.prefix).delete()
        self.connection.close()


class Proxy:
    """A TCP relay to the broker that a test can cut: a lost connection as the client sees one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = url.replace(parts.netloc.rpartition("@")[2], f"127.0.0.1:{self.listener.getsockname()[1]}")
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client = self.listener.accept()[0]
            except OSError:  # stopped
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        Proxy._cut(source, target)

    @staticmethod
    def _cut(*ends: socket.socket) -> None:
        for end in ends:  # shutdown, not just close: it wakes a thread blocked in recv and sends the FIN
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def sever(self) -> None:
        self._cut(*self.sockets)
        self.sockets.clear()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        except OSError:
            pass
        self.listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.sever()


@pytest.fixture
def broker(broker_url: str) -> Iterator[Broker]:
    broker = Broker(broker_url)
    try:
        yield broker
    finally:
        broker.cleanup()


def take(consumer: RequestConsumer, timeout_s: float = 5.0) -> Delivery:
    delivery = consumer.get(timeout_s)
    assert delivery is not None, f"nothing arrived within {timeout_s} s"
    return delivery


def test_published_request_round_trips_and_ack_removes_it(broker: Broker) -> None:
    queue = broker.queue()
    queue.submitted(7)
    queue.submitted_score(9, 3)
    consumer = broker.consumer(queue, prefetch=2)

    first, second = take(consumer), take(consumer)
    assert (first.request, first.problem, first.retries) == (Request("train", 7), None, 0)
    assert first.redelivered is False
    assert second.request == Request("score", 3, job_id=9)
    consumer.ack(first)
    consumer.ack(second)
    assert consumer.get(0.3) is None
    consumer.close()
    assert broker.waiting() == 0  # acked means gone, not back in the queue after close


def test_messages_are_persistent_and_queues_durable(broker: Broker) -> None:
    queue = broker.queue()
    queue.submitted(1)
    channel = broker.channel()
    method, properties, body = channel.basic_get(f"{broker.prefix}.requests", auto_ack=True)
    assert method is not None and body == Request("train", 1).to_json()
    assert properties.delivery_mode == 2
    channel.close()
    for route in ("requests", "retry", "dead"):
        channel = broker.channel()
        with pytest.raises(ChannelClosedByBroker) as refused:  # the broker refuses a non-durable twin
            channel.queue_declare(f"{broker.prefix}.{route}", durable=False)
        assert refused.value.reply_code == 406 and "durable" in refused.value.reply_text


def test_unacked_delivery_of_closed_consumer_is_redelivered_to_the_next(broker: Broker) -> None:
    queue = broker.queue()
    queue.submitted(11)
    first = broker.consumer(queue)
    held = take(first)
    assert held.redelivered is False
    first.close()
    assert not first.alive
    with pytest.raises(ServiceUnavailable, match="closed"):
        first.ack(held)

    again = take(broker.consumer(queue))
    assert again.request == Request("train", 11) and again.redelivered is True


def test_retry_brings_the_request_back_after_the_delay_with_one_more_retry(broker: Broker) -> None:
    queue = broker.queue(retry_delay_s=0.6)
    queue.submitted(5)
    consumer = broker.consumer(queue)
    delivery = take(consumer)
    retried_at = time.monotonic()
    assert consumer.retry(delivery, "airflow unreachable") is True

    assert consumer.get(0.3) is None  # still waiting in <prefix>.retry
    back = take(consumer)
    assert time.monotonic() - retried_at >= 0.55
    assert (back.request, back.retries) == (Request("train", 5), 1)
    consumer.ack(back)
    assert queue.dead_letters() == []


def test_exhausted_retries_land_in_the_dead_letters_with_the_reason(broker: Broker) -> None:
    queue = broker.queue(retries=1, retry_delay_s=0.1)
    queue.submitted(8)
    consumer = broker.consumer(queue)
    assert consumer.retry(take(consumer), "airflow unreachable") is True
    last = take(consumer)
    assert last.retries == 1
    assert consumer.retry(last, "airflow still unreachable") is False

    [dead] = queue.dead_letters()
    assert isinstance(dead, DeadLetter)
    assert (dead.request, dead.kind, dead.run_id) == (Request("train", 8), "train", 8)
    assert (dead.reason, dead.retries) == ("airflow still unreachable", 1)
    assert dead.dead_at is not None and abs(datetime.now(UTC) - dead.dead_at) < timedelta(seconds=30)
    assert consumer.get(0.3) is None and broker.waiting() == 0


def test_invalid_body_is_delivered_with_its_problem_and_can_be_dead_lettered(broker: Broker) -> None:
    queue = broker.queue()
    broker.publish_raw(b"not json")
    broker.publish_raw(b'{"kind": "bake", "run_id": 1}')
    consumer = broker.consumer(queue, prefetch=2)
    garbled, unknown = take(consumer), take(consumer)
    assert garbled.request is None and garbled.problem is not None and "not JSON" in garbled.problem
    assert unknown.request is None and unknown.problem is not None and "'bake'" in unknown.problem
    consumer.dead_letter(garbled, garbled.problem)
    consumer.dead_letter(unknown, unknown.problem)

    dead = queue.dead_letters()
    assert [(d.body, d.reason, d.request) for d in dead] == [
        ("not json", garbled.problem, None), ('{"kind": "bake", "run_id": 1}', unknown.problem, None)]


def test_a_dead_score_request_names_its_job(broker: Broker) -> None:
    queue = broker.queue()
    queue.submitted_score(4, 2)
    consumer = broker.consumer(queue)
    consumer.dead_letter(take(consumer), "no score job 4")
    [dead] = queue.dead_letters()
    assert (dead.kind, dead.run_id, dead.job_id, dead.reason) == ("score", 2, 4, "no score job 4")


def test_dead_letters_are_peeked_not_consumed_and_broker_reasons_are_read(broker: Broker) -> None:
    queue = broker.queue()
    for run_id in (1, 2):
        queue.submitted(run_id)
    consumer = broker.consumer(queue)
    consumer.dead_letter(take(consumer), "unknown run")
    consumer.close()
    channel = broker.channel()  # someone else rejects the second: the broker dead-letters it
    method, _, _ = channel.basic_get(f"{broker.prefix}.requests")
    channel.basic_reject(method.delivery_tag, requeue=False)
    channel.close()

    deadline = time.monotonic() + 5
    while broker.waiting("dead") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = queue.dead_letters()
    assert [(d.run_id, d.reason) for d in first] == [(1, "unknown run"), (2, "rejected")]
    assert first[1].dead_at is not None  # from the broker's x-death
    assert queue.dead_letters() == first
    assert queue.dead_letters(limit=1) == first[:1]
    assert broker.waiting("dead") == 2


def test_heartbeats_are_served_while_a_handler_holds_a_delivery(broker: Broker) -> None:
    queue = broker.queue(heartbeat_s=2)
    queue.submitted(3)
    consumer = broker.consumer(queue)
    delivery = take(consumer)
    time.sleep(6)  # three heartbeat intervals: the broker would have closed a connection nobody served
    assert consumer.alive
    consumer.ack(delivery)
    consumer.close()
    assert broker.waiting() == 0


def test_idle_publisher_connection_is_kept_open(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    queue = broker.queue(heartbeat_s=1)
    queue.submitted(1)
    time.sleep(3.5)  # the broker drops a connection after two missed heartbeats, unless they are served
    with caplog.at_level(logging.INFO, logger="anna_backend.adapters.rabbitmq"):
        queue.submitted(2)
    assert "lost the connection" not in caplog.text and "closed the idle connection" not in caplog.text
    assert broker.waiting() == 2


def test_lost_connections_publisher_reconnects_consumer_reports(broker: Broker,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with Proxy(broker.url) as proxy:
        queue = broker.queue(url=proxy.url)
        queue.submitted(1)
        consumer = broker.consumer(queue)
        held = take(consumer)
        proxy.sever()
        with caplog.at_level(logging.WARNING, logger="anna_backend.adapters.rabbitmq"):
            queue.submitted(2)  # the publisher's connection was lost too: it reconnects once
        assert "reconnecting once" in caplog.text

        deadline = time.monotonic() + 5
        while consumer.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not consumer.alive
        with pytest.raises(ServiceUnavailable, match="start a new consumer"):
            consumer.get(0.1)
        with pytest.raises(ServiceUnavailable):
            consumer.ack(held)

        proxy.stop()  # now the broker is unreachable: an error, not a hang
        proxy.sever()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="check that the broker is running"):
            queue.submitted(3)
        assert time.monotonic() - started < 5

    again = broker.consumer(broker.queue(), prefetch=2)  # the held request is back, and the one sent again
    assert {take(again).request, take(again).request} == {Request("train", 1), Request("train", 2)}


def test_unreachable_broker_raises_a_clear_error_without_the_password(broker: Broker) -> None:
    queue = RabbitRequestQueue("amqp://anna:s3cret@127.0.0.1:1/%2F", broker.prefix, connect_timeout_s=1)
    for attempt in (lambda: queue.submitted(1), lambda: queue.consumer().start()):
        with pytest.raises(ServiceUnavailable) as unavailable:
            attempt()
        message = str(unavailable.value)
        assert "RabbitMQ at amqp://anna:***@127.0.0.1:1/" in message and "s3cret" not in message
        assert "ANNA_RABBITMQ_URL" in message


def test_settle_methods_work_from_other_threads(broker: Broker) -> None:
    queue = broker.queue()
    for run_id in (1, 2, 3):
        queue.submitted(run_id)
    consumer = broker.consumer(queue, prefetch=3)
    by_run = {delivery.request.run_id: delivery for delivery in (take(consumer) for _ in range(3))
              if delivery.request is not None}
    settle: list[Callable[[], object]] = [
        lambda: consumer.ack(by_run[1]),
        lambda: consumer.requeue(by_run[2]),
        lambda: consumer.dead_letter(by_run[3], "bad configuration"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for future in [pool.submit(work) for work in settle]:
            future.result(timeout=10)

    back = take(consumer)
    assert (back.request, back.redelivered) == (Request("train", 2), True)
    consumer.ack(back)
    assert [(d.run_id, d.reason) for d in queue.dead_letters()] == [(3, "bad configuration")]


def test_publish_is_safe_from_many_threads(broker: Broker) -> None:
    queue = broker.queue()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(queue.submitted, range(1, 41)))
    consumer = broker.consumer(queue, prefetch=50)
    seen = set()
    for _ in range(40):
        delivery = take(consumer)
        assert delivery.request is not None
        seen.add(delivery.request.run_id)
        consumer.ack(delivery)
    assert seen == set(range(1, 41))
