"""Broker failover of the MQTT sink: `urls`, a breaker per URL, moving back to the first.

Two real Mosquitto brokers (with persistence, so a subscriber's session survives a
restart) and a sink in this process: the first broker goes away mid-stream and comes
back; every reading is counted at the subscribers of both.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.sinks.mqtt import MqttSink
from tests.support.broker import PersistentBroker, ProcessSubscriber, free_port
from tests.support.waiting import eventually

TOPIC = "gw/t/+/env"
RATE = 500  # readings/s offered while the brokers come and go


def reading(seq: int) -> dict:
    return {"gateway": "t", "device": "dev-1", "stream": "env", "seq": seq, "data": {"n": seq}}


def failover_sink(urls: list[str], **options) -> MqttSink:
    options = {
        "type": "mqtt",
        "urls": urls,
        "retry": {"base": 0.05, "cap": 0.3},
        "breaker": {"failures": 5, "reset_after": 1.0},
        "queue_size": 100_000,
        **options,
    }
    return MqttSink("mqtt", options, "t")


class Stream:
    """Offers readings numbered from 0 at RATE per second until stopped."""

    def __init__(self, sink: MqttSink):
        self.sink = sink
        self.offered = 0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            due = int((loop.time() - started) * RATE)
            while self.offered < due:
                self.sink.offer(reading(self.offered), {})
                self.offered += 1
            await asyncio.sleep(0.01)  # the stream's pace, not synchronisation

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.offered


def test_moves_to_the_next_url_when_the_first_dies_and_back_once_it_answers():
    first, second = PersistentBroker().start(), PersistentBroker().start()
    subscribers = [ProcessSubscriber(first.port, TOPIC), ProcessSubscriber(second.port, TOPIC)]

    async def scenario() -> tuple[MqttSink, int, dict]:
        sink = failover_sink([first.url, second.url])
        task = asyncio.create_task(sink.run())
        stream = Stream(sink)
        stream.start()
        await eventually(lambda: sink.counters["delivered"] >= 200, what="first readings")
        assert sink.stats()["broker"] == first.url
        await asyncio.to_thread(first.stop)  # keeps its subscriber's session on disk
        await eventually(lambda: sink.stats()["broker"] == second.url and sink.connected)
        on_second = sink.counters["delivered"]
        await eventually(lambda: sink.counters["delivered"] >= on_second + 200, what="second")
        moved = dict(sink.counters)
        await asyncio.to_thread(first.start)
        await eventually(lambda: sink.stats()["broker"] == first.url and sink.connected, 15)
        back = sink.counters["delivered"]
        await eventually(lambda: sink.counters["delivered"] >= back + 200, what="back on first")
        total = await stream.stop()
        await eventually(lambda: sink.counters["delivered"] == total, what="every PUBACK")
        await sink.stop()
        await asyncio.wait_for(task, 5)
        return sink, total, moved

    try:
        sink, total, moved = asyncio.run(scenario())
        for subscriber in subscribers:
            asyncio.run(eventually(lambda s=subscriber: s.seqs(), what="arrivals at each broker"))
        asyncio.run(_all_arrived(subscribers, total))
        arrived = [subscriber.seqs() for subscriber in subscribers]
    finally:
        for subscriber in subscribers:
            subscriber.close()
        first.close()
        second.close()
    assert moved["failovers"] == 1, moved
    assert sink.counters["failovers"] == 2, sink.counters  # there and back
    assert set(arrived[0]) | set(arrived[1]) == set(range(total))
    # Each broker got a run of the stream: the first before and after the move, the second
    # in between; the move back waited for the window, so nothing was sent twice then.
    assert arrived[1] and min(arrived[1]) > 0 and max(arrived[1]) < total - 1
    assert sink.counters["resent"] <= sink.max_inflight, sink.counters


async def _all_arrived(subscribers: list[ProcessSubscriber], total: int) -> None:
    def union() -> int:
        return len(set().union(*(subscriber.seqs() for subscriber in subscribers)))

    await eventually(lambda: union() >= total, 30, f"{total} readings at the two brokers")


def test_a_url_whose_breaker_is_open_is_skipped_while_another_answers():
    dead = f"mqtt://127.0.0.1:{free_port()}"  # refuses at once
    alive = PersistentBroker().start()

    async def scenario() -> MqttSink:
        sink = failover_sink([dead, alive.url], breaker={"failures": 1, "reset_after": 60.0})
        task = asyncio.create_task(sink.run())
        sink.offer(reading(0), {})
        await eventually(lambda: sink.counters["delivered"] == 1, what="delivery")
        assert sink.endpoints[0].breaker.state == "open"
        assert sink.endpoints[0].breaker.failures == 1
        sink._connection.transport.abort()  # the link to the live broker drops
        await eventually(lambda: sink.counters["failures"] == 1, what="the loss noticed")
        sink.offer(reading(1), {})
        await eventually(lambda: sink.counters["delivered"] == 2, what="delivery again")
        await sink.stop()
        await asyncio.wait_for(task, 5)
        return sink

    try:
        sink = asyncio.run(scenario())
    finally:
        alive.close()
    assert sink.stats()["broker"] == alive.url
    assert sink.endpoints[0].breaker.failures == 1  # not tried again while its breaker is open
    assert sink.counters["failovers"] == 0  # the first connection counts as none


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"urls": ["mqtt://a", "http://b"]}, "sinks.mqtt.urls[1]: expected mqtt://host:port"),
        ({"urls": ["mqtt://a", "mqtt://"]}, "sinks.mqtt.urls[1]: 'mqtt://' names no host"),
    ],
)
def test_bad_urls_are_refused_naming_the_entry(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MqttSink("mqtt", {"type": "mqtt", **options}, "t")
