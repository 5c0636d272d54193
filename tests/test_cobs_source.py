"""The serial source with framing = "cobs" on real ptys, against a scripted protocol device."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable

import pytest

from gateway.app import Gateway
from gateway.config import loads, presets
from gateway.core import protocol
from gateway.ingest import Ingest
from gateway.sinks.base import Sink
from gateway.sources.cobs_link import CobsHandler, CobsLink
from gateway.sources.commands import CommandError, CommandTimeout
from gateway.sources.serial import SerialSource
from gateway.store.sequences import SequenceStore
from tests.support.cobs_device import DEFAULT_STREAMS, CobsTestDevice, reading_values
from tests.support.relay import TO_DEVICE, TO_GATEWAY, CorruptingRelay

DEADLINE = 15.0  # seconds; generous for a loaded 2-core machine, reached only on failure

CONFIG = """
[gateway]
id = "gw"
data_dir = "{data_dir}"
[[sources]]
name = "bench-port"
port = "/dev/null"
framing = "cobs"
preset = "raw"
[presets.raw]
routes = [{{ sink = "q" }}]
[sinks.q]
type = "udp"
targets = ["127.0.0.1:9"]
"""


class QueueSink(Sink):
    """A real Sink that only queues (its sender task never runs); tests await what it took."""

    kind = "queue"

    def __init__(self) -> None:
        super().__init__("q", {"queue_size": 1_000_000}, "gw")
        self.taken: list[dict] = []
        self._changed = asyncio.Event()

    def offer(self, reading: dict, route: dict) -> bool:
        queued = super().offer(reading, route)
        if queued:
            self.taken.append(reading)
            self._changed.set()
        return queued

    def readings(self) -> list[dict]:
        return list(self.taken)

    async def wait_count(self, count: int, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while len(self.taken) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(self.taken)} of {count} readings in {timeout}s")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class Rig:
    """Ingest → QueueSink, fed by a SerialSource with framing "cobs" on `port`."""

    def __init__(self, tmp_path: Any, port: str):
        config = loads(CONFIG.format(data_dir=tmp_path), environ={})
        source = {**config["sources"][0], "port": port, "reconnect_interval": 0.05}
        self.sink = QueueSink()
        self.sequences = SequenceStore(str(tmp_path / "seq.json"))
        preset = presets.resolve(config, "raw")
        ingest_options = {**source, "format": "json"}  # as the app does: no line parser used
        self.ingest = Ingest(ingest_options, preset, [(self.sink, {})], "gw", self.sequences)
        self.link = CobsLink(source["name"], accepting=self.ingest.accepting)
        self.handler = CobsHandler(self.link, self.ingest.on_data, self.ingest.settle)
        self.events: list[str] = []
        self._changed = asyncio.Event()
        self.source = SerialSource(
            source, self.ingest.on_line, self._on_event, handler=self.handler
        )

    def _on_event(self, name: str, detail: dict) -> None:
        self.events.append(name)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """For link state with no event of its own (counters, device learned): poll, bounded."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"condition not met in {timeout}s: {self.stats}"
            await asyncio.sleep(0.005)

    @property
    def stats(self) -> dict[str, Any]:
        return self.source.stats()["link"]

    def readings(self) -> list[dict]:
        return self.sink.readings()


@contextlib.asynccontextmanager
async def running(
    tmp_path: Any, device: CobsTestDevice, port: str | None = None, read_mode: str = "fd"
):
    rig = Rig(tmp_path, port or device.path)
    rig.source.read_mode = read_mode
    rig.source.start()
    await device.start()
    try:
        yield rig
    finally:
        await rig.source.stop()
        await device.stop()
        rig.sequences.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def assert_exactly_once_in_order(readings: list[dict], count: int, first: int = 0) -> None:
    ns = [reading["data"]["n"] for reading in readings]
    assert len(ns) == count, f"{len(ns)} readings, expected {count}"
    assert ns == list(range(first, first + count))  # no duplicate, no gap, in order
    for reading in readings:
        assert list(reading["data"].values()) == reading_values(int(reading["data"]["n"]))
    assert [reading["seq"] for reading in readings] == list(range(len(readings)))


# -- HELLO and the happy path -------------------------------------------------------------


def test_hello_teaches_the_gateway_the_device_and_is_logged(tmp_path, caplog):
    streams = [
        {"name": "env", "fields": ["n", "value"], "rate": 1.0},
        {"name": "power", "fields": ["watts"], "rate": 0.5},
    ]
    device = CobsTestDevice("node-7", fw="2.1.0", streams=streams, boot=0x1234ABCD)

    async def scenario():
        with caplog.at_level(logging.INFO, logger="gateway.sources"):
            async with running(tmp_path, device) as rig:
                await device.wait_for_frame(protocol.ACK)
                await rig.wait_for(lambda: rig.source.stats()["remote"]["greeted"])
                remote = rig.source.stats()["remote"]
        assert remote["device"] == "node-7" and remote["fw"] == "2.1.0"
        assert remote["boot"] == 0x1234ABCD and remote["greeted"]
        assert [stream["name"] for stream in remote["streams"]] == ["env", "power"]
        assert remote["accepted_seq"] is None  # no DATA yet
        ack = device.received[0]
        assert ack.type == protocol.ACK and ack.flags & protocol.FLAG_FRESH and ack.seq == 0xFFFF
        assert device.counters["fresh_acks"] == 1
        assert rig.stats["hellos"] == 1 and rig.stats["reboots"] == 0

    run(scenario())
    assert (
        f"device node-7 (fw 2.1.0) connected on {device.path}, boot 1234abcd; "
        "streams env [n, value] at 1/s, power [watts] at 0.5/s"
    ) in caplog.text


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_ten_thousand_readings_arrive_exactly_once_and_in_order(tmp_path, read_mode):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device, read_mode=read_mode) as rig:
            await device.send_readings(10_000, timeout=DEADLINE)
            await rig.sink.wait_count(10_000)
            readings = rig.readings()
            stats = rig.stats
        assert_exactly_once_in_order(readings, 10_000)
        first = readings[0]
        assert first["device"] == "node-1" and first["stream"] == "env"
        assert first["gateway"] == "gw" and isinstance(first["dts"], int)
        assert stats["readings"] == 10_000
        assert stats["duplicates"] == stats["gaps"] == stats["bad_frames"] == 0
        assert stats["frames"] == device.counters["data_frames"] + device.counters["hellos_sent"]
        # Coalesced: far fewer ACKs than DATA frames, yet every frame acknowledged.
        assert 0 < stats["acks_sent"] < device.counters["data_frames"]
        assert device.counters["retransmits"] == 0

    run(scenario())


def test_float32_values_come_out_as_the_decimals_the_device_meant(tmp_path):
    streams = [{"name": "env", "fields": ["t", "h", "x"], "rate": 1.0}]
    device = CobsTestDevice(streams=streams)

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            record = (0, 98765, [21.5, 40.2, 1013.25])
            bad = (0, 98766, [float("nan"), float("inf"), 0.1])
            payload = protocol.data_payload([record, bad])
            device.send_raw(protocol.encode_frame(protocol.DATA, 0, payload))
            await rig.sink.wait_count(2)
            readings = rig.readings()
        assert readings[0]["data"] == {"t": 21.5, "h": 40.2, "x": 1013.25}
        assert readings[0]["dts"] == 98765
        assert readings[1]["data"] == {"t": None, "h": None, "x": 0.1}  # JSON has no NaN
        assert rig.stats["non_finite_values"] == 2

    run(scenario())


# -- reliability ----------------------------------------------------------------------------


def test_withheld_acks_make_the_device_resend_and_nothing_is_duplicated(tmp_path):
    device = CobsTestDevice(ring_size=16, retransmit_timeout=0.1)

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)  # the HELLO-ACK
            device.ignore_acks(0.5)
            await device.send_readings(3000, timeout=DEADLINE)
            await rig.sink.wait_count(3000)
            readings, stats = rig.readings(), rig.stats
        assert device.counters["acks_ignored"] > 0
        assert device.counters["retransmit_rounds"] >= 2  # the timeout fired while ACKs were lost
        assert stats["duplicates"] >= device.counters["retransmits"] - 16 > 0
        assert_exactly_once_in_order(readings, 3000)

    run(scenario())


def test_acks_wait_until_the_ingest_has_settled_the_readings(tmp_path):
    device = CobsTestDevice(retransmit_timeout=0.1)
    settling = {"hold": False}

    async def scenario():
        released = asyncio.Event()

        async def settle() -> None:
            if settling["hold"]:
                await released.wait()

        async with running(tmp_path, device) as rig:
            rig.handler.settle = settle
            await device.wait_for_frame(protocol.ACK)  # the HELLO-ACK went out unheld
            settling["hold"] = True
            device.queue_readings(100)
            await rig.sink.wait_count(100)
            # Long enough for an ACK (due 20 ms after the first frame) to have gone out:
            await rig.wait_for(lambda: device.counters["retransmit_rounds"] >= 2)
            assert device.counters["acks"] == 1 and device.queued > 0
            released.set()
            await device.wait_idle(DEADLINE)
            readings, stats = rig.readings(), rig.stats
        assert stats["duplicates"] > 0  # the resent frames, dropped
        assert_exactly_once_in_order(readings, 100)

    run(scenario())


def test_readings_the_ingest_could_not_make_safe_are_taken_again_never_lost(tmp_path):
    device = CobsTestDevice(retransmit_timeout=0.1)
    answers = [False]  # the first settle after the HELLO-ACK fails, the rest succeed

    async def scenario():
        async with running(tmp_path, device) as rig:
            ingest_settle = rig.handler.settle

            async def settle() -> bool:
                return answers.pop(0) if answers else await ingest_settle()

            await device.wait_for_frame(protocol.ACK)
            rig.handler.settle = settle
            await device.send_readings(100, timeout=DEADLINE)
            readings, stats = rig.readings(), rig.stats
        assert stats["unsafe_rollbacks"] == 1 and device.counters["retransmit_rounds"] >= 1
        ns = [int(reading["data"]["n"]) for reading in readings]
        repeated = len(ns) - 100
        assert repeated > 0  # the readings taken before the failed settle came again
        assert ns[:repeated] == list(range(repeated))
        assert ns[repeated:] == list(range(100))  # then all of them from there, in order

    run(scenario())


def test_a_full_ingest_refuses_data_with_busy_and_takes_it_when_resent(tmp_path):
    device = CobsTestDevice(retransmit_timeout=0.1)
    full = {"now": False}

    async def scenario():
        async with running(tmp_path, device) as rig:
            rig.link.accepting = lambda: not full["now"]
            await device.wait_for_frame(protocol.ACK)
            full["now"] = True
            device.queue_readings(50)
            await rig.wait_for(lambda: rig.stats["busy"] >= 2)
            assert rig.readings() == []
            full["now"] = False
            await device.wait_idle(DEADLINE)
            readings, stats = rig.readings(), rig.stats
        assert stats["nacks_sent_by_code"]["BUSY"] >= 1
        assert stats["nacks_sent_by_code"]["BUSY"] < stats["busy"]  # one per interval
        assert device.counters["nack BUSY"] >= 1
        assert_exactly_once_in_order(readings, 50)

    run(scenario())


def test_a_lost_frame_gets_nack_out_of_order_and_is_resent(tmp_path):
    device = CobsTestDevice(retransmit_timeout=5.0)  # recovery must come from the NACK

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.send_readings(16, timeout=DEADLINE)
            device.lose_data_frames(1)
            await device.send_readings(184, timeout=DEADLINE)
            await rig.sink.wait_count(200)
            readings, stats = rig.readings(), rig.stats
        (_code, expected, _reason), *_ = device.nacks(protocol.NACK_OUT_OF_ORDER)
        assert expected == 1  # the lost frame after seq 0
        assert stats["gaps"] >= 1 and stats["nacks_sent_by_code"]["OUT_OF_ORDER"] >= 1
        # One NACK for the burst behind the gap, not one per frame.
        assert stats["nacks_sent_by_code"]["OUT_OF_ORDER"] < stats["gaps"]
        assert device.counters["nack OUT_OF_ORDER"] >= 1
        assert_exactly_once_in_order(readings, 200)

    run(scenario())


def test_a_lost_first_frame_after_a_fresh_hello_ack_is_a_gap_and_is_resent(tmp_path):
    device = CobsTestDevice(retransmit_timeout=5.0)  # recovery must come from the NACK

    async def scenario():
        async with running(tmp_path, device) as rig:
            hello_ack = await device.wait_for_frame(protocol.ACK)
            assert hello_ack.flags & protocol.FLAG_FRESH
            device.lose_data_frames(1)  # seq 0, the oldest the HELLO named, never arrives
            await device.send_readings(200, timeout=DEADLINE)
            await rig.sink.wait_count(200)
            readings, stats = rig.readings(), rig.stats
        (_code, expected, _reason), *_ = device.nacks(protocol.NACK_OUT_OF_ORDER)
        assert expected == 0  # not "whatever came first": the HELLO said seq 0 comes first
        assert device.counters["lost_on_purpose"] == 1 and device.counters["retransmit_rounds"]
        assert stats["gaps"] >= 1 and stats["duplicates"] == 0
        # One NACK for the burst behind the gap, and no other kind.
        assert list(stats["nacks_sent_by_code"]) == ["OUT_OF_ORDER"]
        assert stats["nacks_sent_by_code"]["OUT_OF_ORDER"] < stats["gaps"]
        assert_exactly_once_in_order(readings, 200)

    run(scenario())


def test_after_need_hello_the_gateway_expects_the_oldest_frame_the_hello_names(tmp_path):
    # Mid-stream (seq 100) the device holds frames 100..103 that a restarted gateway never
    # saw; after NEED_HELLO its HELLO names 100, so losing 100 once more is a gap too.
    device = CobsTestDevice(greeted=True, records_per_frame=4, retransmit_timeout=5.0)
    device.seq = 100

    async def scenario():
        device.lose_data_frames(5)  # the four first sendings, then the first resend (100)
        device.queue_readings(16)
        async with running(tmp_path, device) as rig:
            await rig.wait_for(lambda: device.counters["lost_on_purpose"] == 4)
            await rig.wait_for(lambda: rig.source.state == "connected")
            device.send_heartbeat()  # the idle device learns of the restart: NEED_HELLO
            await rig.sink.wait_count(16)
            readings, stats, hello = rig.readings(), rig.stats, rig.link.hello
        assert device.nacks(protocol.NACK_NEED_HELLO) and device.counters["fresh_acks"] == 1
        assert hello["oldest"] == 100 and device.counters["lost_on_purpose"] == 5
        assert [nack[1] for nack in device.nacks(protocol.NACK_OUT_OF_ORDER)] == [100]
        assert stats["gaps"] == 3 and stats["duplicates"] == 0  # 101..103, dropped
        assert_exactly_once_in_order(readings, 16)

    run(scenario())


def test_corrupted_and_truncated_frames_are_all_counted_and_nothing_bad_gets_through(tmp_path):
    device = CobsTestDevice(retransmit_timeout=0.1, records_per_frame=8)

    async def scenario():
        # Bad from the very first frame: the HELLO, its ACK and the first DATA frames too.
        relay = CorruptingRelay(device.serial.slave_name, to_gateway=0.04, to_device=0.1, seed=7)
        relay.start()
        try:
            async with running(tmp_path, device, port=relay.path) as rig:
                await device.send_readings(10_000, timeout=30)
                await rig.sink.wait_count(10_000)
                # Frames still on the cable must be counted before comparing.
                relayed = relay.frames
                await rig.wait_for(
                    lambda: (
                        rig.stats["frames"] + rig.stats["bad_frames"] == relayed[TO_GATEWAY]
                        and len(device.received) + device.counters["bad_frames"]
                        == relayed[TO_DEVICE]
                    )
                )
                readings, stats = rig.readings(), rig.stats
        finally:
            relay.close()
        assert relay.corrupted[TO_GATEWAY] > 10 and relay.corrupted[TO_DEVICE] > 2
        assert relay.kinds["flip"] and relay.kinds["truncate"]
        assert stats["bad_frames"] == relay.corrupted[TO_GATEWAY]
        assert device.counters["bad_frames"] == relay.corrupted[TO_DEVICE]
        assert device.counters["retransmits"] > 0
        assert_exactly_once_in_order(readings, 10_000)

    run(scenario())


def test_garbage_between_frames_is_counted_and_the_link_resyncs(tmp_path):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            oversize = bytes(range(1, 256)) * (protocol.MAX_ENCODED // 255 + 1)
            device.send_raw(b"\x00\x05garbage\x00" + oversize + b"\x00")
            await device.send_readings(100, timeout=DEADLINE)
            await rig.sink.wait_count(100)
            readings, stats = rig.readings(), rig.stats
        assert stats["bad_frames"] == 2
        assert stats["bad_frames_by_reason"] == {"cobs": 1, "too_large": 1}
        assert stats["nacks_sent"] == 0  # nothing in a frame that failed COBS can be trusted
        assert_exactly_once_in_order(readings, 100)

    run(scenario())


def test_data_before_hello_gets_need_hello_then_data_flows(tmp_path):
    device = CobsTestDevice(greeted=True)  # thinks it said HELLO already

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.send_readings(500, timeout=DEADLINE)
            await rig.sink.wait_count(500)
            readings, stats = rig.readings(), rig.stats
        assert device.nacks(protocol.NACK_NEED_HELLO)
        assert stats["nacks_sent_by_code"]["NEED_HELLO"] >= 1
        assert device.counters["hellos_sent"] >= 1 and device.counters["fresh_acks"] == 1
        assert_exactly_once_in_order(readings, 500)

    run(scenario())


def test_wrong_version_and_unknown_type_are_nacked_and_counted(tmp_path):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            heartbeat = protocol.heartbeat_payload(1, 0)
            device.send_raw(protocol.encode_frame(protocol.HEARTBEAT, 0, heartbeat, version=2))
            nack = protocol.nack_payload(protocol.NACK_BUSY)
            device.send_raw(protocol.encode_frame(protocol.NACK, 0, nack, version=2))
            device.send_raw(protocol.encode_frame(0x42, 0, b"?"))
            device.send_raw(protocol.encode_frame(protocol.CMD, 0, b"\x00\x00{}"))  # gw→dev type
            future = protocol.hello_payload({**device.hello, "proto": [2]})
            device.send_raw(protocol.encode_frame(protocol.HELLO, 0, future))
            await rig.wait_for(lambda: len(device.nacks(protocol.NACK_UNSUPPORTED_VERSION)) == 2)
            await rig.wait_for(lambda: len(device.nacks(protocol.NACK_UNKNOWN_TYPE)) == 2)
            await device.send_readings(10, timeout=DEADLINE)
            await rig.sink.wait_count(10)
            stats = rig.stats
        assert stats["bad_frames_by_reason"] == {"version": 2, "type": 2}
        assert stats["unsupported_hellos"] == 1 and stats["hellos"] == 1
        # The wrong-version NACK was not answered: a NACK is never answered with a NACK.
        assert stats["nacks_sent_by_code"] == {"UNSUPPORTED_VERSION": 2, "UNKNOWN_TYPE": 2}
        assert stats["heartbeats"] == 0  # the wrong-version heartbeat was not taken

    run(scenario())


def test_a_bad_data_payload_is_counted_nacked_and_does_not_stall_the_link(tmp_path):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            # seq 0 names stream 5 (HELLO declared one stream); the device resends nothing.
            payload = protocol.data_payload([(5, 1, [1.0, 2.0])])
            device.send_raw(protocol.encode_frame(protocol.DATA, 0, payload))
            await rig.wait_for(lambda: device.nacks(protocol.NACK_BAD_PAYLOAD))
            device.seq = 1
            await device.send_readings(50, timeout=DEADLINE)
            await rig.sink.wait_count(50)
            readings, stats = rig.readings(), rig.stats
        assert stats["bad_payloads"] == 1 and stats["bad_frames_by_reason"] == {"payload": 1}
        assert "stream index 5" in device.nacks(protocol.NACK_BAD_PAYLOAD)[0][2]
        assert_exactly_once_in_order(readings, 50)

    run(scenario())


def test_reboot_is_seen_through_the_boot_id_and_readings_continue(tmp_path, caplog):
    device = CobsTestDevice(boot=1)

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.send_readings(300, timeout=DEADLINE)
            await rig.sink.wait_count(300)
            device.reboot(boot=2)
            await device.send_readings(300, timeout=DEADLINE)
            await rig.sink.wait_count(600)
            readings, stats, remote = rig.readings(), rig.stats, rig.source.stats()["remote"]
        assert stats["reboots"] == 1 and remote["boot"] == 2
        assert device.counters["fresh_acks"] == 2  # the new boot starts from scratch
        assert stats["duplicates"] == 0
        assert_exactly_once_in_order(readings, 600)

    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        run(scenario())
    assert "device node-1 rebooted (boot 00000002, was 00000001" in caplog.text


def test_unplug_and_replug_resume_without_duplicates(tmp_path):
    device = CobsTestDevice(retransmit_timeout=0.1)

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.send_readings(1000, timeout=DEADLINE)
            device.queue_readings(2000)
            await rig.sink.wait_count(1500)
            device.unplug()  # mid-stream: frames in the ring, some ACKs never to arrive
            await rig.wait_for(lambda: rig.events.count("waiting") >= 1)
            device.replug()
            await device.wait_idle(DEADLINE)
            await rig.sink.wait_count(3000)
            readings, stats = rig.readings(), rig.stats
        assert rig.events.count("connected") == 2 and rig.source.counters["reconnects"] == 1
        assert stats["reboots"] == 0 and stats["hellos"] == 2
        assert device.counters["resume_acks"] == 1  # the gateway remembered the boot's seq
        assert_exactly_once_in_order(readings, 3000)

    run(scenario())


# -- heartbeats and device logs -----------------------------------------------------------


def test_a_heartbeat_without_hello_gets_need_hello_so_an_idle_device_greets_again(tmp_path):
    device = CobsTestDevice(greeted=True)  # idle, and sure the gateway knows it

    async def scenario():
        async with running(tmp_path, device) as rig:
            await rig.wait_for(lambda: rig.source.state == "connected")
            device.send_heartbeat()
            await device.wait_for_frame(protocol.ACK)  # the HELLO-ACK after NEED_HELLO
            await rig.wait_for(lambda: rig.link.greeted)
            assert rig.source.stats()["remote"]["online"]
            device.send_heartbeat()
            await rig.wait_for(lambda: rig.stats["heartbeats"] == 1)
        assert device.nacks(protocol.NACK_NEED_HELLO) and device.counters["fresh_acks"] == 1

    run(scenario())


def test_heartbeats_are_tracked_and_device_logs_relogged_at_their_level(tmp_path, caplog):
    device = CobsTestDevice("node-3")

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            device.send_heartbeat(queued=2)
            device.send_log(protocol.LOG_WARNING, "sensor glitch: bus reset")
            device.send_log(protocol.LOG_DEBUG, "tick")
            await rig.wait_for(lambda: rig.stats["device_logs"] == 2)
            return rig.source.stats()["remote"]["last_heartbeat"]

    with caplog.at_level(logging.DEBUG, logger="gateway.device"):
        heartbeat = run(scenario())
    assert heartbeat["queued"] == 2 and heartbeat["uptime_ms"] >= 0
    assert abs(heartbeat["at"] - time.time()) < DEADLINE
    records = [r for r in caplog.records if r.name == "gateway.device.node-3"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "sensor glitch: bus reset"),
        (logging.DEBUG, "tick"),
    ]


# -- commands -------------------------------------------------------------------------------


def test_every_command_round_trips(tmp_path):
    device = CobsTestDevice(boot=10)

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            await rig.wait_for(lambda: rig.link.greeted)
            pong = await rig.source.command("ping")
            assert pong["pong"] is True and pong["uptime_ms"] >= 0

            info = await rig.source.command("info")
            assert info["device"] == "node-1" and info["boot"] == 10 and info["queued"] == 0

            device.streams[0]["rate"] = 2.0
            device.start_sampling()
            answer = await rig.source.command("set_rate", {"stream": "env", "rate": 400.0})
            assert answer == {"stream": "env", "rate": 400.0}
            # At 2/s forty readings would take 20 s; at the new rate they take a tenth of one.
            await rig.sink.wait_count(40, timeout=5.0)

            config = await rig.source.command("set_config", {"name": "bench", "interval": 5})
            assert config == {"keys": ["interval", "name"]}
            assert device.config == {"interval": 5, "name": "bench"}

            assert await rig.source.command("reboot") == {}
            await rig.wait_for(lambda: rig.link.boot != 10)
            assert rig.link.boot == device.boot and rig.stats["reboots"] == 1
            info = await rig.source.command("info")
            assert info["boot"] == device.boot and info["streams"][0]["rate"] == 400.0
            assert rig.stats["commands"] == 6 and rig.stats["responses"] == 6

    run(scenario())


def test_refused_and_unanswered_commands_raise_clear_errors(tmp_path):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device) as rig:
            with pytest.raises(CommandError, match="not connected"):
                await rig.source.command("ping")  # before the HELLO arrived
            await device.wait_for_frame(protocol.ACK)
            await rig.wait_for(lambda: rig.link.greeted)

            with pytest.raises(CommandError) as refused:
                await rig.source.command("selfdestruct", {"now": True})
            assert refused.value.code == protocol.NACK_UNKNOWN_COMMAND
            assert refused.value.code_name == "UNKNOWN_COMMAND"
            assert "refused 'selfdestruct': UNKNOWN_COMMAND" in str(refused.value)

            with pytest.raises(CommandError, match="BAD_ARGUMENTS") as bad:
                await rig.source.command("set_rate", {"stream": "nope", "rate": 1})
            assert bad.value.code == protocol.NACK_BAD_ARGUMENTS

            device.answer_commands = False
            started = time.monotonic()
            with pytest.raises(CommandTimeout, match=r"no answer to 'ping' .* within 0.3 s"):
                await rig.source.command("ping", timeout=0.3)
            assert time.monotonic() - started < 2.0

            with pytest.raises(CommandError, match="exceeds the device's max_frame of 512"):
                await rig.source.command("set_config", {"blob": "x" * 600})

            device.answer_commands = True
            assert (await rig.source.command("ping"))["pong"] is True  # the link still works
            assert rig.stats["pending_commands"] == 0

    run(scenario())


def test_a_command_waiting_when_the_device_goes_away_fails_at_once(tmp_path):
    device = CobsTestDevice()

    async def scenario():
        async with running(tmp_path, device) as rig:
            await device.wait_for_frame(protocol.ACK)
            await rig.wait_for(lambda: rig.link.greeted)
            device.answer_commands = False
            pending = asyncio.create_task(rig.source.command("ping", timeout=30))
            await rig.wait_for(lambda: device.counters["commands_ignored"] == 1)
            device.unplug()
            with pytest.raises(CommandError, match="disconnected before answering"):
                await asyncio.wait_for(pending, DEADLINE)

    run(scenario())


def test_line_sources_take_no_commands(tmp_path):
    source = SerialSource({"name": "lines", "port": "/dev/null"}, lambda text, ts: None)

    async def scenario():
        with pytest.raises(CommandError, match="a line device takes no commands"):
            await source.command("ping")

    run(scenario())


# -- the link's state machine alone (no I/O) ---------------------------------------------


def _frames_out(link: CobsLink, ack: bool = False) -> list[protocol.Frame]:
    """What the link would write now (its ACK too, when `ack`), decoded."""
    data = link.data_to_send()
    if ack and link.ack_delay(0.0) is not None:
        data += link.take_ack() or b""
    return protocol.FrameDecoder().feed(data)


def _hello(oldest: int | None) -> bytes:
    hello = {"device": "node-1", "fw": "t", "proto": [1], "boot": 7, "streams": DEFAULT_STREAMS}
    if oldest is not None:
        hello["oldest"] = oldest
    return protocol.encode_frame(protocol.HELLO, 0, protocol.hello_payload(hello))


def _data(seq: int, n: int) -> bytes:
    payload = protocol.data_payload([(0, n, reading_values(n))])
    return protocol.encode_frame(protocol.DATA, seq, payload)


def test_after_a_fresh_hello_ack_the_link_takes_only_the_hellos_oldest_first():
    link = CobsLink("port")
    link.connected("/dev/pty")
    link.receive(_hello(oldest=5), 1.0, 0.0)
    (hello_ack,) = _frames_out(link, ack=True)
    assert hello_ack.flags & protocol.FLAG_FRESH
    link.receive(_data(4, 0), 1.0, 0.0)  # older than the oldest it holds: impossible, dropped
    assert _frames_out(link, ack=True) == [] and link.counters["duplicates"] == 1
    link.receive(_data(6, 0), 1.0, 0.0)  # 5 lost on the wire
    (nack,) = _frames_out(link, ack=True)  # at once and alone: nothing is accepted to ACK
    assert nack.type == protocol.NACK
    assert protocol.parse_nack(nack.payload)[:2] == (protocol.NACK_OUT_OF_ORDER, 5)
    # The device missed our HELLO-ACK and dropped frame 5 itself (drop_oldest) meanwhile:
    # its repeated HELLO moves the start, as nothing of the boot was accepted yet.
    link.receive(_hello(oldest=6), 1.0, 0.0)
    assert _frames_out(link, ack=True)[0].flags & protocol.FLAG_FRESH
    link.receive(_data(6, 0) + _data(7, 1), 1.0, 0.0)
    assert [reading[0]["n"] for reading in link.readings] == [0.0, 1.0]
    assert link.accepted == 7 and link.counters["gaps"] == 1
    # Once frames are accepted, a HELLO of the same boot resumes after them: ACK 7.
    link.receive(_hello(oldest=6), 1.0, 0.0)
    (resume,) = _frames_out(link, ack=True)
    assert (resume.type, resume.seq, resume.flags) == (protocol.ACK, 7, 0)


def test_a_hello_without_oldest_is_a_bad_payload_and_not_acknowledged():
    link = CobsLink("port")
    link.connected("/dev/pty")
    link.receive(_hello(oldest=None), 1.0, 0.0)
    (nack,) = _frames_out(link, ack=True)
    code, _expected, reason = protocol.parse_nack(nack.payload)
    assert code == protocol.NACK_BAD_PAYLOAD and reason == "HELLO: HELLO lacks 'oldest'"
    assert not link.greeted and link.stats()["bad_frames_by_reason"] == {"payload": 1}


# -- wiring ---------------------------------------------------------------------------------


def test_framing_cobs_needs_a_handler_and_lines_takes_none():
    options = {"name": "x", "port": "/dev/null", "framing": "cobs"}
    with pytest.raises(ValueError, match="framing 'cobs' needs a frame handler"):
        SerialSource(options, lambda text, ts: None)
    handler = CobsHandler(CobsLink("x"), lambda *a, **k: None, lambda: None)
    with pytest.raises(ValueError, match="framing 'lines' takes no frame handler"):
        SerialSource({**options, "framing": "lines"}, lambda text, ts: None, handler=handler)


def test_the_app_builds_the_cobs_path_for_framing_cobs(tmp_path):
    config = loads(CONFIG.format(data_dir=tmp_path), environ={})
    config["api"]["listen"] = "127.0.0.1:0"
    gateway = Gateway(config)
    try:
        (source,) = gateway.sources
        assert isinstance(source.handler, CobsHandler)
        assert source.handler.on_data == gateway.ingests[0].on_data
        assert source.handler.link.memory is gateway.device_sessions
        assert source.stats()["link"]["readings"] == 0
    finally:
        asyncio.run(gateway.buffers.close())
        gateway.sequences.close()
