"""The sensor-node firmware on a real pty, under the MicroPython unix port and under CPython."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import struct
import sys

import pytest

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import FIRMWARE_DIR
from tests.support.firmware import RUNTIMES, Peer, data_records, node_config, start_node

FAST = {"retransmit_ms": 200, "heartbeat_ms": 0}  # quick retransmits, no heartbeats by default


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param


@pytest.fixture
def launch(runtime, tmp_path):
    """launch(**config) -> (node, peer): a node on a fresh pty and the gateway end of it."""
    started = []

    def make(rate=20.0, **overrides):
        device = VirtualSerialDevice()
        config = node_config("node-1", rate, **{**FAST, **overrides})
        node = start_node(config, runtime, str(tmp_path), device)
        peer = Peer(device.path)
        started.append((node, peer, device))
        return node, peer

    yield make
    for node, peer, device in started:
        node.stop()
        peer.close()
        device.close()


def float32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def expect_data(peer, timeout=3.0, **match):
    def matches(frame):
        return all(getattr(frame, key) == value for key, value in match.items())

    return peer.expect(protocol.DATA, timeout, matches)


# -- HELLO -------------------------------------------------------------------------------------


def test_hello_describes_the_node_and_repeats_until_acknowledged(launch):
    node, peer = launch(rate=20.0)
    first = peer.expect(protocol.HELLO)
    hello = protocol.parse_hello(first.payload)
    assert hello["device"] == "node-1"
    assert hello["proto"] == [1] and isinstance(hello["fw"], str) and hello["fw"]
    assert 0 <= hello["boot"] <= 0xFFFFFFFF
    assert hello["oldest"] == 0  # nothing held yet: seq 0 comes first
    assert hello["max_frame"] == protocol.MAX_FRAME
    assert hello["streams"] == [{"name": "synthetic", "fields": ["n", "value"], "rate": 20.0}]
    assert {"cmd", "log", "heartbeat"} <= set(hello["caps"])
    assert (first.seq, first.flags) == (0, 0)

    # No DATA before the HELLO is acknowledged; the HELLO comes again every retransmit timeout.
    again = peer.expect(protocol.HELLO, timeout=1.0)
    assert protocol.parse_hello(again.payload)["boot"] == hello["boot"]
    assert not [f for f in peer.skipped if getattr(f, "type", None) == protocol.DATA]

    peer.ack_fresh()
    assert expect_data(peer).seq == 0


def test_a_stale_ack_from_before_a_reboot_does_not_answer_the_hello(launch):
    node, peer = launch(rate=20.0)
    hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
    peer.ack(410)  # meant for the previous boot: this boot has sent no DATA yet
    again = peer.expect(protocol.HELLO, timeout=1.0)
    assert protocol.parse_hello(again.payload)["boot"] == hello["boot"]
    assert not [f for f in peer.skipped if getattr(f, "type", None) == protocol.DATA]
    peer.ack_fresh()
    assert expect_data(peer).seq == 0


def test_every_boot_has_its_own_random_id(launch):
    boots = set()
    for _ in range(2):
        _, peer = launch()
        boots.add(peer.handshake()["boot"])
    assert len(boots) == 2


# -- DATA --------------------------------------------------------------------------------------


def test_data_arrives_in_order_with_consecutive_seqs_and_synthetic_values(launch):
    node, peer = launch(rate=50.0)
    peer.handshake()
    frames = []
    while len(frames) < 12:
        frame = expect_data(peer)
        assert frame.flags == 0
        frames.append(frame)
        peer.ack(frame.seq)
    assert [frame.seq for frame in frames] == list(range(12))
    records = data_records(frames)
    assert [n for _, _, (n, _) in records] == list(range(len(records)))
    for stream, _, (n, value) in records:
        assert stream == 0
        assert value == pytest.approx(float32(math.sin(2 * math.pi * n / 60)), abs=1e-6)
    times = [dts for _, dts, _ in records]
    assert times == sorted(times) and times[-1] - times[0] >= 15  # 50/s: 20 ms apart


def test_withheld_acks_bring_retransmissions_from_the_oldest_frame(launch):
    node, peer = launch(rate=20.0)
    peer.handshake()
    first = [expect_data(peer) for _ in range(3)]
    assert [frame.seq for frame in first] == [0, 1, 2]
    # No ACK: after the retransmit timeout every unacknowledged frame comes again, oldest first.
    resent = expect_data(peer, flags=protocol.FLAG_RETRANSMIT)
    assert resent.seq == 0 and resent.payload == first[0].payload
    following = expect_data(peer)
    assert following.seq == 1 and following.flags == protocol.FLAG_RETRANSMIT
    assert following.payload == first[1].payload

    # A cumulative ACK of everything sent so far ends the retransmissions: acknowledged as
    # they come, the frames after it go out once, without the flag.
    seen = peer.drain() + peer.skipped
    newest = max(frame.seq for frame in seen if frame.type == protocol.DATA)
    peer.ack(newest)
    fresh = []
    for frame in peer.collect_acking(0.6):
        if protocol.seq_newer(frame.seq, newest):
            fresh.append(frame)
    assert fresh and all(frame.flags == 0 for frame in fresh)
    assert [frame.seq for frame in fresh] == list(range(newest + 1, newest + 1 + len(fresh)))


def test_out_of_order_nack_releases_what_precedes_and_resends_from_the_expected_seq(launch):
    node, peer = launch(rate=20.0, retransmit_ms=5000)  # the timer cannot be what resends
    peer.handshake()
    for seq in range(4):
        assert expect_data(peer).seq == seq
    peer.nack(protocol.NACK_OUT_OF_ORDER, 2, "gap")  # frames 0 and 1 count as accepted
    resent = expect_data(peer, timeout=1.0, flags=protocol.FLAG_RETRANSMIT)
    assert resent.seq == 2
    assert expect_data(peer, timeout=1.0, flags=protocol.FLAG_RETRANSMIT).seq == 3
    peer.nack(protocol.NACK_OUT_OF_ORDER, 2, "gap")  # the same gap again, at once: ignored
    later = peer.collect(protocol.DATA, 0.4)
    assert later and 2 not in [frame.seq for frame in later]


def test_ring_bound_blocks_sampling_until_acks_free_frames(launch):
    node, peer = launch(rate=200.0, ring=4, heartbeat_ms=150)
    peer.handshake()
    data = peer.collect(protocol.DATA, 1.0)  # never acknowledged
    assert {frame.seq for frame in data} == {0, 1, 2, 3}
    heartbeat = peer.expect(protocol.HEARTBEAT)
    assert protocol.parse_heartbeat(heartbeat.payload)[1] == 4

    peer.ack(3)
    after = expect_data(peer, seq=4)
    assert after.flags == 0
    # Blocking loses nothing: the counter n carries on where frame 3 stopped.
    last_n = data_records([max(data, key=lambda f: f.seq)])[-1][2][0]
    assert data_records([after])[0][2][0] == last_n + 1


def test_ring_policy_drop_oldest_keeps_the_newest_and_starts_a_new_session(launch):
    node, peer = launch(rate=200.0, ring=4, ring_policy="drop_oldest")
    old_boot = peer.handshake()["boot"]
    data = peer.collect(protocol.DATA, 1.0)
    seqs = {frame.seq for frame in data}
    assert max(seqs) > 4  # sampling went on, the ring dropped the oldest frames
    retransmitted = [frame for frame in data if frame.flags & protocol.FLAG_RETRANSMIT]
    assert retransmitted and min(frame.seq for frame in retransmitted) > 0

    # The gateway still wants frame 0, which is gone: the node starts a new session.
    peer.nack(protocol.NACK_OUT_OF_ORDER, 0, "gap")
    hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
    assert hello["boot"] != old_boot and hello["oldest"] == 0  # the kept frames renumbered
    peer.ack_fresh()
    assert expect_data(peer).seq == 0
    status, result = peer.call("info", {"section": "counters"})
    assert status == protocol.STATUS_OK
    assert result["counters"]["dropped_frames"] > 0 and result["counters"]["sessions"] == 2


def test_need_hello_brings_the_hello_again_and_data_resumes_after_the_acked_seq(launch):
    node, peer = launch(rate=50.0)
    boot = peer.handshake()["boot"]
    for seq in range(4):
        assert expect_data(peer).seq == seq
    peer.ack(3)
    peer.nack(protocol.NACK_NEED_HELLO)
    hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
    assert hello["boot"] == boot and hello["oldest"] == 4  # all up to 3 acknowledged
    peer.drain()
    peer.ack(3)  # a gateway that knows this boot answers with the last seq it accepted
    assert expect_data(peer).seq == 4


def test_a_hello_after_need_hello_names_the_oldest_unacknowledged_frame(launch):
    node, peer = launch(rate=50.0, retransmit_ms=5000)  # the timer cannot be what resends
    boot = peer.handshake()["boot"]
    first = [expect_data(peer) for _ in range(4)]
    assert [frame.seq for frame in first] == [0, 1, 2, 3]
    peer.ack(1)  # 2 and 3 stay unacknowledged
    peer.nack(protocol.NACK_NEED_HELLO)
    hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
    assert hello["boot"] == boot and hello["oldest"] == 2
    peer.drain()
    # A gateway that restarted knows nothing of this boot: it answers FRESH and expects
    # exactly the oldest the HELLO named, which comes first, resent.
    peer.ack_fresh()
    resent = expect_data(peer, timeout=1.0)
    assert (resent.seq, resent.flags) == (2, protocol.FLAG_RETRANSMIT)
    assert resent.payload == first[2].payload


# -- commands ----------------------------------------------------------------------------------


def test_ping_info_and_unknown_commands_are_answered(launch):
    node, peer = launch()
    hello = peer.handshake()
    status, result = peer.call("ping")
    assert status == protocol.STATUS_OK and result["pong"] is True and result["uptime_ms"] >= 0
    status, info = peer.call("info")
    assert status == protocol.STATUS_OK
    assert info["device"] == "node-1" and info["boot"] == hello["boot"]
    assert info["uptime_ms"] >= result["uptime_ms"] and isinstance(info["queued"], int)
    status, section = peer.call("info", {"section": "config"})
    assert status == protocol.STATUS_OK and section["config"]["device"] == "node-1"
    status, result = peer.call("self_destruct")
    assert status == protocol.NACK_UNKNOWN_COMMAND and "self_destruct" in result["error"]
    status, result = peer.call("set_rate", {"stream": "nope", "rate": 2})
    assert status == protocol.NACK_BAD_ARGUMENTS and "synthetic" in result["error"]
    status, result = peer.call("set_rate", {"stream": "synthetic", "rate": -1})
    assert status == protocol.NACK_BAD_ARGUMENTS and "rate" in result["error"]


def test_set_rate_changes_the_sampling_rate_at_once(launch):
    node, peer = launch(rate=2.0)
    peer.handshake()
    status, result = peer.call("set_rate", {"stream": "synthetic", "rate": 100})
    assert status == protocol.STATUS_OK and result["rate"] == 100.0
    frames = peer.collect_acking(0.5)
    records = data_records([frame for frame in frames if not frame.flags])
    assert len(records) >= 25  # 100/s for half a second; 2/s would give one
    with open(node.config_path) as handle:
        assert json.load(handle)["streams"][0]["rate"] == 100

    status, result = peer.call("set_rate", {"stream": "synthetic", "rate": 0})
    assert status == protocol.STATUS_OK and result["rate"] == 0.0
    peer.collect_acking(0.1)  # what was sampled before the pause
    assert not peer.collect_acking(0.4)  # rate 0: paused


def test_set_config_merges_saves_and_applies_live_keys(launch):
    node, peer = launch(heartbeat_ms=0)
    peer.handshake()
    status, result = peer.call("set_config", {"heartbeat_ms": 150})
    assert status == protocol.STATUS_OK
    assert result == {"keys": ["heartbeat_ms"], "saved": True, "reboot_required": False}
    with open(node.config_path) as handle:
        saved = json.load(handle)
    assert saved["heartbeat_ms"] == 150 and saved["device"] == "node-1"
    beats = peer.collect(protocol.HEARTBEAT, 0.8)
    assert len(beats) >= 3  # 5 due; heartbeats were off before

    status, result = peer.call("set_config", {"ring": 0, "colour": "blue"})
    assert status == protocol.NACK_BAD_ARGUMENTS
    assert (
        "ring: expected an integer" in result["error"] and "colour: unknown key" in result["error"]
    )
    with open(node.config_path) as handle:
        assert json.load(handle) == saved

    status, result = peer.call("set_config", {"heartbeat_ms": None, "ring": 8})
    assert status == protocol.STATUS_OK  # null removes the key: the default applies again
    assert result == {"keys": ["heartbeat_ms", "ring"], "saved": True, "reboot_required": True}
    with open(node.config_path) as handle:
        saved = json.load(handle)
    assert (saved["heartbeat_ms"], saved["ring"]) == (5000, 8)


def test_reboot_answers_then_boots_afresh(launch):
    node, peer = launch(rate=50.0)
    old = peer.handshake()
    for _seq in range(3):
        peer.ack(expect_data(peer).seq)
    status, result = peer.call("reboot")
    assert (status, result) == (protocol.STATUS_OK, {})
    hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
    assert hello["boot"] != old["boot"]
    peer.ack_fresh()
    frame = expect_data(peer)
    assert frame.seq == 0 and frame.flags == 0
    assert data_records([frame])[0][2][0] == 0  # the synthetic counter restarts with the boot
    assert node.running


# -- bad input and stopping --------------------------------------------------------------------


def test_bad_frames_are_counted_and_answered_without_harm(launch):
    node, peer = launch()
    peer.handshake()
    peer.write(b"\x01\x02garbage with no meaning\x00")
    good = protocol.encode_frame(protocol.CMD, 0, protocol.cmd_payload(99, "ping"))
    corrupt = bytearray(good)
    corrupt[3] ^= 0xFF
    peer.write(bytes(corrupt))
    peer.write(protocol.encode_frame(protocol.ACK, 0, b"", 0, version=2))
    peer.write(protocol.encode_frame(0x7F, 0))
    peer.send(protocol.CMD, payload=b"\x07")  # too short to hold a request id
    peer.send(protocol.DATA, 5, protocol.data_payload([(0, 0, [1.0])]))  # wrong direction
    nacks = [protocol.parse_nack(peer.expect(protocol.NACK).payload)[0] for _ in range(3)]
    assert nacks == [
        protocol.NACK_UNSUPPORTED_VERSION,
        protocol.NACK_UNKNOWN_TYPE,
        protocol.NACK_BAD_PAYLOAD,
    ]
    peer.send(protocol.CMD, payload=b"\x2a\x00{not json")
    answer = peer.expect(protocol.RESP)
    request_id, status, result = protocol.parse_resp(answer.payload)
    assert (request_id, status) == (42, protocol.NACK_BAD_PAYLOAD) and "JSON" in result["error"]
    status, result = peer.call("info", {"section": "counters"})
    assert status == protocol.STATUS_OK
    assert result["counters"]["bad_frames"] == 4 and result["counters"]["unexpected"] == 1
    assert node.running


def test_sigint_stops_the_node_cleanly(launch):
    node, peer = launch()
    peer.handshake()
    assert node.stop() == 0, node.output()[-3000:]


def test_sigint_stops_a_node_started_with_sigint_ignored(launch):
    # A shell starts background jobs with SIGINT ignored, and a child inherits that.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        node, peer = launch()
    finally:
        signal.signal(signal.SIGINT, previous)
    peer.handshake()
    assert node.stop() == 0, node.output()[-3000:]


def test_repl_escape_ends_the_host_node(launch):
    node, peer = launch()
    peer.handshake()
    peer.write(b"\x00\x03\x03\x03\x03\x03\x00")
    assert node.wait(5) == 0
    assert "repl" in node.output()


def test_node_exits_when_its_pty_is_gone(runtime, tmp_path):
    device = VirtualSerialDevice()
    node = start_node(node_config("node-1", **FAST), runtime, str(tmp_path), device)
    try:
        device.close()  # with its slave closed too, no one can ever open this pty again
        assert node.wait(5) == 3
    finally:
        node.stop()


def test_node_opens_a_tty_path_itself(runtime, tmp_path):
    master, slave = os.openpty()
    tty_path = os.ttyname(slave)
    node = start_node(node_config("node-1", **FAST), runtime, str(tmp_path), tty_path=tty_path)
    peer = Peer(fd=master)
    try:
        peer.handshake()
        assert expect_data(peer).seq == 0
        status, result = peer.call("ping")
        assert status == protocol.STATUS_OK and result["pong"] is True
    finally:
        node.stop()
        os.close(master)
        os.close(slave)


def test_broken_config_file_falls_back_to_defaults_and_says_why(runtime, tmp_path):
    device = VirtualSerialDevice()
    node = start_node(node_config("node-1", rate=-5.0, **FAST), runtime, str(tmp_path), device)
    peer = Peer(device.path)
    try:
        hello = protocol.parse_hello(peer.expect(protocol.HELLO).payload)
        assert hello["device"] == "sensor-node"  # the defaults, but on the configured link
        peer.ack_fresh()
        log = peer.expect(protocol.LOG, where=lambda f: b"streams[0].rate" in f.payload)
        level, text = protocol.parse_log(log.payload)
        assert level == protocol.LOG_ERROR and "rate: expected a number 0..1000" in text
    finally:
        node.stop()
        peer.close()
        device.close()


def test_a_sensor_that_cannot_start_is_reported_and_the_other_streams_carry_on(launch):
    # The unix port and CPython have no ADC: that stream fails, the synthetic one is unharmed.
    streams = [
        {"name": "pot", "type": "adc", "pin": 26, "rate": 50},
        {"name": "synthetic", "type": "synthetic", "rate": 50},
    ]
    node, peer = launch(streams=streams)
    hello = peer.handshake()
    assert [stream["name"] for stream in hello["streams"]] == ["pot", "synthetic"]
    log = peer.expect(protocol.LOG, where=lambda frame: b"pot:" in frame.payload)
    level, text = protocol.parse_log(log.payload)
    assert level == protocol.LOG_ERROR and "adc driver not available" in text
    records = data_records(peer.collect_acking(0.5))
    assert records and {stream for stream, _, _ in records} == {1}
    status, result = peer.call("info", {"section": "counters"})
    assert result["counters"]["sensor_errors"] >= 10
    logs = [f for f in peer.skipped if f.type == protocol.LOG and b"pot:" in f.payload]
    assert not logs  # one LOG for the run of failures, not one per sample


# -- sensor drivers and pieces without I/O (CPython) -------------------------------------------


def load_firmware_module(name):
    spec = importlib.util.spec_from_file_location(
        f"sensor_node_{name}", FIRMWARE_DIR / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_set_rate_checks_the_limit_config_json_has():
    # set_rate keeps its own copy so it runs without config.py (a full ring's heap lacks room).
    limits = load_firmware_module("node_commands").MAX_RATE, load_firmware_module("config").MAX_RATE
    assert limits[0] == limits[1]


def test_sensirion_crc_and_sht3x_conversion_follow_the_datasheet():
    sensors = load_firmware_module("sensors")
    assert sensors.sensirion_crc8(b"\xbe\xef") == 0x92  # SHT3x datasheet §4.12 example
    raw_t, raw_h = 0x6666, 0x8000  # 25.0 °C and 50.0 %RH by the datasheet formulas
    data = bytes(
        [
            0x66,
            0x66,
            sensors.sensirion_crc8(b"\x66\x66"),
            0x80,
            0x00,
            sensors.sensirion_crc8(b"\x80\x00"),
        ]
    )
    temperature, humidity = sensors.decode_sht3x(data)
    assert temperature == pytest.approx(-45 + 175 * raw_t / 65535)
    assert humidity == pytest.approx(100 * raw_h / 65535)
    with pytest.raises(sensors.SensorError, match="CRC"):
        sensors.decode_sht3x(data[:5] + b"\x00")


def test_aht20_conversion_follows_the_datasheet():
    sensors = load_firmware_module("sensors")
    humidity_raw, temperature_raw = 0x80000, 0x60000  # 50 %RH, 25 °C
    body = bytes(
        [
            0x1C,  # idle, calibrated
            humidity_raw >> 12,
            (humidity_raw >> 4) & 0xFF,
            ((humidity_raw & 0x0F) << 4) | (temperature_raw >> 16),
            (temperature_raw >> 8) & 0xFF,
            temperature_raw & 0xFF,
        ]
    )
    temperature, humidity = sensors.decode_aht20(body + bytes([sensors.sensirion_crc8(body)]))
    assert temperature == pytest.approx(25.0) and humidity == pytest.approx(50.0)
    with pytest.raises(sensors.SensorError, match="measuring"):
        sensors.decode_aht20(bytes([0x9C]) + body[1:] + b"\x00")


def test_rp2040_temperature_formula():
    sensors = load_firmware_module("sensors")
    raw_at_0706 = round(0.706 / 3.3 * 65535)
    assert sensors.rp2040_celsius(raw_at_0706) == pytest.approx(27.0, abs=0.05)


def test_ring_releases_cumulatively_and_rewinds_for_retransmission():
    ring_module = load_firmware_module("ring")
    ring = ring_module.Ring(3, first_seq=65534)
    for payload in (b"a", b"b", b"c"):
        ring.push(payload)
    assert ring.full() and ring.next_seq() == 1  # 65534, 65535, 0: the seq wraps
    for expected in (65534, 65535):
        seq, payload, again = ring.next_unsent()
        assert seq == expected and not again
        ring.mark_sent(seq, ring.position())
    ring.rewind()
    assert ring.next_unsent() == (65534, b"a", True)
    assert ring.ack(65535) == 2 and ring.first_seq == 0 and len(ring) == 1
    assert ring.next_unsent() == (0, b"c", False)
    assert ring.ack(65000) == 0  # older than anything held: nothing to release
