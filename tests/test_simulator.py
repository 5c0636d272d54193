"""Simulated devices: profile lines the parsers accept, raw ptys, unplug/replug, paced writers."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import time

import pytest

from gateway.core.parsers import Skipped, make_parser
from gateway.sources.serial import SerialSource
from gateway.sources.simulator import (
    NMEA_BURST,
    PROFILE_FORMATS,
    PROFILES,
    DeviceUnplugged,
    SimulatedDevice,
    VirtualSerialDevice,
    make_line,
    nmea_checksum,
)
from tests.test_serial_source import Collector, poll_until, run


def read_exactly(fd: int, size: int, timeout: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {len(data)} of {size} bytes arrived"
        data += os.read(fd, size - len(data))
    return data


def read_after_hangup(fd: int) -> bytes | int:
    ready, _, _ = select.select([fd], [], [], 5)
    assert ready, "a hung-up tty must be readable"
    try:
        return os.read(fd, 10)
    except OSError as error:
        return error.errno


# -- profiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_line_ends_in_a_newline_and_parses(profile):
    settings = PROFILE_FORMATS[profile]
    parse = make_parser(settings["format"], fields=settings.get("fields"))
    for index in range(500):
        line = make_line(profile, index)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        try:
            data = parse(line.decode().rstrip("\r\n"))
        except Skipped as skip:
            assert skip.held, line  # a GSV part, held until its group is complete
            continue
        assert data, line


def test_profiles_are_deterministic_and_vary():
    assert make_line("env", 42) == make_line("env", 42)
    assert len({make_line("env", index) for index in range(100)}) == 100


def test_env_values_wander_within_plausible_ranges():
    records = [json.loads(make_line("env", index)) for index in range(5000)]
    temperatures = [record["temperature"] for record in records]
    assert all(15 < value < 28 for value in temperatures)
    assert all(20 < record["humidity"] < 60 for record in records)
    assert all(1000 < record["pressure"] < 1025 for record in records)
    steps = [abs(b - a) for a, b in zip(temperatures, temperatures[1:])]
    assert max(steps) < 1.0  # a walk, not white noise
    assert max(temperatures) - min(temperatures) > 1.0  # and it does move


def test_csv_and_kv_carry_the_same_reading_as_env():
    env = json.loads(make_line("env", 7))
    csv = make_parser("csv", fields=PROFILE_FORMATS["csv"]["fields"])(make_line("csv", 7).decode())
    kv = make_parser("kv")(make_line("kv", 7).decode())
    assert csv == env
    assert kv == {"t": env["temperature"], "h": env["humidity"], "p": env["pressure"]}


def test_counter_lines_count():
    assert [json.loads(make_line("counter", index)) for index in range(3)] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]


def test_nmea_burst_is_what_a_gps_module_prints_each_second_with_valid_checksums():
    for index in range(400):
        sentence = make_line("nmea", index).decode("ascii")
        assert sentence.endswith("\r\n")
        body, _, checksum = sentence[1:].rstrip("\r\n").partition("*")
        assert sentence[0] == "$"
        assert checksum == nmea_checksum(body)
        assert body.startswith("GP" + NMEA_BURST[index % len(NMEA_BURST)] + ",")
    assert NMEA_BURST == ("GGA", "GSA", "GSV", "GSV", "GSV", "RMC", "VTG")


def test_nmea_checksum_matches_a_published_sentence():
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert nmea_checksum(body) == "47"


def _bursts(count):
    """The readings of `count` one-second bursts; a GSV part held for its group gives none."""
    parse = make_parser("nmea")
    readings = []
    for index in range(count * len(NMEA_BURST)):
        try:
            readings.append(parse(make_line("nmea", index).decode()))
        except Skipped as skip:
            assert skip.held and skip.kind == "GSV"  # never a parse error
    return readings


def test_nmea_burst_parses_without_errors_to_five_readings_a_second():
    readings = _bursts(100)
    streams = [reading["stream"] for reading in readings]
    assert streams == ["gga", "gsa", "gsv", "rmc", "vtg"] * 100
    gga, gsa, gsv, rmc, vtg = readings[:5]
    assert (gga["satellites"], gsa["satellites_used"], gsa["fix_type"]) == (8, 8, 3)
    assert gsv["satellites_in_view"] == len(gsv["satellites"]) == 11
    assert rmc["speed_knots"] == vtg["speed_knots"] == 4.7 and vtg["speed_km_h"] == 8.7
    assert rmc["course"] == vtg["course"] == 56.3


def test_nmea_position_moves_and_gga_and_rmc_agree_on_each_fix():
    readings = _bursts(200)
    gga = [reading for reading in readings if reading["stream"] == "gga"]
    rmc = [reading for reading in readings if reading["stream"] == "rmc"]
    assert len(gga) == len(rmc) == 200
    assert all(g["lat"] == r["lat"] and g["lon"] == r["lon"] for g, r in zip(gga, rmc))
    assert all(g["time"] == r["time"] for g, r in zip(gga, rmc))
    assert gga[1]["time"] == "12:00:01.00"
    latitudes = [fix["lat"] for fix in gga]
    assert latitudes == sorted(latitudes) and latitudes[-1] > latitudes[0]
    assert rmc[0]["status"] == "A" and gga[0]["satellites"] == 8
    assert 48.1 < gga[0]["lat"] < 48.2 and 11.5 < gga[0]["lon"] < 11.6


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown simulator profile 'xml'; expected one of env"):
        make_line("xml", 0)
    with pytest.raises(ValueError, match="unknown simulator profile"):
        SimulatedDevice("xml", 10)


# -- the virtual device -------------------------------------------------------------------


def test_bytes_pass_both_ways_unchanged(tmp_path):
    link = str(tmp_path / "usb-dev")
    with VirtualSerialDevice(link) as device:
        assert os.path.realpath(link) == device.slave_name
        fd = os.open(device.path, os.O_RDWR | os.O_NOCTTY)
        try:
            everything = bytes(range(256)) + b"\r\n\r\x03\x04\x1a"
            device.write(everything)
            assert read_exactly(fd, len(everything)) == everything  # no echo, no CR->LF
            os.write(fd, b"\x00reply\r\n")
            assert device.read(timeout=5) == b"\x00reply\r\n"  # no LF->CRLF on the way back
            assert device.read(timeout=0.01) == b""
        finally:
            os.close(fd)


def test_unplug_removes_the_link_and_the_reader_sees_a_hangup(tmp_path):
    link = str(tmp_path / "usb-dev")
    device = VirtualSerialDevice(link)
    fd = os.open(device.path, os.O_RDWR | os.O_NOCTTY)
    try:
        device.unplug()
        assert not device.plugged
        assert not os.path.lexists(link)
        assert read_after_hangup(fd) in (b"", errno.EIO)  # as a pulled USB cable looks
        with pytest.raises(DeviceUnplugged):
            device.write(b"x\n")
        with pytest.raises(DeviceUnplugged):
            device.read()
    finally:
        os.close(fd)

    device.replug()
    try:
        assert os.path.realpath(link) == device.slave_name
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        device.write(b"back\n")
        assert read_exactly(fd, 5) == b"back\n"
        os.close(fd)
    finally:
        device.close()
    assert not os.path.lexists(link)


def test_without_a_link_the_path_is_the_pts_name():
    with VirtualSerialDevice() as device:
        assert device.path.startswith("/dev/pts/")
        assert device.path == device.slave_name


def test_a_blocked_write_times_out_when_nobody_reads():
    with VirtualSerialDevice() as device:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="bytes not taken in time"):
            device.write(b"x" * 1_000_000, timeout=0.2)
        assert time.monotonic() - started < 2


def test_a_pending_async_write_is_woken_by_unplug():
    async def scenario():
        device = VirtualSerialDevice()
        writing = asyncio.ensure_future(device.write_async(b"x" * 1_000_000))
        await asyncio.sleep(0)  # one step: the write fills the pty and parks
        assert device.write_pending and not writing.done()
        device.unplug()
        with pytest.raises(DeviceUnplugged) as raised:
            await asyncio.wait_for(writing, 2)
        assert 0 < raised.value.written < 1_000_000  # what got into the pty before the pull
        device.close()

    run(scenario())


# -- the paced writer ---------------------------------------------------------------------


async def read_simulated(profile: str, rate: float, seconds: float):
    """A SimulatedDevice read by a real SerialSource for `seconds`."""
    simulated = SimulatedDevice(profile, rate)
    collector = Collector()
    source = SerialSource(
        {"name": "sim", "port": simulated.path}, collector.on_line, collector.on_event
    )
    source.start()
    await collector.wait_state("connected")  # the port flushes its input when opened
    await simulated.start()
    started = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement interval
    elapsed = time.monotonic() - started
    written = simulated.lines_written
    await collector.wait_lines(written)
    await simulated.stop()
    await source.stop()
    return simulated, collector, written, elapsed


def test_simulated_device_keeps_its_rate_and_loses_nothing():
    simulated, collector, written, elapsed = run(read_simulated("counter", 400, 0.6))
    assert 0.6 * 400 * elapsed <= written <= 1.4 * 400 * elapsed + 2
    numbers = [json.loads(line)["n"] for line in collector.lines]
    assert numbers[:written] == list(range(written))


def test_simulated_device_keeps_a_high_rate_by_writing_lines_in_batches():
    simulated, collector, written, elapsed = run(read_simulated("env", 20_000, 0.5))
    assert 0.5 * 20_000 * elapsed <= written <= 1.2 * 20_000 * elapsed + 2
    assert all(json.loads(line)["temperature"] for line in collector.lines[:written])


def test_simulated_device_with_no_rate_writes_as_fast_as_it_is_read():
    simulated, collector, written, elapsed = run(read_simulated("csv", 0, 0.3))
    assert written > 5_000
    assert collector.lines[0] == make_line("csv", 0).decode().rstrip("\n")


def test_stop_removes_the_pty_and_its_link(tmp_path):
    link = str(tmp_path / "sim-link")

    async def scenario():
        simulated = SimulatedDevice("env", 0, path=link)
        assert os.path.realpath(link) == simulated.device.slave_name
        await simulated.start()
        await poll_until(lambda: simulated.device.write_pending)  # nobody reads: pty full
        started = time.monotonic()
        await simulated.stop()
        return time.monotonic() - started

    assert run(scenario()) < 0.5
    assert not os.path.lexists(link)


def test_unplugged_simulated_device_writes_nothing_and_resumes_after_replug():
    async def scenario():
        simulated = SimulatedDevice("counter", 500)
        collector = Collector()
        source = SerialSource(
            {"name": "sim", "port": simulated.path, "reconnect_interval": 0.05},
            collector.on_line,
            collector.on_event,
        )
        source.start()
        await collector.wait_state("connected")
        await simulated.start()
        await collector.wait_lines(20)
        simulated.device.unplug()
        await collector.wait_state("waiting")
        written_while_gone = simulated.lines_written
        simulated.device.replug()
        await collector.wait_state("connected", occurrence=2)
        await collector.wait_for(lambda: simulated.lines_written >= written_while_gone + 20)
        await simulated.stop()
        await source.stop()
        return collector

    collector = run(scenario())
    numbers = [json.loads(line)["n"] for line in collector.lines]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers)
