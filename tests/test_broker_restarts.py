"""A broker restarted ten times for 3 s each under a 1,000 readings/s stream.

`gateway run` is a child process fed by one line device; Mosquitto (with persistence) is
stopped and started again from outside, and a persistent-session subscriber in its own
process counts what arrived. The sink keeps the default breaker and retry settings: the
point is that a broker back within seconds is in use again within seconds (a refused
connect is retried within RECONNECT_CAP and does not count toward the breaker), not after
the breaker's 30 s.
"""

from __future__ import annotations

import time

import pytest

from tests.support.broker import ProcessSubscriber, free_port
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import CounterStream, DeviceWriters, GatewayProcess
from tests.support.subscriber import Tally, by_seq, sink_stats, wait_for_unique

GATEWAY_ID = "restarts"
TOPIC = f"gw/{GATEWAY_ID}/#"
RATE = 1_000  # readings/s from the one device
RESTARTS = 10
OUTAGE = 3.0  # seconds the broker stays down each time
RESUME_LIMIT = 2.0  # from the broker answering again to the next reading acknowledged
GIVE_UP = 35.0  # a cycle that has not resumed by then is reported as such (a breaker stall)
RUN_BETWEEN = 1.5  # streaming on a healthy broker after each resume
MAX_INFLIGHT = 100
CONNECTED_LOG = "sink mqtt: connected to MQTT broker at"


def restart_config(device_path: str, broker_port: int, api_port: int) -> str:
    # No breaker or retry table: the defaults (5 failures, 30 s; 0.5 s … 60 s) are under test.
    sources = [line_source("dev-0", device_path)]
    sink_keys = f"max_inflight = {MAX_INFLIGHT}"
    return gateway_toml(GATEWAY_ID, api_port, broker_port, sources, "spill", sink_keys)


def delivered(gateway: GatewayProcess) -> tuple[int, bool]:
    mqtt = sink_stats(gateway.health()["stats"])
    return mqtt["delivered"], mqtt["connected"]


def time_to_resume(gateway: GatewayProcess, before: int, since: float) -> float | None:
    """Seconds from `since` until the sink's delivered counter passes `before` (None: never).

    The gateway is another process with no event to await: its health API is polled.
    """
    while True:
        count, _connected = delivered(gateway)
        waited = time.monotonic() - since
        if count > before:
            return waited
        if waited > GIVE_UP:
            return None
        time.sleep(0.02)


def connections_logged(gateway: GatewayProcess) -> int:
    with open(gateway.log_path, errors="replace") as log:
        return sum(CONNECTED_LOG in line for line in log)


@pytest.mark.timeout(180)
def test_ten_broker_restarts_lose_nothing_and_resume_within_two_seconds(
    persistent_broker, tmp_path, gateway_process
):
    broker = persistent_broker
    api_port = free_port()
    writers = DeviceWriters(1, str(tmp_path))
    subscriber = ProcessSubscriber(broker.port, TOPIC)
    gateway = gateway_process(restart_config(writers.paths[0], broker.port, api_port))
    stream = CounterStream(writers, RATE)
    resume_times: list[float | None] = []
    seen_down: list[bool] = []
    try:
        gateway.start(api_port)
        stream.start()
        time.sleep(RUN_BETWEEN)  # the fault's schedule, not synchronisation
        for _cycle in range(RESTARTS):
            broker.stop()
            time.sleep(OUTAGE)
            before, connected = delivered(gateway)  # frozen: nothing can be acknowledged now
            seen_down.append(not connected)
            broker.start()  # returns once the port answers
            resumed = time_to_resume(gateway, before, time.monotonic())
            resume_times.append(resumed)
            if resumed is None:
                break  # stalled: fail below with what was measured
            time.sleep(RUN_BETWEEN)
        total = stream.finish()
        shown = [None if t is None else round(t, 3) for t in resume_times]
        assert len(resume_times) == RESTARTS and all(
            t is not None and t <= RESUME_LIMIT for t in resume_times
        ), f"resume times after each restart (s): {shown}\n{gateway.log()}"
        gateway.wait_for(lambda stats: stats["totals"]["delivered"]["mqtt"] >= total, 60)
        wait_for_unique(subscriber, lambda r: (r["device"], r["seq"]), total)
        # Read before the stop: the stop then publishes "offline", which no stats show.
        final = gateway.health()["stats"]
        assert gateway.stop() == 0, gateway.log()
        readings = subscriber.readings()
    finally:
        stream.finish()
        subscriber.close()
        writers.close()
    assert all(seen_down), f"the sink still looked connected during outages: {seen_down}"
    tally = Tally(readings, by_seq)
    assert final["totals"]["readings"] == total
    # Every reading arrived, and first arrivals come in the order the device wrote them.
    assert tally.counters("dev-0") == list(range(total)), "missing or out of order"
    assert tally.unique == total
    first_seqs = [reading["seq"] for reading in tally.first["dev-0"]]
    assert all(a < b for a, b in zip(first_seqs, first_seqs[1:])), "seq not increasing"
    mqtt = sink_stats(final)
    assert mqtt["delivered"] == total
    assert sum(mqtt["buffer"]["drops"].values()) == 0, mqtt["buffer"]
    assert mqtt["failures"] >= RESTARTS, mqtt
    # One connection at the start and one after each restart, none lost in between.
    connections = connections_logged(gateway)
    assert connections == 1 + RESTARTS, connections
    # The gateway's own accounting, read before the stop: `published` counts each message
    # once, when first handed to the session; a message sent again (DUP) after a reconnect
    # is counted in `resent` only. So published == readings + per connection one "online"
    # for the gateway and one for the device (one reading per message; the "offline" at the
    # stop comes after this read), and every one of them was acknowledged. On the wire:
    # published + resent PUBLISH packets.
    assert mqtt["published"] == total + 2 * connections, mqtt
    assert mqtt["acked"] == mqtt["published"], mqtt
    # Only what was unacknowledged at a stop is sent again: at most the window each time.
    assert mqtt["resent"] <= RESTARTS * MAX_INFLIGHT, mqtt
    # Duplicates the subscriber saw are equal to their originals (Tally checks each) and
    # recent: from the window unacknowledged at a stop (or Mosquitto's own re-sending of
    # what the subscriber had not acknowledged yet), never older readings.
    assert all(lag <= MAX_INFLIGHT for lag in tally.duplicate_lag), sorted(tally.duplicate_lag)
    print(
        f"\nbroker restarts: resume times (s) {shown}; sent {total}, arrived {tally.unique} "
        f"unique, {tally.duplicates} duplicates (max lag {max(tally.duplicate_lag, default=0)}), "
        f"resent {mqtt['resent']}, published {mqtt['published']}, failures {mqtt['failures']}, "
        f"breaker opened {mqtt['breaker']['opened']}, spilled {mqtt['buffer'].get('spilled')}"
    )
