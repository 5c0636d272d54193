"""The serial source on real ptys: line splitting, bad input, reconnects, clean stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sources.serial import LineFramer, SerialSource
from gateway.sources.simulator import VirtualSerialDevice

BY_ID = "/dev/serial/by-id/usb-Raspberry_Pi_Pico_E661-if00"
DEADLINE = 10.0  # seconds; generous for a loaded 2-core machine, reached only on failure


class Collector:
    """Records what a SerialSource reports and lets a test await a condition on it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stamps: list[float] = []
        self.events: list[tuple[str, dict]] = []
        self._changed = asyncio.Event()

    def on_line(self, text: str, ts: float) -> None:
        self.lines.append(text)
        self.stamps.append(ts)
        self._changed.set()

    def on_event(self, name: str, detail: dict) -> None:
        self.events.append((name, detail))
        self._changed.set()

    def states(self) -> list[str]:
        return [name for name, _ in self.events]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"condition not met in {timeout}s: {len(self.lines)} lines, "
                    f"last {self.lines[-3:]!r}, events {self.states()}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_lines(self, count: int) -> None:
        await self.wait_for(lambda: len(self.lines) >= count)

    async def wait_state(self, name: str, occurrence: int = 1) -> None:
        await self.wait_for(lambda: self.states().count(name) >= occurrence)


async def poll_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """For conditions with no event to await (a counter of bytes taken in): poll, bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def make_source(port: str, collector: Collector, **options: Any) -> SerialSource:
    config = {"name": "bench-1", "port": port, "baud": 115200, "reconnect_interval": 0.05}
    source = SerialSource({**config, **options}, collector.on_line, collector.on_event)
    return source


async def connected_source(device: VirtualSerialDevice, collector: Collector, **options: Any):
    source = make_source(device.path, collector, **options)
    source.start()
    await collector.wait_state("connected")
    return source


def chop(data: bytes, seed: int, largest: int = 5000) -> list[bytes]:
    """Cut data into chunks of assorted sizes, many of them splitting a line."""
    rng = random.Random(seed)
    chunks, start = [], 0
    while start < len(data):
        size = rng.choice([1, 2, 7, 33, 100, 1024, 4096, rng.randint(1, largest)])
        chunks.append(data[start : start + size])
        start += size
    return chunks


async def write_chunks(device: VirtualSerialDevice, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await device.write_async(chunk)


# -- ordering and counts ------------------------------------------------------------------


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_twenty_thousand_lines_arrive_in_order_whatever_the_write_sizes(read_mode):
    expected = [json.dumps({"n": index, "t": 21.5}) for index in range(20_000)]
    data = "".join(line + "\n" for line in expected).encode()

    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = make_source(device.path, collector)
            source.read_mode = read_mode
            source.start()
            await collector.wait_state("connected")
            before = time.time()
            await write_chunks(device, chop(data, seed=1))
            await collector.wait_lines(len(expected))
            after = time.time()
            await source.stop()
        assert collector.lines == expected
        assert source.counters["lines"] == 20_000
        assert source.counters["bytes"] == len(data)
        problems = ("oversize", "invalid_utf8", "partial_at_disconnect", "reconnects")
        assert [source.counters[name] for name in problems] == [0, 0, 0, 0]
        assert all(before <= ts <= after for ts in collector.stamps)
        assert collector.stamps == sorted(collector.stamps)

    run(scenario())


def test_crlf_endings_are_stripped_even_when_cr_and_lf_arrive_apart():
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector)
            await device.write_async(b"$GPGGA,1*00\r\nplain\nsplit\r")
            await collector.wait_lines(2)
            await device.write_async(b"\nlast\r\n")
            await collector.wait_lines(4)
            await source.stop()
        assert collector.lines == ["$GPGGA,1*00", "plain", "split", "last"]

    run(scenario())


def test_empty_lines_are_skipped_silently():
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector)
            await device.write_async(b"\n\r\n\nfirst\n\n\r\nsecond\n")
            await collector.wait_lines(2)
            await source.stop()
        assert collector.lines == ["first", "second"]
        assert source.counters["lines"] == 2

    run(scenario())


# -- bad input ----------------------------------------------------------------------------


def test_oversize_lines_are_dropped_counted_and_logged_and_neighbours_kept(caplog):
    limit = 100
    fits = "x" * limit
    long_in_pieces = b"y" * 5000  # longer than the limit before any newline is seen
    long_in_one_piece = b"z" * (limit + 1)

    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector, max_line=limit)
            await device.write_async(b"before\n")
            for chunk in chop(long_in_pieces, seed=2, largest=300):
                await device.write_async(chunk)
            await device.write_async(b"\nmiddle\n" + long_in_one_piece + b"\n")
            await device.write_async(fits.encode() + b"\r\nafter\n")
            await collector.wait_lines(4)
            await source.stop()
            return source, collector

    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        source, collector = run(scenario())
    assert collector.lines == ["before", "middle", fits, "after"]
    assert source.counters["oversize"] == 2
    assert "source bench-1: dropped a line of" in caplog.text
    assert "max_line = 100 (oversize)" in caplog.text


def test_invalid_utf8_lines_are_dropped_counted_and_logged_and_neighbours_kept(caplog):
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector)
            await device.write_async(b"before\n\xff\xfe bad \xc3\n caf\xc3\xa9 \nafter\n")
            await collector.wait_lines(3)
            await source.stop()
            return source, collector

    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        source, collector = run(scenario())
    assert collector.lines == ["before", " café ", "after"]
    assert source.counters["invalid_utf8"] == 1
    assert "source bench-1: dropped a line that is not valid UTF-8" in caplog.text
    assert "invalid start byte" in caplog.text


def test_garbage_bytes_between_good_lines_lose_no_good_line():
    rng = random.Random(3)
    good = [json.dumps({"n": index}) for index in range(300)]
    stream = bytearray()
    for line in good:
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        stream += garbage + b"\n" + line.encode() + b"\n"
    stream += bytes(range(256)) * 4 + b"\n" + b'{"n": "end"}\n'

    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector, max_line=200)
            await write_chunks(device, chop(bytes(stream), seed=4))
            await collector.wait_for(lambda: '{"n": "end"}' in collector.lines)
            await source.stop()
            return source, collector

    source, collector = run(scenario())
    received_good = [line for line in collector.lines if line in good]
    assert received_good == good
    assert source.counters["invalid_utf8"] > 0
    assert source.counters["bytes"] == len(stream)


def test_a_failing_line_handler_is_counted_and_later_lines_still_arrive():
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()

            def handler(text: str, ts: float) -> None:
                if text == "boom":
                    raise RuntimeError("consumer bug")
                collector.on_line(text, ts)

            source = SerialSource(
                {"name": "bench-1", "port": device.path}, handler, collector.on_event
            )
            source.start()
            await collector.wait_state("connected")
            await device.write_async(b"one\nboom\ntwo\n")
            await collector.wait_lines(2)
            await source.stop()
            return source, collector

    source, collector = run(scenario())
    assert collector.lines == ["one", "two"]
    assert source.counters["callback_errors"] == 1


# -- device coming and going --------------------------------------------------------------


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_unplug_and_replug_at_the_same_link_reconnects_by_itself(tmp_path, caplog, read_mode):
    link = str(tmp_path / "usb-Sensor_E661-if00")

    async def scenario():
        with VirtualSerialDevice(link) as device:
            collector = Collector()
            source = make_source(device.path, collector)
            source.read_mode = read_mode
            source.start()
            await collector.wait_state("connected")
            await device.write_async(b"first\nunfinished")
            await collector.wait_lines(1)
            await poll_until(lambda: source.counters["bytes"] == len(b"first\nunfinished"))

            device.unplug()
            assert not os.path.lexists(link)
            await collector.wait_state("waiting")
            assert source.state == "waiting"
            assert source.counters["partial_at_disconnect"] == 1

            device.replug()
            await collector.wait_state("connected", occurrence=2)
            await device.write_async(b"second\n")
            await collector.wait_lines(2)
            await source.stop()
            return source, collector

    with caplog.at_level(logging.INFO, logger="gateway.sources"):
        source, collector = run(scenario())
    assert collector.lines == ["first", "second"]  # the unfinished line is not glued on
    assert source.counters["reconnects"] == 1
    assert collector.states() == ["connected", "waiting", "connected", "stopped"]
    assert collector.events[2][1] == {"port": link, "reconnect": True}
    assert f"source bench-1: device {link} gone" in caplog.text
    assert "waiting for it to return" in caplog.text
    assert f"source bench-1: reconnected to {link}" in caplog.text
    assert caplog.text.count("gone") == 1  # one line per outage, not one per retry


async def unplugged_once(where: Callable[[str], dict], listed: dict[str, Any]):
    """A source on a pty (`where(path)`: its port or match), the port listing saying
    `listed` of it, connected then unplugged: (collector, stats while waiting)."""
    with VirtualSerialDevice() as device:
        collector = Collector()
        config = {"name": "bench-1", "reconnect_interval": 0.05, **where(device.path)}
        listing = [{"device": device.path, **listed}]
        source = SerialSource(
            config, collector.on_line, collector.on_event, list_ports=lambda: listing
        )
        source.start()
        await collector.wait_state("connected")
        device.unplug()
        await collector.wait_state("waiting")
        stats = source.stats()
        await source.stop()
        return collector, stats


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        (
            {"vid": "2e8a", "pid": "0005", "serial_number": "E661", "by_id": BY_ID},
            f'match = {{ vid = "2e8a", pid = "0005", serial = "E661" }} or port = "{BY_ID}"',
        ),
        ({"vid": None, "pid": None, "serial_number": None, "by_id": None}, "match = { serial"),
    ],
    ids=["usb-ids-known", "nothing-known"],
)
def test_a_plain_device_path_that_goes_away_says_how_to_follow_the_device(caplog, listed, expected):
    """/dev/ttyACM0 names whatever the kernel numbered first: on an unplug the source says,
    once, how `match` or a by-id path would follow the device (from what the port listing
    said while it was there; ptys have no USB ids, so the listing stands in for udev)."""

    with caplog.at_level(logging.INFO, logger="gateway.sources"):
        collector, stats = run(unplugged_once(lambda path: {"port": path}, listed))
    hint = collector.events[1][1]["hint"]
    assert expected in hint and "names a port, not a device" in hint
    assert stats["hint"] == hint
    assert caplog.text.count("names a port, not a device") == 1


def test_a_source_that_follows_the_device_gets_no_hint():
    listed = {"vid": "2e8a", "pid": "0005", "serial_number": "E661", "by_id": BY_ID}
    collector, _stats = run(unplugged_once(lambda _path: {"match": {"serial": "E661"}}, listed))
    assert "hint" not in collector.events[1][1]
    # Paths udev makes from the device itself follow it too; a kernel name does not.
    for path, plain in ((BY_ID, False), ("/dev/serial/by-path/pci-0:1.2", False),
                        ("/dev/ttyACM0", True)):  # fmt: skip
        source = SerialSource({"name": "s", "port": path}, collector.on_line)
        assert source._names_a_port() is plain, path


def test_several_unplugs_each_reconnect_and_count(tmp_path):
    async def scenario(link):
        with VirtualSerialDevice(link) as device:
            collector = Collector()
            source = await connected_source(device, collector)
            for round_number in range(1, 4):
                device.unplug()
                await collector.wait_state("waiting", occurrence=round_number)
                device.replug()
                await collector.wait_state("connected", occurrence=round_number + 1)
                await device.write_async(b"round %d\n" % round_number)
                await collector.wait_lines(round_number)
            await source.stop()
            return source, collector

    source, collector = run(scenario(str(tmp_path / "ttyUSB-by-id")))
    assert collector.lines == ["round 1", "round 2", "round 3"]
    assert source.counters["reconnects"] == 3


def test_a_port_absent_at_start_is_waited_for_then_read(tmp_path, caplog):
    link = str(tmp_path / "ttyACM-later")

    async def scenario():
        collector = Collector()
        source = make_source(link, collector)
        source.start()
        await collector.wait_state("waiting")
        assert source.state == "waiting"
        with VirtualSerialDevice(link) as device:
            await collector.wait_state("connected")
            await device.write_async(b"hello\n")
            await collector.wait_lines(1)
            await source.stop()
        return source, collector

    with caplog.at_level(logging.WARNING, logger="gateway.sources"):
        source, collector = run(scenario())
    assert collector.lines == ["hello"]
    assert source.counters["reconnects"] == 0  # a first connection is not a reconnect
    assert f"source bench-1: device {link} not available" in caplog.text
    assert "No such file or directory" in caplog.text
    assert caplog.text.count("not available") == 1


def test_a_match_source_follows_the_device_to_a_new_port():
    # No USB device exists here, so the port listing is stood in for; the ptys behind it are
    # real. The replugged device comes back under a different /dev/pts name, as a board
    # moved to another USB socket comes back as another ttyACM.
    device = VirtualSerialDevice()
    other = VirtualSerialDevice()

    def listing() -> list[dict[str, Any]]:
        board = {"vid": "2e8a", "pid": "0005", "serial_number": "E661AB"}
        present = [{**board, "device": other.path, "serial_number": "OTHER"}]
        if device.plugged:
            present.append({**board, "device": device.path})
        return present

    async def scenario():
        collector = Collector()
        options = {"name": "pico", "match": {"vid": "2E8A", "serial": "e661ab"}}
        options["reconnect_interval"] = 0.05
        source = SerialSource(options, collector.on_line, collector.on_event, list_ports=listing)
        source.start()
        await collector.wait_state("connected")
        first_path = device.path
        await device.write_async(b"one\n")
        await collector.wait_lines(1)

        device.unplug()
        await collector.wait_state("waiting")
        held = VirtualSerialDevice()  # takes the freed pts number, so the device moves
        device.replug()
        await collector.wait_state("connected", occurrence=2)
        await device.write_async(b"two\n")
        await collector.wait_lines(2)
        await source.stop()
        held.close()
        return source, collector, first_path

    try:
        source, collector, first_path = run(scenario())
    finally:
        device.close()
        other.close()
    assert collector.lines == ["one", "two"]
    assert collector.events[0][1]["port"] == first_path
    assert collector.events[2][1]["port"] != first_path
    assert source.counters["reconnects"] == 1


# -- stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_stop_while_reading_returns_promptly(read_mode):
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = make_source(device.path, collector)
            source.read_mode = read_mode
            task = source.start()
            await collector.wait_state("connected")
            started = time.monotonic()
            await source.stop()
            elapsed = time.monotonic() - started
            assert task.done()
            return source, elapsed

    source, elapsed = run(scenario())
    assert elapsed < 0.5
    assert source.state == "stopped"


def test_stop_while_waiting_for_the_device_returns_promptly(tmp_path):
    async def scenario():
        collector = Collector()
        source = make_source(str(tmp_path / "never"), collector, reconnect_interval=30)
        task = source.start()
        await collector.wait_state("waiting")
        started = time.monotonic()
        await source.stop()
        return source, task, time.monotonic() - started

    source, task, elapsed = run(scenario())
    assert elapsed < 0.5
    assert task.done()
    assert source.state == "stopped"


def test_cancelling_the_run_task_closes_the_port():
    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = await connected_source(device, collector)
            task = source.start()  # the running task
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # Closed means another reader can now take the port exclusively.
            again = Collector()
            second = await connected_source(device, again)
            await device.write_async(b"to the second reader\n")
            await again.wait_lines(1)
            await second.stop()
            return source

    source = run(scenario())
    assert source.state == "stopped"


def test_a_second_reader_of_the_same_port_waits_instead_of_stealing_lines():
    async def scenario():
        with VirtualSerialDevice() as device:
            first, second = Collector(), Collector()
            reader = await connected_source(device, first)
            intruder = make_source(device.path, second)
            intruder.start()
            await second.wait_state("waiting")
            await device.write_async(b"mine\n")
            await first.wait_lines(1)
            await intruder.stop()
            await reader.stop()
            return second

    second = run(scenario())
    assert "exclusively" in second.events[0][1]["reason"]
    assert second.lines == []


# -- options ------------------------------------------------------------------------------


def test_a_source_needs_a_port_or_a_match():
    with pytest.raises(ValueError, match="source x: needs a port or a match"):
        SerialSource({"name": "x"}, lambda text, ts: None)


def test_unsupported_framing_is_refused():
    with pytest.raises(ValueError, match="framing 'slip' is not supported"):
        SerialSource({"name": "x", "port": "/dev/null", "framing": "slip"}, lambda t, ts: None)


def test_a_malformed_match_is_refused_at_construction():
    with pytest.raises(ValueError, match="expected a USB id in hex"):
        SerialSource({"name": "x", "match": {"vid": "pico"}}, lambda text, ts: None)


# -- the line framer on its own -----------------------------------------------------------


def expected_lines(lines: list[bytes], limit: int) -> tuple[list[bytes], int]:
    kept, oversize = [], 0
    for line in lines:
        stripped = line[:-1] if line.endswith(b"\r") else line
        if not stripped:
            continue
        if len(stripped) > limit:
            oversize += 1
            continue
        kept.append(stripped)
    return kept, oversize


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
    limit=st.integers(min_value=1, max_value=30),
)
def test_framer_output_does_not_depend_on_how_the_stream_is_cut(lines, cuts, limit):
    stream = b"".join(line + b"\n" for line in lines)
    rejected: list[str] = []
    framer = LineFramer(limit, lambda reason, size: rejected.append(reason))
    got: list[bytes] = []
    previous = 0
    for cut in sorted(cut % (len(stream) + 1) for cut in cuts) + [len(stream)]:
        got += framer.feed(stream[previous:cut])
        previous = cut
    kept, oversize = expected_lines(lines, limit)
    assert got == kept
    assert rejected == ["oversize"] * oversize
    assert framer.reset() == 0


def test_framer_reset_reports_the_unfinished_line():
    framer = LineFramer(100, lambda reason, size: None)
    assert framer.feed(b"done\nhalf a li") == [b"done"]
    assert framer.reset() == len(b"half a li")
    assert framer.feed(b"ne\n") == [b"ne"]


# -- backpressure: accepting() ------------------------------------------------------------


class Gate:
    """accepting() for a SerialSource: True until `limit` lines were handed on, then False
    until `opened`. Counts its refusals: each is one look by the paused source."""

    def __init__(self, collector: Collector, limit: int) -> None:
        self.collector = collector
        self.limit = limit
        self.opened = False
        self.refusals = 0

    def __call__(self) -> bool:
        if self.opened or len(self.collector.lines) < self.limit:
            return True
        self.refusals += 1
        return False

    async def looked_again(self, times: int = 20) -> None:
        """Wait until the paused source looked (and was refused) `times` more times."""
        seen = self.refusals
        await poll_until(lambda: self.refusals >= seen + times)


def gated_source(device: VirtualSerialDevice, collector: Collector, gate, read_mode: str):
    options = {"name": "bench-1", "port": device.path, "reconnect_interval": 0.05}
    source = SerialSource(options, collector.on_line, collector.on_event, accepting=gate)
    source.read_mode = read_mode
    return source


def fill(fd: int, data: bytes, start: int) -> int:
    """Write data[start:] without blocking until the pty is full; returns the new position."""
    position = start
    while position < len(data):
        try:
            position += os.write(fd, data[position:])
        except BlockingIOError:
            return position
    raise AssertionError(f"the pty took all {len(data)} bytes: nothing pushed back")


async def fill_while_paused(device: VirtualSerialDevice, data: bytes, gate: Gate) -> int:
    """Fill the pty, let the paused source look again, and repeat until the pty takes
    nothing more (the kernel moves a little between its buffers after the first EAGAIN).
    Returns how much of `data` was written."""
    written = fill(device.master, data, 0)
    for _round in range(10):
        await gate.looked_again()
        more = fill(device.master, data, written)
        if more == written:
            return written
        written = more
    raise AssertionError(f"the pty kept taking bytes ({written} so far): the source reads")


async def paused_after_ten(device: VirtualSerialDevice, data: bytes, read_mode: str):
    """A started source whose gate (never opened) paused it after 10 lines of `data`."""
    collector = Collector()
    gate = Gate(collector, limit=10)
    source = gated_source(device, collector, gate, read_mode)
    source.start()
    await collector.wait_state("connected")
    await device.write_async(data)
    await poll_until(lambda: source.counters["paused"] >= 1)
    return collector, gate, source


def numbered(prefix: str, count: int) -> tuple[list[str], bytes]:
    lines = [f"{prefix} {index:07d}" for index in range(count)]
    return lines, "".join(line + "\n" for line in lines).encode()


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_a_paused_source_holds_its_lines_stops_reading_and_resumes_in_order(read_mode):
    first, first_data = numbered("first", 50)
    bulk, bulk_data = numbered("bulk", 80_000)  # ≈ 1 MB, far more than a pty holds

    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            gate = Gate(collector, limit=10)
            source = gated_source(device, collector, gate, read_mode)
            source.start()
            await collector.wait_state("connected")
            await device.write_async(first_data)
            await poll_until(lambda: source.counters["paused"] >= 1)
            await gate.looked_again()
            assert collector.lines == first[:10]  # checked before every line: none past 10

            # The device is pushed back: nothing is read while paused, so the pty fills up
            # and stays full while the source keeps looking (a reader would drain it).
            read = source.counters["bytes"]
            written = await fill_while_paused(device, bulk_data, gate)
            assert written < 100_000, written  # what a pty holds, not the megabyte
            assert source.counters["bytes"] == read
            assert collector.lines == first[:10]
            assert source.state == "connected"

            gate.opened = True
            await device.write_async(bulk_data[written:])
            await collector.wait_lines(len(first) + len(bulk))
            await source.stop()
            return source, collector

    source, collector = run(scenario())
    assert collector.lines == first + bulk  # held lines first, in order, none twice
    assert source.counters["lines"] == len(first) + len(bulk)
    assert source.counters["bytes"] == len(first_data) + len(bulk_data)
    assert source.counters["paused"] == 1
    assert source.stats()["paused_seconds"] > 0


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_lines_held_by_a_pause_are_handed_on_when_the_port_closes(read_mode):
    lines, data = numbered("line", 50)

    async def scenario():
        with VirtualSerialDevice() as device:
            collector, gate, source = await paused_after_ten(device, data, read_mode)
            await gate.looked_again()
            assert collector.lines == lines[:10]
            read = source.counters["bytes"]
            await source.stop()
            return source, collector, read

    source, collector, read = run(scenario())
    complete = data[:read].count(b"\n")  # every line read whole before the stop
    assert complete > 10, "precondition: the pause held some lines"
    assert collector.lines == lines[:complete]
    assert source.counters["partial_at_disconnect"] == (0 if data[:read].endswith(b"\n") else 1)


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
@pytest.mark.parametrize("accepting", [None, lambda: True], ids=["no_accepting", "always"])
def test_a_source_whose_sinks_always_accept_never_pauses(read_mode, accepting):
    lines, data = numbered("line", 5000)

    async def scenario():
        with VirtualSerialDevice() as device:
            collector = Collector()
            source = gated_source(device, collector, accepting, read_mode)
            source.start()
            await collector.wait_state("connected")
            await write_chunks(device, chop(data, seed=5))
            await collector.wait_lines(len(lines))
            await source.stop()
            return source, collector

    source, collector = run(scenario())
    assert collector.lines == lines
    assert source.counters["paused"] == 0 and source.stats()["paused_seconds"] == 0


@pytest.mark.parametrize("read_mode", ["fd", "thread"])
def test_an_unplug_while_paused_is_noticed_and_the_held_lines_are_handed_on(read_mode):
    lines, data = numbered("line", 50)

    async def scenario():
        with VirtualSerialDevice() as device:
            collector, _gate, source = await paused_after_ten(device, data, read_mode)
            read = source.counters["bytes"]
            device.unplug()
            await collector.wait_state("waiting")
            await source.stop()
            return collector, read

    collector, read = run(scenario())
    assert collector.lines == lines[: data[:read].count(b"\n")]
