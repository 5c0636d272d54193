"""UDP sink against real sockets on loopback: order, encodings, batch splitting, errors."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sinks.base import SinkError
from gateway.sinks.encoding import decoder, encoder
from gateway.sinks.udp import UdpSink, join_array, pack_arrays

WINDOW = 200  # readings in flight at most, well inside even a default 208 KiB receive buffer


def reading(seq: int, device: str = "bench-1", **data) -> dict:
    return {
        "gateway": "gw-test",
        "device": device,
        "stream": "env",
        "seq": seq,
        "ts": 1764236400.123456 + seq / 1000,
        "data": data or {"temperature": 21.5 + seq % 10, "humidity": 40.2, "ok": True},
    }


class Receiver:
    """A UDP socket read by its own thread, so datagrams leave the kernel buffer promptly."""

    def __init__(self, host: str = "127.0.0.1", group: str | None = None):
        self.host, self.group = host, group
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((group or host, 0))
        if group:
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(host))
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stopping = False
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                payload = self.sock.recv(65535)
            except OSError:
                return
            if self._stopping:
                return
            with self._arrived:
                self.datagrams.append(payload)
                self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until `count` datagrams arrived."""
        return self.wait_until(lambda datagrams: len(datagrams) >= count, timeout)

    def wait_until(self, condition, timeout: float = 10.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: condition(self.datagrams), timeout)

    def close(self) -> None:
        self._stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            if self.group:
                interface = socket.inet_aton(self.host)
                waker.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface)
            target = self.group or ("127.0.0.1" if self.host == "0.0.0.0" else self.host)
            waker.sendto(b"", (target, self.port))  # wakes the blocked recv()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


async def run_sink(sink: UdpSink, items: list[tuple], wait_until_received) -> None:
    """Feed items through the sink's own sender task, WINDOW at a time."""
    task = asyncio.create_task(sink.run())
    try:
        for start in range(0, len(items), WINDOW):
            for item in items[start : start + WINDOW]:
                sink.offer(*item)
            arrived = await asyncio.to_thread(wait_until_received, start + WINDOW)
            assert arrived, f"readings stopped arriving after {start}"
    finally:
        await sink.stop()
        task.cancel()


def unbatched_until(receiver: Receiver, total: int):
    return lambda count: receiver.wait_for(min(count, total))


def test_unicast_delivers_every_reading_in_order(receiver):
    readings = [reading(seq) for seq in range(20_000)]
    sink = UdpSink("udp", {"targets": [f"127.0.0.1:{receiver.port}"]}, "gw-test")
    items = [(r, {}) for r in readings]
    asyncio.run(run_sink(sink, items, unbatched_until(receiver, len(items))))
    assert [decoder("json")(d) for d in receiver.datagrams] == readings
    assert sink.counters["datagrams"] == sink.counters["delivered"] == 20_000
    assert sink.counters["send_errors"] == 0


@pytest.mark.parametrize("encoding", ["msgpack", "cbor"])
def test_binary_encodings_decode_to_the_same_readings(receiver, encoding):
    readings = [reading(seq, text="héllo", nested={"a": [1, 2.5, None]}) for seq in range(1000)]
    options = {"targets": [f"127.0.0.1:{receiver.port}"], "encoding": encoding}
    sink = UdpSink("udp", options, "gw-test")
    asyncio.run(run_sink(sink, [(r, {}) for r in readings], unbatched_until(receiver, 1000)))
    assert [decoder(encoding)(d) for d in receiver.datagrams] == readings


def assert_batches_fit(datagrams, encoding, max_datagram, max_readings, readings):
    arrays = [decoder(encoding)(d) for d in datagrams]
    assert all(len(d) <= max_datagram for d in datagrams)
    assert all(isinstance(a, list) and 1 <= len(a) <= max_readings for a in arrays)
    assert [r for array in arrays for r in array] == readings
    return arrays


@pytest.mark.parametrize("encoding", ["json", "msgpack", "cbor"])
def test_batches_are_split_to_fit_the_datagram(receiver, encoding):
    # Readings of varying size so arrays end for the byte limit and for the count limit.
    readings = [
        reading(seq, note="x" * (1500 if seq % 17 == 0 else seq % 7)) for seq in range(3000)
    ]
    options = {
        "targets": [f"127.0.0.1:{receiver.port}"],
        "encoding": encoding,
        "max_datagram": 4000,
        "batch": {"max_readings": 20},
    }
    sink = UdpSink("udp", options, "gw-test")

    def received_readings(count):
        # Arrays hold a variable number of readings: count readings, not datagrams.
        wanted = min(count, len(readings))
        decode = decoder(encoding)
        return receiver.wait_until(lambda got: sum(len(decode(d)) for d in got) >= wanted)

    asyncio.run(run_sink(sink, [(r, {}) for r in readings], received_readings))
    arrays = assert_batches_fit(receiver.datagrams, encoding, 4000, 20, readings)
    assert any(len(a) == 20 for a in arrays), "the count limit should end some arrays"
    assert any(len(a) < 20 for a in arrays[:-1]), "the byte limit should end some arrays"
    assert sink.counters["datagrams"] == len(arrays)


def test_oversize_reading_is_counted_logged_and_the_rest_arrive(receiver, caplog):
    readings = [reading(seq) for seq in range(10)]
    readings[4]["data"]["blob"] = "z" * 2000
    sink = UdpSink("udp", {"targets": [f"127.0.0.1:{receiver.port}"]}, "gw-test")
    with caplog.at_level(logging.WARNING, logger="gateway.sinks.udp"):
        asyncio.run(run_sink(sink, [(r, {}) for r in readings], unbatched_until(receiver, 9)))
    assert [decoder("json")(d) for d in receiver.datagrams] == readings[:4] + readings[5:]
    assert sink.counters["oversize"] == 1
    assert "bench-1/env seq 4" in caplog.text and "max_datagram is 1472" in caplog.text


def test_oversize_reading_in_a_batch_is_dropped_alone(receiver):
    readings = [reading(seq) for seq in range(30)]
    readings[10]["data"]["blob"] = "z" * 2000
    options = {"targets": [f"127.0.0.1:{receiver.port}"], "batch": {"max_readings": 8}}
    sink = UdpSink("udp", options, "gw-test")

    async def main():
        await sink.open()
        await sink.send([(r, {}) for r in readings])
        await sink.close()

    asyncio.run(main())
    assert receiver.wait_for(4)
    assert_batches_fit(receiver.datagrams, "json", 1472, 8, readings[:10] + readings[11:])
    assert sink.counters["oversize"] == 1


def test_route_options_override_encoding_and_batch(receiver):
    readings = [reading(seq) for seq in range(12)]
    as_cbor = {"encoding": "cbor"}
    batched = {"batch": {"max_readings": 4}}
    routes = [{}] * 3 + [as_cbor] * 3 + [batched] * 6
    sink = UdpSink("udp", {"targets": [f"127.0.0.1:{receiver.port}"]}, "gw-test")

    async def main():
        await sink.open()
        await sink.send(list(zip(readings, routes)))
        await sink.close()

    asyncio.run(main())
    assert receiver.wait_for(8)
    got = receiver.datagrams
    assert [decoder("json")(d) for d in got[:3]] == readings[:3]
    assert [decoder("cbor")(d) for d in got[3:6]] == readings[3:6]
    assert [decoder("json")(d) for d in got[6:]] == [readings[6:10], readings[10:]]


def test_multicast_on_loopback():
    group = "239.255.77.12"
    listener = Receiver(host="127.0.0.1", group=group)
    try:
        options = {"targets": [f"{group}:{listener.port}"], "interface": "127.0.0.1", "ttl": 1}
        sink = UdpSink("udp", options, "gw-test")
        readings = [reading(seq) for seq in range(500)]
        asyncio.run(run_sink(sink, [(r, {}) for r in readings], unbatched_until(listener, 500)))
        assert [decoder("json")(d) for d in listener.datagrams] == readings
    finally:
        listener.close()


def test_broadcast_address_gets_so_broadcast():
    # Without SO_BROADCAST the kernel refuses a broadcast destination with EACCES.
    listener = Receiver(host="0.0.0.0")
    try:
        sink = UdpSink("udp", {"targets": [f"127.255.255.255:{listener.port}"]}, "gw-test")
        readings = [reading(seq) for seq in range(100)]
        asyncio.run(run_sink(sink, [(r, {}) for r in readings], unbatched_until(listener, 100)))
        assert [decoder("json")(d) for d in listener.datagrams] == readings
        assert sink.counters["send_errors"] == 0
    finally:
        listener.close()


def closed_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_refused_port_does_not_stop_the_sink_and_it_recovers():
    port = closed_port()
    sink = UdpSink("udp", {"targets": [f"127.0.0.1:{port}"]}, "gw-test")
    readings = [reading(seq) for seq in range(300)]

    async def scenario():
        await sink.open()
        await sink.send([(r, {}) for r in readings[:200]])
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", port))
        listener.settimeout(5)
        await sink.send([(r, {}) for r in readings[200:]])
        got = [decoder("json")(listener.recv(65535)) for _ in range(100)]
        listener.close()
        await sink.close()
        return got

    assert asyncio.run(scenario()) == readings[200:]
    assert sink.counters["send_errors"] > 0
    assert sink.counters["datagrams"] == 300
    assert "Connection refused" in sink.last_error


def test_a_target_the_kernel_refuses_raises_sink_error_and_is_counted():
    # broadcast=false forbids SO_BROADCAST, so the kernel answers EACCES for every datagram.
    targets = [f"127.255.255.255:{closed_port()}", f"127.255.255.255:{closed_port()}"]
    options = {"targets": targets, "broadcast": False}
    sink = UdpSink("udp", options, "gw-test")

    async def main():
        await sink.open()
        with pytest.raises(SinkError, match="no UDP target accepted"):
            await sink.send([(reading(1), {})])
        await sink.close()

    asyncio.run(main())
    assert sink.counters["send_errors"] == 2
    assert "Permission denied" in sink.last_error


def test_one_refusing_target_does_not_hold_back_the_others(receiver, caplog):
    options = {
        "targets": [f"127.255.255.255:{closed_port()}", f"127.0.0.1:{receiver.port}"],
        "broadcast": False,
    }
    sink = UdpSink("udp", options, "gw-test")
    readings = [reading(seq) for seq in range(50)]

    async def main():
        await sink.open()
        await sink.send([(r, {}) for r in readings])
        await sink.close()

    with caplog.at_level(logging.WARNING, logger="gateway.sinks.udp"):
        asyncio.run(main())
    assert receiver.wait_for(50)
    assert [decoder("json")(d) for d in receiver.datagrams] == readings
    assert sink.counters["send_errors"] == 50
    assert caplog.text.count("send to 127.255.255.255") == 1  # rate-limited


def test_sender_task_survives_send_errors_and_retries():
    targets = [f"127.255.255.255:{closed_port()}", f"127.255.255.255:{closed_port()}"]
    options = {"targets": targets, "broadcast": False}
    options["retry"] = {"base": 0.001, "cap": 0.002}
    sink = UdpSink("udp", options, "gw-test")

    async def main():
        task = asyncio.create_task(sink.run())
        sink.offer(reading(1), {})
        for _ in range(500):  # poll: the retries are the sink's own business
            if sink.counters["failures"] >= 3:
                break
            await asyncio.sleep(0.002)
        alive = not task.done()
        await sink.stop(drain_seconds=0)
        task.cancel()
        return alive

    assert asyncio.run(main())
    assert sink.counters["failures"] >= 3
    assert sink.counters["send_errors"] >= 6
    assert sink.depth == 1  # the reading is kept for a later attempt, not lost


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": []}, "sinks.udp.targets: expected a non-empty list"),
        ({"targets": "127.0.0.1:1"}, "sinks.udp.targets: expected a non-empty list"),
        ({"targets": ["127.0.0.1"]}, r"sinks.udp.targets\[0\]: expected 'host:port'"),
        ({"targets": ["a:1", "b:0"]}, r"sinks.udp.targets\[1\]: expected 'host:port'"),
        ({"targets": ["a:1"], "encoding": "xml"}, "unknown encoding 'xml'"),
        ({"targets": ["a:1"], "max_datagram": 70000}, "sinks.udp.max_datagram: expected 1-65507"),
        ({"targets": ["a:1"], "ttl": 300}, "sinks.udp.ttl: expected 0-255"),
        ({"targets": ["a:1"], "interface": "eth0"}, "sinks.udp.interface: expected the IPv4"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        UdpSink("udp", options, "gw-test")


# -- packing, as a property over sizes that cross every array-header boundary --------------

values = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=40), st.floats(allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(values, max_size=400),
    encoding=st.sampled_from(["json", "msgpack", "cbor"]),
    max_bytes=st.integers(8, 3000),
    max_readings=st.integers(1, 300),
)
def test_pack_arrays_fits_keeps_order_and_fills_greedily(items, encoding, max_bytes, max_readings):
    encode, decode = encoder(encoding), decoder(encoding)
    parts = [encode(value) for value in items]
    packed = list(pack_arrays(parts, encoding, max_bytes, max_readings))
    kept, position = [], 0
    for payload, count in packed:
        if payload is None:
            assert count == position and len(join_array(encoding, [parts[count]])) > max_bytes
            position += 1
            continue
        assert len(payload) <= max_bytes and 1 <= count <= max_readings
        assert decode(payload) == [decode(p) for p in parts[position : position + count]]
        # Greedy: the next reading would not have fitted (or the count limit was reached).
        following = parts[position + count : position + count + 1]
        if following and count < max_readings:
            grown = join_array(encoding, parts[position : position + count] + following)
            fits_alone = len(join_array(encoding, following)) <= max_bytes
            assert len(grown) > max_bytes or not fits_alone
        kept.extend(parts[position : position + count])
        position += count
    assert position == len(parts)
