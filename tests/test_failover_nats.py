"""Failover across a 3-node NATS cluster at 5,000 readings/s, the connected node killed.

`gateway run` (a child process) reads two pty devices at 2,500 lines/s each and publishes
through one MQTT sink whose `urls` are the three nodes' MQTT listeners. A consumer on
another node (mosquitto_sub, a persistent QoS 1 session) counts what arrives. Mid-stream
the node the gateway is connected to is killed (SIGKILL): every reading still arrives
(at-least-once), first arrivals keep each device's order, and duplicates are only from
the in-flight window.
"""

from __future__ import annotations

import time

import pytest

from tests.support.broker import ProcessSubscriber, free_port
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import CounterStream, DeviceWriters, GatewayProcess
from tests.support.nats_cluster import NatsCluster
from tests.support.subscriber import Tally, by_seq, sink_stats, wait_for_unique
from tests.support.waiting import wait_until

GATEWAY_ID = "failover"
TOPIC = f"gw/{GATEWAY_ID}/+/counter"
DEVICES = 2
RATE = 2_500  # lines/s per device: 5,000 readings/s
BEFORE_KILL = 2.0  # seconds streamed before the connected node is killed
AFTER_KILL = 6.0  # seconds streamed after (the cluster elects new leaders meanwhile)
MAX_INFLIGHT = 200


def connections_logged(log: str) -> int:
    return log.count("sink mqtt: connected to MQTT broker at")


@pytest.fixture
def nats_cluster():
    cluster = NatsCluster().start()
    yield cluster
    cluster.close()


def failover_config(cluster: NatsCluster, paths: list[str], api_port: int) -> str:
    sources = [line_source(f"dev-{index}", path) for index, path in enumerate(paths)]
    urls = ", ".join(f'"{url}"' for url in cluster.mqtt_urls)
    sink_keys = (
        f"max_inflight = {MAX_INFLIGHT}\n"
        'breaker = { failures = 5, reset_after = "2s" }\n'
        'retry = { base = "0.05s", cap = "0.5s" }'
    )
    first = cluster.nodes[0].mqtt_port
    text = gateway_toml(GATEWAY_ID, api_port, first, sources, "spill", sink_keys)
    # The builder writes one url; this sink has the cluster's list instead.
    return text.replace(f'url = "mqtt://127.0.0.1:{first}"', f"urls = [{urls}]")


@pytest.mark.timeout(120)
def test_killing_the_connected_node_mid_stream_loses_no_reading(nats_cluster, tmp_path):
    cluster = nats_cluster
    consumer_node = cluster.nodes[2]
    api_port = free_port()
    writers = DeviceWriters(DEVICES, str(tmp_path))
    consumer = ProcessSubscriber(consumer_node.mqtt_port, TOPIC)
    gateway = GatewayProcess(failover_config(cluster, writers.paths, api_port), str(tmp_path))
    line = b'{"n":%d,"t":%d}\n'
    stream = CounterStream(writers, RATE, lambda n: line % (n, n), run_seconds=0.5)
    try:
        gateway.start(api_port)
        connected = sink_stats(gateway.health()["stats"])["broker"]
        assert connected == cluster.mqtt_urls[0]
        stream.start()
        time.sleep(BEFORE_KILL)  # the fault's schedule, not synchronisation
        killed = cluster.nodes[0]
        delivered_at_kill = sink_stats(gateway.health()["stats"])["delivered"]
        killed.kill()
        time.sleep(AFTER_KILL)
        total = stream.finish()
        expected = total * DEVICES
        try:
            wait_until(
                lambda: gateway.health()["stats"]["totals"]["delivered"]["mqtt"] >= expected,
                30,
                f"{expected} readings acknowledged",
                interval=0.1,
            )
            wait_for_unique(consumer, lambda r: (r["device"], r["seq"]), expected, timeout=30)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{gateway.log()}\n{cluster.logs()}") from None
        final = gateway.health()["stats"]
        assert gateway.stop() == 0, gateway.log()
        readings = consumer.readings()
        with open(gateway.log_path, errors="replace") as file:
            log = file.read()
    finally:
        stream.finish()
        gateway.kill()
        consumer.close()
        writers.close()
    mqtt = sink_stats(final)
    assert delivered_at_kill > 0 and mqtt["failovers"] >= 1, mqtt
    assert mqtt["broker"] in cluster.mqtt_urls[1:], mqtt["broker"]
    assert final["totals"]["readings"] == expected
    tally = Tally(readings, by_seq)
    for index in range(DEVICES):
        firsts = tally.counters(f"dev-{index}")
        assert sorted(firsts) == list(range(total)), "missing or twice among first arrivals"
        # In order, except around the failover: what was in flight when the node died may
        # reach the consumer after newer readings (sent again by the gateway, or delivered
        # late by the cluster, which redelivers only after its ack wait), and all of it lies
        # within one in-flight window of readings.
        late = late_arrivals(firsts)
        assert not late or max(late) - min(late) < MAX_INFLIGHT, late
    assert tally.unique == expected
    assert sum(mqtt["buffer"]["drops"].values()) == 0, mqtt["buffer"]
    # Sent again after each move (to the next node, and back to an earlier one once it
    # answers): only what was unacknowledged then, at most the window each time.
    connections = connections_logged(log)
    assert connections == 1 + mqtt["failovers"], log[-5000:]
    assert mqtt["resent"] <= MAX_INFLIGHT * mqtt["failovers"], mqtt
    assert all(lag <= MAX_INFLIGHT for lag in tally.duplicate_lag), sorted(tally.duplicate_lag)
    print(
        f"\nNATS failover: {expected} readings at {RATE * DEVICES}/s, {tally.unique} unique at "
        f"{consumer_node.name}, {tally.duplicates} duplicates (max lag "
        f"{max(tally.duplicate_lag, default=0)}), resent {mqtt['resent']}, "
        f"{mqtt['failovers']} moves, now on {mqtt['broker']}"
    )


def late_arrivals(seqs: list[int]) -> list[int]:
    """The seqs that arrived after a higher one."""
    late = []
    highest = -1
    for seq in seqs:
        if seq < highest:
            late.append(seq)
        highest = max(highest, seq)
    return late
