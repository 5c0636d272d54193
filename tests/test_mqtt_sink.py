"""MqttSink against a real Mosquitto: delivery, availability, batching, outages, auth, TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import msgpack
import pytest

from gateway.sinks.base import SinkError
from gateway.sinks.mqtt import MqttSink
from gateway.store.buffer import BufferDatabase
from gateway.store.queues import BufferWriter, DiskQueue
from tests.support.broker import Broker, PersistentBroker, ProcessSubscriber, Subscriber, free_port
from tests.support.waiting import eventually

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_RETRY = {"base": 0.05, "cap": 0.3}


def reading(seq: int, device: str = "dev-1", stream: str = "env", gateway: str = "t") -> dict:
    return {
        "gateway": gateway,
        "device": device,
        "stream": stream,
        "seq": seq,
        "ts": 1764236400.0 + seq / 1000,
        "data": {"temperature": 20 + seq % 10, "humidity": 40.5},
    }


def make_sink(url: str, gateway: str = "t", **options) -> MqttSink:
    options = {"type": "mqtt", "url": url, "retry": FAST_RETRY, **options}
    return MqttSink("mqtt", options, gateway)


async def received(subscriber, predicate, timeout: float = 20.0) -> None:
    """Wait (without blocking the loop) until the subscriber's messages satisfy predicate."""
    done = await asyncio.to_thread(subscriber.wait_for, predicate, timeout)
    assert done, f"subscriber saw {len(subscriber.messages)} messages"


class Running:
    """async with Running(sink): the sender task runs inside, stop() on the way out."""

    def __init__(self, sink: MqttSink):
        self.sink = sink

    async def __aenter__(self) -> MqttSink:
        self.task = asyncio.create_task(self.sink.run())
        return self.sink

    async def __aexit__(self, *exc) -> None:
        await self.sink.stop()
        await asyncio.wait_for(self.task, 5)


def seqs(messages, topic_prefix: str = "") -> list[int]:
    return [
        json.loads(payload)["seq"]
        for topic, payload, _ in messages
        if topic.startswith(topic_prefix) and not topic.endswith("/status")
    ]


# -- brokers with extra configuration --------------------------------------------------------


# -- delivery ----------------------------------------------------------------------------------


def test_qos1_delivers_every_reading_once_and_in_order(broker):
    count = 5000
    subscriber = Subscriber(broker.port, "gw/t/dev-1/#")

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, qos=1)) as sink:
            for seq in range(count):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["delivered"] == count, what="PUBACKs")
            await received(subscriber, lambda m: len(m) >= count)
        return sink

    sink = asyncio.run(scenario())
    subscriber.close()
    assert seqs(subscriber.messages) == list(range(count))
    assert {topic for topic, _, _ in subscriber.messages} == {"gw/t/dev-1/env"}
    # every data message, plus availability online and offline, was acknowledged
    assert sink.counters["published"] == count + 2
    assert sink.counters["acked"] == count + 2
    assert json.loads(subscriber.messages[0][1]) == reading(0)


def test_qos0_delivers_after_writing(broker):
    count = 2000
    subscriber = Subscriber(broker.port, "gw/t/+/env")

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, qos=0)) as sink:
            for seq in range(count):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["sent_qos0"] == count)
            await received(subscriber, lambda m: len(m) >= count)
        return sink

    sink = asyncio.run(scenario())
    subscriber.close()
    assert sorted(seqs(subscriber.messages)) == list(range(count))
    assert sink.counters["acked"] == 2  # only availability online/offline ask for a PUBACK
    assert sink.counters["delivered"] == 0  # written is sent, not confirmed delivered
    assert sink.depth == 0  # and never sent again


def test_topic_template_and_route_overrides(broker):
    subscriber = Subscriber(broker.port, "#")
    custom = {"sink": "mqtt", "topic": "custom/{gateway}/{device}", "qos": 0, "retain": True}

    async def scenario() -> None:
        sink = make_sink(broker.url, gateway="lab", topic="lab/{gateway}/{device}/{stream}")
        async with Running(sink):
            sink.offer(reading(1, device="pump", stream="flow", gateway="lab"), {})
            sink.offer(reading(2, device="a/b+c#", gateway="lab"), {})  # levels are sanitised
            sink.offer(reading(3, device="fan", gateway="lab"), custom)
            await received(subscriber, lambda m: len(seqs(m)) >= 3)

    asyncio.run(scenario())
    subscriber.close()
    topics = [topic for topic, _, _ in subscriber.messages if not topic.endswith("/status")]
    assert topics == ["lab/lab/pump/flow", "lab/lab/a_b_c_/env", "custom/lab/fan"]
    # retain from the route: a late subscriber still gets reading 3
    late = Subscriber(broker.port, "custom/#")
    assert late.wait_for(lambda m: len(m) == 1, 10)
    late.close()
    assert json.loads(late.messages[0][1])["seq"] == 3


def test_batch_mode_sends_json_arrays_per_topic(broker):
    subscriber = Subscriber(broker.port, "gw/t/+/env")
    route = {"sink": "mqtt", "batch": {"max_readings": 50}}

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, max_batch=500)) as sink:
            items = [reading(seq) for seq in range(300)] + [reading(300, device="dev-2")]
            for item in items:
                sink.offer(item, route)
            await eventually(lambda: sink.counters["delivered"] == 301)
            await received(subscriber, lambda m: len(m) >= 7)
        return sink

    asyncio.run(scenario())
    subscriber.close()
    batches = [json.loads(payload) for _, payload, _ in subscriber.messages]
    assert all(isinstance(batch, list) for batch in batches)
    assert [len(batch) for batch in batches] == [50] * 6 + [1]
    assert [r["seq"] for batch in batches for r in batch] == list(range(301))
    assert subscriber.messages[-1][0] == "gw/t/dev-2/env"


def test_batches_gather_interleaved_devices_per_topic_in_order(broker):
    subscriber = Subscriber(broker.port, "gw/t/+/env")
    route = {"sink": "mqtt", "batch": {"max_readings": 50}}

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, max_batch=500)) as sink:
            for seq in range(200):  # two devices, alternating reading by reading
                sink.offer(reading(seq, device=f"dev-{seq % 2}"), route)
            await eventually(lambda: sink.counters["delivered"] == 200)
            await received(subscriber, lambda m: len(m) >= 4)
        return sink

    asyncio.run(scenario())
    subscriber.close()
    assert len(subscriber.messages) == 4
    per_device: dict[str, list[int]] = {}
    for topic, payload, _ in subscriber.messages:
        batch = json.loads(payload)
        assert len(batch) == 50
        assert {f"gw/t/{r['device']}/env" for r in batch} == {topic}
        per_device.setdefault(topic, []).extend(r["seq"] for r in batch)
    assert per_device == {
        "gw/t/dev-0/env": list(range(0, 200, 2)),
        "gw/t/dev-1/env": list(range(1, 200, 2)),
    }


def test_batch_mode_with_msgpack_encoding(broker):
    subscriber = Subscriber(broker.port, "gw/t/+/env")
    route = {"sink": "mqtt", "encoding": "msgpack", "batch": {"max_readings": 10}}

    async def scenario() -> None:
        async with Running(make_sink(broker.url)) as sink:
            for seq in range(25):
                sink.offer(reading(seq), route)
            await received(subscriber, lambda m: len(m) >= 3)

    asyncio.run(scenario())
    subscriber.close()
    batches = [msgpack.unpackb(payload, raw=False) for _, payload, _ in subscriber.messages]
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert batches[0][0] == reading(0)


def test_unencodable_reading_is_dropped_counted_and_logged_without_losing_others(broker, caplog):
    subscriber = Subscriber(broker.port, "gw/t/+/env")
    bad = reading(1)
    bad["data"] = {"samples": {1, 2, 3}}  # a set has no JSON form

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url)) as sink:
            for item in (reading(0), bad, reading(2)):
                sink.offer(item, {})
            await received(subscriber, lambda m: len(m) >= 2)
            await eventually(lambda: sink.counters["delivered"] == 2)
            assert sink.depth == 0  # the bad one is through too: dropped, not retried
        return sink

    with caplog.at_level(logging.WARNING, logger="gateway.sinks.mqtt"):
        sink = asyncio.run(scenario())
    subscriber.close()
    assert seqs(subscriber.messages) == [0, 2]
    assert sink.counters["dropped_unencodable"] == 1
    assert "cannot encode reading" in caplog.text


# -- availability ------------------------------------------------------------------------------

CRASHING_GATEWAY = """
import asyncio, sys
from gateway.sinks.mqtt import MqttSink
from gateway.store.buffer import BufferDatabase
from gateway.store.queues import BufferWriter, DiskQueue

async def main():
    sink = MqttSink("mqtt", {"type": "mqtt", "url": sys.argv[1], "keepalive": 60}, "crashy")
    task = asyncio.create_task(sink.run())
    while not sink.connected:
        await asyncio.sleep(0.01)
    print("connected", flush=True)
    await task

asyncio.run(main())
"""


def test_retained_online_then_last_will_offline_when_the_gateway_is_killed(broker):
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_GATEWAY, broker.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "connected"
        subscriber = Subscriber(broker.port, "gw/crashy/status")
        assert subscriber.wait_for(lambda m: [p for _, p, _ in m] == [b"online"], 10)
        process.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must send the will
        process.wait(10)
        assert subscriber.wait_for(lambda m: [p for _, p, _ in m] == [b"online", b"offline"], 10)
        subscriber.close()
    finally:
        process.kill()
        process.wait()
    late = Subscriber(broker.port, "gw/crashy/status")  # the will was retained
    assert late.wait_for(lambda m: len(m) == 1, 10)
    late.close()
    assert late.messages[0][1] == b"offline"


def test_clean_stop_publishes_offline_itself(broker):
    subscriber = Subscriber(broker.port, "gw/t/status")

    async def scenario() -> MqttSink:
        sink = make_sink(broker.url)
        async with Running(sink):
            await received(subscriber, lambda m: [p for _, p, _ in m] == [b"online"])
            published_before_stop = sink.counters["published"]
        assert sink.counters["published"] == published_before_stop + 1
        return sink

    asyncio.run(scenario())
    assert subscriber.wait_for(lambda m: [p for _, p, _ in m] == [b"online", b"offline"], 10)
    subscriber.close()
    late = Subscriber(broker.port, "gw/t/status")
    assert late.wait_for(lambda m: len(m) == 1, 10)
    late.close()
    assert late.messages[0][1] == b"offline"


# -- outages -----------------------------------------------------------------------------------


def test_no_broker_at_start_keeps_readings_and_delivers_when_it_starts(caplog):
    broker = PersistentBroker().start()
    subscriber = ProcessSubscriber(broker.port, "gw/t/+/env")
    broker.stop()  # the subscriber's session survives in the broker's database
    count = 1000

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url)) as sink:
            for seq in range(count):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["failures"] >= 3, what="retries")
            assert not sink.connected
            assert sink.depth == count
            assert "no MQTT broker answers at 127.0.0.1:" in sink.last_error
            await asyncio.to_thread(broker.start)
            await eventually(lambda: sink.counters["delivered"] == count, what="delivery")
            await subscriber.wait_for_unique(count)
        return sink

    try:
        with caplog.at_level(logging.DEBUG, logger="gateway.sinks.mqtt"):
            asyncio.run(scenario())
        got = subscriber.seqs()
    finally:
        subscriber.close()
        broker.close()
    assert got == list(range(count))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = f"no MQTT broker answers at 127.0.0.1:{broker.port}; readings are kept queued"
    assert len([w for w in warnings if expected in w]) == 1, warnings  # once, not per retry
    assert any("connected to MQTT broker" in r.getMessage() for r in caplog.records)


def test_broker_restart_mid_stream_loses_nothing(persistent_broker):
    broker = persistent_broker
    subscriber = ProcessSubscriber(broker.port, "gw/t/+/env")
    count = 20000

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, max_batch=200, queue_size=count)) as sink:
            for seq in range(count):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["delivered"] >= 2000, what="first readings")
            await asyncio.to_thread(broker.restart)
            await eventually(lambda: sink.counters["delivered"] == count, 30, "all readings")
            assert sink.counters["failures"] >= 1
            await subscriber.wait_for_unique(count)
        return sink

    try:
        sink = asyncio.run(scenario())
        got = subscriber.seqs()
    finally:
        subscriber.close()
    assert set(got) == set(range(count))
    # at-least-once: each reading was published once, plus the availability status (online
    # at each of the two connections, offline at the stop); after the restart the session
    # sent again only what was unacknowledged, at most its window. (The broker's own
    # re-sending to a subscriber after a restart adds duplicates of its own.)
    assert sink.counters["published"] == count + 3
    assert 0 < sink.counters["resent"] <= sink.max_inflight
    assert sink.counters["delivered"] == count


def test_idle_sink_reconnects_by_itself_after_a_broker_restart(broker):
    """No reading is waiting, yet the sink comes back at once and says it is online again."""

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url)) as sink:
            await eventually(lambda: sink.connected, what="first connection")
            await asyncio.to_thread(broker.restart)  # not persistent: the retained status is gone
            await eventually(lambda: sink.counters["failures"] >= 1, what="loss noticed")
            await eventually(lambda: sink.connected, what="reconnection without a reading")
            status = Subscriber(broker.port, "gw/t/status")
            try:
                assert await asyncio.to_thread(status.wait_for, lambda m: len(m) == 1, 10)
                assert status.messages[0][1] == b"online"
            finally:
                status.close()
        return sink

    asyncio.run(scenario())


def test_frozen_broker_is_detected_by_keepalive_and_readings_survive(broker):
    subscriber = Subscriber(broker.port, "gw/t/+/env")

    async def scenario() -> MqttSink:
        sink = make_sink(broker.url, keepalive=1, send_timeout=1)
        async with Running(sink):
            await eventually(lambda: sink.connected)
            # idle for longer than 1.5 x keepalive: only our PINGREQs keep the session open
            await asyncio.sleep(2.0)
            assert sink.connected and sink.counters["failures"] == 0
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                await eventually(lambda: not sink.connected, 5, "keepalive to notice")
                for seq in range(100):
                    sink.offer(reading(seq), {})
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            await eventually(lambda: sink.counters["delivered"] == 100, 20, "delivery")
            await received(subscriber, lambda m: len(set(seqs(m))) >= 100)
        return sink

    sink = asyncio.run(scenario())
    subscriber.close()
    assert set(seqs(subscriber.messages)) == set(range(100))
    assert "PINGRESP" in (sink.last_error or "") or sink.counters["failures"] >= 1


# -- authentication and TLS --------------------------------------------------------------------


class AuthBroker(Broker):
    """Refuses anonymous clients; one user "gateway" with password "right"."""

    def __init__(self):
        super().__init__()
        passwords = os.path.join(self.directory, "passwords")
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", passwords, "gateway", "right"],
            check=True,
            capture_output=True,
        )
        # Mosquitto started as root reads this after dropping to its own user.
        os.chmod(self.directory, 0o755)
        os.chmod(passwords, 0o644)
        with open(self.config_path) as config:
            text = config.read().replace("allow_anonymous true\n", "allow_anonymous false\n")
        with open(self.config_path, "w") as config:
            config.write(text + f"password_file {passwords}\n")


def test_refused_credentials_give_a_clear_error_and_right_ones_deliver(caplog):
    broker = AuthBroker().start()

    async def scenario() -> None:
        wrong = make_sink(broker.url, username="gateway", password="wrong")
        with pytest.raises(SinkError) as refused:
            await wrong.open()
        message = str(refused.value)
        assert f"MQTT broker at 127.0.0.1:{broker.port} refused the connection" in message
        assert "CONNACK code" in message and "sinks.mqtt.username/password" in message
        anonymous = make_sink(broker.url)
        with pytest.raises(SinkError, match="refused the connection"):
            await anonymous.open()
        right = make_sink(broker.url, username="gateway", password="right", availability=False)
        async with Running(right):
            right.offer(reading(1), {})
            await eventually(lambda: right.counters["acked"] == 1)

    try:
        with caplog.at_level(logging.ERROR, logger="gateway.sinks.mqtt"):
            asyncio.run(scenario())
    finally:
        broker.close()
    assert "refused the connection" in caplog.text


def _self_signed_certificate(directory: str) -> tuple[str, str]:
    cert = os.path.join(directory, "server.pem")
    key = os.path.join(directory, "server.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    # Mosquitto started as root reads these after dropping to its own user.
    os.chmod(directory, 0o755)
    os.chmod(key, 0o644)
    return cert, key


def test_mqtts_with_a_private_ca(broker):
    cert, key = _self_signed_certificate(broker.directory)
    tls_port = free_port()
    with open(broker.config_path, "a") as config:
        config.write(f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
    broker.restart()
    subscriber = Subscriber(broker.port, "gw/t/+/env")  # plain listener, same broker

    async def scenario() -> None:
        untrusted = make_sink(f"mqtts://127.0.0.1:{tls_port}")
        with pytest.raises(SinkError, match="TLS handshake"):
            await untrusted.open()
        trusted = make_sink(f"mqtts://127.0.0.1:{tls_port}", ca=cert)
        async with Running(trusted):
            trusted.offer(reading(7), {})
            await received(subscriber, lambda m: len(m) == 1)

    asyncio.run(scenario())
    subscriber.close()
    assert seqs(subscriber.messages) == [7]


def test_publish_raw_for_per_device_availability(broker):
    subscriber = Subscriber(broker.port, "gw/t/devices/#")

    async def scenario() -> None:
        async with Running(make_sink(broker.url, availability=False)) as sink:
            await eventually(lambda: sink.connected)
            await sink.publish_raw("gw/t/devices/pump/status", b"online", qos=1, retain=True)
            assert sink.counters["acked"] == 1
            await sink.publish_raw("gw/t/devices/fan/status", b"offline")
            await received(subscriber, lambda m: len(m) == 2)
            with pytest.raises(ValueError, match="wildcard"):
                await sink.publish_raw("gw/+/x", b"")

    asyncio.run(scenario())
    subscriber.close()
    assert [(t, p) for t, p, _ in subscriber.messages] == [
        ("gw/t/devices/pump/status", b"online"),
        ("gw/t/devices/fan/status", b"offline"),
    ]


def test_options_are_checked_when_the_sink_is_built():
    with pytest.raises(ValueError, match="sinks.mqtt.url: expected mqtt://host:port"):
        make_sink("http://127.0.0.1:1883")
    with pytest.raises(ValueError, match="sinks.mqtt: cannot load the TLS"):
        make_sink("mqtts://127.0.0.1", ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="availability topic"):
        MqttSink("mqtt", {"url": "mqtt://127.0.0.1"}, "gw#1")
    with pytest.raises(ValueError, match="sinks.mqtt.qos"):
        make_sink("mqtt://127.0.0.1", qos=3)
    with pytest.raises(ValueError, match="sinks.mqtt.topic"):
        make_sink("mqtt://127.0.0.1", topic="gw/{nope}")
    options = {"url": "mqtts://broker.local", "client_id": "{gateway}-x", "username": "user"}
    sink = MqttSink("up", {**options, "password": "p@ss"}, "g")
    assert (sink.host, sink.port, sink.tls) == ("broker.local", 8883, True)
    assert (sink.username, sink.password, sink.client_id) == ("user", "p@ss", "g-x")


def test_delivered_counts_only_acknowledged_readings(broker):
    subscriber = Subscriber(broker.port, "gw/t/+/env")

    async def scenario() -> MqttSink:
        sink = make_sink(broker.url, send_timeout=0.5, keepalive=60, availability=False)
        async with Running(sink):
            for seq in range(3):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["delivered"] == 3, what="first PUBACKs")
            os.kill(broker.process.pid, signal.SIGSTOP)  # the kernel still takes our bytes
            try:
                for seq in range(3, 13):
                    sink.offer(reading(seq), {})
                await eventually(lambda: sink.counters["failures"] >= 1, what="ack timeout")
                assert sink.counters["delivered"] == 3 and sink.depth == 10
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            await eventually(lambda: sink.counters["delivered"] == 13, what="the rest")
            await received(subscriber, lambda m: len(set(seqs(m))) == 13)
        return sink

    asyncio.run(scenario())
    subscriber.close()
    assert set(seqs(subscriber.messages)) == set(range(13))


def test_a_stop_during_a_take_from_disk_gives_every_reading_back(broker, tmp_path):
    """The sink takes its next readings while the window drains; here a take from a disk
    queue is still under way when the sink stops (its writer thread is held). Its readings
    must go back to the queue, not land in the stopped sink: a second sink on the same
    queue delivers everything the first did not have acknowledged."""
    count = 3000
    subscriber = Subscriber(broker.port, "gw/t/+/env")

    async def scenario() -> tuple[int, int]:
        writer = BufferWriter(BufferDatabase(str(tmp_path / "buffer.db")))
        queue = DiskQueue(writer, writer.db.buffer("mqtt"))
        for seq in range(count):
            queue.put((reading(seq), {}))
        await queue.settled()
        first = make_sink(broker.url, availability=False, max_batch=200)
        first.use_queue(queue)
        task = asyncio.create_task(first.run())
        await eventually(lambda: first.counters["delivered"] > 0, what="first PUBACKs")
        # Hold the writer thread so that the next take is still under way during the stop.
        gate = threading.Event()
        writer.post(lambda db: gate.wait(5), writes=False)
        earlier = first._taking
        await eventually(
            lambda: first._taking not in (None, earlier), what="a take behind the held writer"
        )
        asyncio.get_running_loop().call_later(0.3, gate.set)
        await first.stop(drain_seconds=0)
        await asyncio.wait_for(task, 5)
        await writer.sync()  # the confirmations reach the table and its counts come back
        assert 0 < queue.depth < count
        assert queue.out == 0  # what was taken came back, the take under way included
        assert queue.depth == count - first.counters["delivered"]
        second = make_sink(broker.url, availability=False)
        second.use_queue(queue)
        async with Running(second):
            await eventually(lambda: queue.depth == 0, what="the rest delivered")
        await writer.close()
        return first.counters["delivered"], first.counters["published"]

    delivered_first, published_first = asyncio.run(scenario())
    subscriber.wait_for(lambda m: set(seqs(m)) == set(range(count)), 20)
    subscriber.close()
    arrived = seqs(subscriber.messages)
    assert set(arrived) == set(range(count))
    # Sent again only what the first sink published and never saw acknowledged.
    assert len(arrived) - count <= published_first - delivered_first


def test_inflight_window_and_packet_id_wrap(broker):
    subscriber = Subscriber(broker.port, "gw/t/#")

    async def scenario() -> MqttSink:
        sink = make_sink(broker.url, max_inflight=7, availability=False)
        sink.session._last_id = 65530  # the next ids run through 65535 and wrap to 1, never 0
        async with Running(sink):
            for seq in range(50):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["delivered"] == 50)
            assert sink.session.inflight == 0
            await received(subscriber, lambda m: len(m) >= 50)
        return sink

    sink = asyncio.run(scenario())
    subscriber.close()
    assert seqs(subscriber.messages) == list(range(50))
    assert sink.counters["acked"] == 50
    assert sink.counters["failures"] == 0


def test_a_qos2_route_is_refused_and_its_readings_counted(broker):
    """QoS 2 is not supported (the config refuses it); a route asking for it drops, counted."""

    async def scenario() -> MqttSink:
        async with Running(make_sink(broker.url, availability=False)) as sink:
            sink.offer(reading(0), {"qos": 2})
            sink.offer(reading(1), {})
            await eventually(lambda: sink.counters["delivered"] == 1 and sink.depth == 0)
        return sink

    sink = asyncio.run(scenario())
    assert sink.counters["dropped_bad_route"] == 1


def test_connecting_cancelled_while_waiting_for_connack_closes_the_connection():
    """A broker that accepts TCP but never answers CONNECT; the wait is cut short (the
    sink's send_timeout does that): the half-open connection must not be left behind."""

    async def scenario() -> None:
        closed = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1024):
                pass  # swallow CONNECT, answer nothing
            closed.set()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = make_sink(f"mqtt://127.0.0.1:{port}", connect_timeout=30)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sink.open(), 0.3)
        await asyncio.wait_for(closed.wait(), 5)
        server.close()

    asyncio.run(scenario())
