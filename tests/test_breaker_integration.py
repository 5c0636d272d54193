"""Circuit breaker on real sinks: a far side that hangs trips it, others keep flowing, it heals.

The far side (tests/support/far_side.py) is a small TCP endpoint under the test's control: it
either accepts and never answers (a hung broker, or a firewall that swallows packets), or
relays to a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from gateway.core.breaker import CLOSED, OPEN
from gateway.sinks.mqtt import MqttSink
from gateway.sinks.udp import UdpSink
from tests.support.broker import Subscriber
from tests.support.far_side import FarSide
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


class UdpArrivals(asyncio.DatagramProtocol):
    """Receives the UDP sink's datagrams in the same loop and notes each arrival time."""

    def __init__(self):
        self.arrivals: list[tuple[int, float]] = []  # (seq, loop time)

    def datagram_received(self, data: bytes, addr) -> None:
        self.arrivals.append((json.loads(data)["seq"], asyncio.get_running_loop().time()))


def _seq(payload: bytes) -> int:
    return json.loads(payload)["seq"]


def reading(seq: int) -> dict:
    return {
        "gateway": "t",
        "device": "d",
        "stream": "env",
        "seq": seq,
        "ts": 1.0,
        "data": {"n": seq},
    }


def test_a_hanging_broker_trips_the_breaker_without_slowing_udp_and_a_probe_heals_it(
    broker, caplog
):
    subscriber = Subscriber(broker.port, "gw/t/#")
    failures, reset_after, send_timeout = 3, 1.0, 0.25

    async def scenario():
        loop = asyncio.get_running_loop()
        far = await FarSide(broker.port, mode="hang").start()
        transport, udp_in = await loop.create_datagram_endpoint(
            UdpArrivals, local_addr=("127.0.0.1", 0)
        )
        udp_port = transport.get_extra_info("sockname")[1]
        mqtt = MqttSink(
            "mqtt",
            {
                "url": f"mqtt://127.0.0.1:{far.port}",
                "availability": False,
                "send_timeout": send_timeout,
                "breaker": {"failures": failures, "reset_after": reset_after},
                "retry": {"base": 0.02, "cap": 0.05},
            },
            "t",
        )
        udp = UdpSink("udp", {"targets": [f"127.0.0.1:{udp_port}"]}, "t")
        tasks = [asyncio.create_task(mqtt.run()), asyncio.create_task(udp.run())]
        offered: list[float] = []

        async def offer_steadily() -> None:
            while True:
                seq = len(offered)
                offered.append(loop.time())
                mqtt.offer(reading(seq), {})
                udp.offer(reading(seq), {})
                await asyncio.sleep(0.004)

        started = loop.time()
        offering = asyncio.create_task(offer_steadily())
        try:
            await eventually(lambda: mqtt.breaker.state == OPEN, 10, "the breaker to open")
            opened_after = loop.time() - started
            assert mqtt.counters["failures"] == failures and len(far.accepted) == failures
            assert "no answer within 0.25s while connecting" in mqtt.last_error
            # Open: no attempt at all until reset_after, then exactly one probe.
            await eventually(lambda: len(far.accepted) == failures + 1, 5, "the first probe")
            probe_gap = far.accepted[-1] - far.accepted[failures - 1]
            await eventually(lambda: mqtt.breaker.state == OPEN, 5, "the probe to fail")
            assert mqtt.counters["failures"] == failures + 1
            # The broker answers again: the next probe closes the breaker.
            far.mode = "forward"
            await eventually(lambda: mqtt.breaker.state == CLOSED, 5, "the breaker to close")
            offering.cancel()
            await eventually(
                lambda: mqtt.counters["delivered"] == len(offered), 20, "mqtt delivery"
            )
            await eventually(lambda: len(udp_in.arrivals) == len(offered), 5, "udp delivery")
            stats = mqtt.stats()
        finally:
            offering.cancel()
            await mqtt.stop()
            await udp.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            transport.close()
            await far.close()
        return opened_after, probe_gap, offered, udp_in.arrivals, stats

    with caplog.at_level(logging.INFO, logger="gateway.sinks"):
        opened_after, probe_gap, offered, arrivals, stats = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= len(offered), 20)
    finally:
        subscriber.close()
    # Three timed-out attempts with short backoffs between them.
    assert failures * send_timeout <= opened_after < failures * send_timeout + 1.5
    assert reset_after * 0.95 <= probe_gap < reset_after + send_timeout + 1.0
    # UDP never waited for MQTT: every reading, in order, each within a few milliseconds.
    assert [seq for seq, _at in arrivals] == list(range(len(offered)))
    lags = sorted(at - offered[seq] for seq, at in arrivals)
    assert lags[int(len(lags) * 0.99)] < 0.05, lags[-10:]
    # MQTT lost nothing and kept the order.
    received = [json.loads(payload)["seq"] for _topic, payload, _qos in subscriber.messages]
    assert received == list(range(len(offered)))
    assert stats["breaker"]["state"] == CLOSED and stats["breaker"]["opened"] == 2
    assert stats["buffer"]["depth"] == 0
    assert f"sink mqtt: breaker open after {failures} failures" in caplog.text
    assert f"next probe in {reset_after:g}s" in caplog.text
    assert "sink mqtt: breaker closed; delivering again" in caplog.text


def test_a_send_that_never_completes_times_out_and_counts_toward_the_breaker(broker, caplog):
    subscriber = Subscriber(broker.port, "gw/t/#")

    async def scenario():
        far = await FarSide(broker.port).start()
        mqtt = MqttSink(
            "mqtt",
            {
                "url": f"mqtt://127.0.0.1:{far.port}",
                "availability": False,
                "send_timeout": 0.3,  # on its own the sink waits 10 s for PUBACKs
                "breaker": {"failures": 2, "reset_after": 0.5},
                "retry": {"base": 0.01, "cap": 0.02},
            },
            "t",
        )
        task = asyncio.create_task(mqtt.run())
        try:
            for seq in range(100):
                mqtt.offer(reading(seq), {})
            await eventually(lambda: mqtt.counters["delivered"] == 100, 10, "first readings")
            far.mode = "hang"  # the connection stays up, but nothing comes back any more
            for seq in range(100, 200):
                mqtt.offer(reading(seq), {})
            await eventually(lambda: mqtt.breaker.state == OPEN, 10, "the breaker to open")
            errors_seen = mqtt.counters["failures"]
            assert mqtt.depth == 100  # nothing lost while it hangs
            far.mode = "forward"
            await eventually(lambda: mqtt.counters["delivered"] >= 200, 10, "delivery after")
        finally:
            await mqtt.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await far.close()
        return errors_seen

    with caplog.at_level(logging.WARNING, logger="gateway.sinks"):
        errors_seen = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len({_seq(p) for _t, p, _q in m}) >= 200, 20)
    finally:
        subscriber.close()
    # The send hung and timed out (failure 1), the reconnection hung too (failure 2): open.
    assert errors_seen == 2
    # The sink's send_timeout bounds its wait for PUBACKs too.
    assert "sink mqtt: lost the MQTT broker at 127.0.0.1" in caplog.text
    assert "(ack timeout: no PUBACK for packet id" in caplog.text
    assert "sink mqtt: breaker open after 2 failures" in caplog.text
    seqs = [json.loads(payload)["seq"] for _topic, payload, _qos in subscriber.messages]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(200))  # in order; a re-sent batch may repeat (at least once)
