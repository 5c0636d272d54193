"""A scripted wire-protocol device for tests: HELLO, DATA with a ring and retransmits, commands.

CobsTestDevice speaks protocol v1 (docs/protocol.md) from the master end of a
VirtualSerialDevice (the gateway opens `path`), in the test's own event loop. It behaves as
the specification asks of a device: HELLO at boot and on NACK NEED_HELLO, DATA only after
its HELLO is acknowledged, unacknowledged DATA kept in a bounded ring and resent from the
oldest after a retransmit timeout, a NACK OUT_OF_ORDER or a HELLO-ACK, commands answered.
Test hooks bend it: ignore ACKs for a while, lose DATA frames on the wire, start as if
already greeted, send raw bytes.

    device = CobsTestDevice()
    await device.start()
    seconds = await device.send_readings(10_000)   # as fast as the gateway's ACKs allow
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import time
from typing import Any

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice

DEFAULT_STREAMS = [{"name": "env", "fields": ["n", "value"], "rate": 1.0}]


def reading_values(index: int) -> list[float]:
    """The values of test reading `index` (fields n, value): the gateway must deliver these."""
    return [float(index), round(20 + (index % 100) / 10, 1)]


class CobsTestDevice:
    """A protocol peer on a pty; see the module docstring."""

    def __init__(
        self,
        device_id: str = "node-1",
        *,
        fw: str = "test-1.0",
        streams: list[dict[str, Any]] | None = None,
        virtual: VirtualSerialDevice | None = None,
        ring_size: int = protocol.RING_FRAMES,
        retransmit_timeout: float = 0.2,
        records_per_frame: int = 16,
        boot: int | None = None,
        greeted: bool = False,
    ):
        self.device_id = device_id
        self.fw = fw
        self.streams = [dict(stream) for stream in (streams or DEFAULT_STREAMS)]
        self.serial = virtual or VirtualSerialDevice()
        self.ring_size = ring_size
        self.retransmit_timeout = retransmit_timeout
        self.records_per_frame = records_per_frame
        self.config: dict[str, Any] = {}
        self.answer_commands = True
        self.counters: collections.Counter = collections.Counter()
        self.received: list[protocol.Frame] = []  # every good frame from the gateway
        self.boots: list[int] = []
        self.produced = 0  # readings made (index of the next one)
        self._rng = random.Random()
        self._decoder = protocol.FrameDecoder()
        self._outbox: collections.deque[bytes] = collections.deque()
        self._backlog: collections.deque[tuple] = collections.deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._ignore_acks_until = 0.0
        self._lose_frames = 0
        self._reboot_after_outbox = False
        self._task: asyncio.Task | None = None
        self._sampler: asyncio.Task | None = None
        self._boot(boot)
        # greeted: the device believes its HELLO was acknowledged already (say, the gateway
        # restarted or the cable was replugged), so it sends DATA straight away.
        self.hello_acked = greeted

    # -- identity --------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.serial.path

    @property
    def hello(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "fw": self.fw,
            "proto": [protocol.VERSION],
            "boot": self.boot,
            "oldest": self.oldest,
            "max_frame": protocol.MAX_FRAME,
            "streams": self.streams,
            "caps": ["cmd", "log", "heartbeat"],
        }

    @property
    def oldest(self) -> int:
        """The seq this device resends first: its oldest unacknowledged frame, else the next."""
        return self.ring[0][0] if self.ring else self.seq

    @property
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._booted_at) * 1000)

    @property
    def queued(self) -> int:
        """Unacknowledged DATA frames in the ring."""
        return len(self.ring)

    @property
    def idle(self) -> bool:
        """Every reading made so far is acknowledged."""
        return not self._backlog and not self.ring

    def _boot(self, boot: int | None = None) -> None:
        self.boot = self._rng.getrandbits(32) if boot is None else boot
        self.boots.append(self.boot)
        self._booted_at = time.monotonic()
        self.seq = 0
        self.ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self.counters["lost_in_reboot"] += len(self._backlog)
        self._backlog.clear()
        self.hello_acked = False
        self._hello_sent = False
        self._hello_due = 0.0
        self._timer = 0.0  # when the oldest unacknowledged frame was last (re)sent
        self._resend = False
        self._out_of_order: tuple[int, float] | None = None  # (expected, when) last obeyed
        self._outbox.append(protocol.cobs.DELIMITER)  # a lone 0x00 ends any garbage first

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.serial.master, self._readable)
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        for task in (self._sampler, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sampler = self._task = None
        self._remove_reader()
        self.serial.close()

    def unplug(self) -> None:
        """Pull the cable; the device keeps running and keeps its ring."""
        self._remove_reader()
        self.serial.unplug()

    def replug(self) -> None:
        self.serial.replug()
        self._decoder.reset()
        asyncio.get_running_loop().add_reader(self.serial.master, self._readable)
        self._wake.set()

    def reboot(self, boot: int | None = None) -> None:
        """Restart: a new boot id, seq from 0, RAM (ring and unsent readings) lost, HELLO."""
        self._boot(boot)
        self._wake.set()

    def _remove_reader(self) -> None:
        if self.serial.master is not None:
            asyncio.get_running_loop().remove_reader(self.serial.master)

    # -- what tests drive ------------------------------------------------------------------

    def queue_readings(self, count: int, stream: int = 0) -> None:
        """Make `count` readings of reading_values(index) now; they go out as the ring allows."""
        dts = self.uptime_ms
        first = self.produced
        self._backlog.extend(
            (stream, dts, reading_values(index)) for index in range(first, first + count)
        )
        self.produced += count
        self._wake.set()

    async def send_readings(self, count: int, timeout: float = 60.0) -> float:
        """Make `count` readings, return once all are acknowledged: seconds it took."""
        started = time.monotonic()
        self.queue_readings(count)
        await self.wait_idle(timeout)
        return time.monotonic() - started

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every reading made is acknowledged by the gateway."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"device {self.device_id}: {len(self._backlog)} readings unsent and "
                    f"{len(self.ring)} frames unacknowledged after {timeout}s; {self.counters}"
                )
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    async def wait_for_frame(self, kind: int, since: int = 0, timeout: float = 5.0) -> Any:
        """The first frame of type `kind` received at index `since` or later."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.received[since:]:
                if frame.type == kind:
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {protocol.TYPE_NAMES[kind]} frame in {timeout}s")
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    def start_sampling(self) -> None:
        """Make readings of stream 0 at its rate (set_rate changes it) until stop()."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample())

    def ignore_acks(self, seconds: float) -> None:
        """Drop every ACK that arrives in the next `seconds` (as if they were lost)."""
        self._ignore_acks_until = time.monotonic() + seconds

    def lose_data_frames(self, count: int) -> None:
        """The next `count` DATA frames put on the wire, new or resent, never reach it (new
        ones stay in the ring, as on a real cable)."""
        self._lose_frames = count

    def send_raw(self, data: bytes) -> None:
        self._outbox.append(data)
        self._wake.set()

    def send_heartbeat(self, queued: int | None = None) -> None:
        """HEARTBEAT with the ring's depth (or `queued`, to report a depth the test picks)."""
        depth = self.queued if queued is None else queued
        payload = protocol.heartbeat_payload(self.uptime_ms, depth)
        self.send_raw(protocol.encode_frame(protocol.HEARTBEAT, 0, payload))

    def send_log(self, level: int, text: str) -> None:
        self.send_raw(protocol.encode_frame(protocol.LOG, 0, protocol.log_payload(level, text)))

    def nacks(self, code: int) -> list[tuple[int, int, str]]:
        """The NACKs with this code received so far: (code, expected, reason)."""
        found = []
        for frame in self.received:
            if frame.type == protocol.NACK:
                nack = protocol.parse_nack(frame.payload)
                if nack[0] == code:
                    found.append(nack)
        return found

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            frames = list(self._outbox)
            self._outbox.clear()
            if not self.hello_acked:
                if now >= self._hello_due:
                    frames.append(self._hello_frame())
                    self._hello_due = now + self.retransmit_timeout
            else:
                frames += self._data_frames(now)
            if frames:
                await self._write(b"".join(frames))
            if self._reboot_after_outbox:
                self._reboot_after_outbox = False
                self.reboot()
                continue
            await self._sleep(self._next_deadline() - time.monotonic())

    async def _sleep(self, seconds: float) -> None:
        """Until the deadline or a wake-up. A timer, not asyncio.wait_for, which on Python
        3.11 can swallow the cancellation from stop() when it meets a wake-up."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self._wake.clear()
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _next_deadline(self) -> float:
        if self._outbox:
            return time.monotonic()
        if not self.hello_acked:
            return self._hello_due
        if self.ring:
            return self._timer + self.retransmit_timeout
        return time.monotonic() + 1.0

    def _hello_frame(self) -> bytes:
        self.counters["hellos_sent"] += 1
        self._hello_sent = True
        return protocol.encode_frame(protocol.HELLO, 0, protocol.hello_payload(self.hello))

    def _data_frames(self, now: float) -> list[bytes]:
        frames = []
        if self.ring and (self._resend or now - self._timer >= self.retransmit_timeout):
            for seq, payload in self.ring:
                frame = protocol.encode_frame(protocol.DATA, seq, payload, protocol.FLAG_RETRANSMIT)
                if not self._lost_on_purpose():
                    frames.append(frame)
            self.counters["retransmits"] += len(self.ring)
            self.counters["retransmit_rounds"] += 1
            self._timer = now
        self._resend = False
        per_frame = self._records_per_frame()
        while self._backlog and len(self.ring) < self.ring_size:
            take = min(per_frame, len(self._backlog))
            payload = protocol.data_payload([self._backlog.popleft() for _ in range(take)])
            if not self.ring:
                self._timer = now
            self.ring.append((self.seq, payload))
            frame = protocol.encode_frame(protocol.DATA, self.seq, payload)
            self.seq = protocol.seq_add(self.seq, 1)
            self.counters["data_frames"] += 1
            if not self._lost_on_purpose():
                frames.append(frame)
        return frames

    def _lost_on_purpose(self) -> bool:
        if not self._lose_frames:
            return False
        self._lose_frames -= 1
        self.counters["lost_on_purpose"] += 1
        return True

    def _records_per_frame(self) -> int:
        widest = max(len(stream["fields"]) for stream in self.streams)
        return min(self.records_per_frame, protocol.MAX_PAYLOAD // (6 + 4 * widest))

    async def _write(self, data: bytes) -> None:
        try:
            await self.serial.write_async(data)
        except OSError:  # unplugged: lost on the wire; the ring still has the DATA
            self.counters["writes_lost"] += 1

    async def _sample(self) -> None:
        while True:
            rate = float(self.streams[0].get("rate") or 0.0)
            # The device's sampling clock, not synchronisation; rate 0 pauses sampling.
            await asyncio.sleep(1.0 / rate if rate else 0.05)
            if rate:
                self.queue_readings(1)

    # -- receiving -------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            chunk = os.read(self.serial.master, 65536)
        except (BlockingIOError, OSError, TypeError):
            return
        for item in self._decoder.feed(chunk):
            if isinstance(item, protocol.ProtocolError):
                self.counters["bad_frames"] += 1
                continue
            self.received.append(item)
            handler = {
                protocol.ACK: self._on_ack,
                protocol.NACK: self._on_nack,
                protocol.CMD: self._on_cmd,
            }.get(item.type)
            if handler is None:
                self.counters["unexpected_frames"] += 1
            else:
                handler(item)
        self._progress.set()

    def _on_ack(self, frame: protocol.Frame) -> None:
        if time.monotonic() < self._ignore_acks_until:
            self.counters["acks_ignored"] += 1
            return
        self.counters["acks"] += 1
        fresh = frame.flags & protocol.FLAG_FRESH
        if not self.hello_acked:
            if not self._hello_sent:
                return  # an ACK from before our HELLO: not an answer to it
            self.hello_acked = True
            self.counters["fresh_acks" if fresh else "resume_acks"] += 1
            self._resend = True  # from the oldest unacknowledged frame, whatever came before
            self._timer = time.monotonic()
        if not fresh:
            self._release(frame.seq)
        self._wake.set()

    def _release(self, seq: int) -> None:
        """Drop the frames up to `seq` if it is within the ring (one before its oldest to its
        newest); a stale or bogus ACK is ignored."""
        if not self.ring:
            return
        oldest, newest = self.ring[0][0], self.ring[-1][0]
        if not -1 <= protocol.seq_diff(seq, oldest) <= protocol.seq_diff(newest, oldest):
            self.counters["acks_out_of_ring"] += 1
            return
        released = False
        while self.ring and protocol.seq_diff(seq, self.ring[0][0]) >= 0:
            self.ring.popleft()
            released = True
        if released:
            self._timer = time.monotonic()

    def _on_nack(self, frame: protocol.Frame) -> None:
        code, expected, _reason = protocol.parse_nack(frame.payload)
        self.counters["nack " + protocol.NACK_NAMES.get(code, str(code))] += 1
        if code == protocol.NACK_NEED_HELLO and self.hello_acked:
            self.hello_acked = False  # same boot id, ring kept
            self._hello_due = 0.0
        elif code == protocol.NACK_OUT_OF_ORDER and self.hello_acked:
            self._obey_out_of_order(expected)
        self._wake.set()

    def _obey_out_of_order(self, expected: int) -> None:
        now = time.monotonic()
        last = self._out_of_order
        if last is not None and last[0] == expected and now - last[1] < self.retransmit_timeout:
            return
        self._out_of_order = (expected, now)
        self._release(protocol.seq_add(expected, -1))  # everything before it was accepted
        self._resend = True

    def _on_cmd(self, frame: protocol.Frame) -> None:
        if not self.answer_commands:
            self.counters["commands_ignored"] += 1
            return
        if len(frame.payload) < 3:
            payload = protocol.nack_payload(protocol.NACK_BAD_PAYLOAD, 0, "CMD too short")
            self.send_raw(protocol.encode_frame(protocol.NACK, 0, payload))
            return
        try:
            request_id, name, args = protocol.parse_cmd(frame.payload)
        except protocol.ProtocolError as error:
            request_id = int.from_bytes(frame.payload[:2], "little")
            self._respond(request_id, protocol.NACK_BAD_PAYLOAD, {"error": error.reason})
            return
        self.counters["commands"] += 1
        self._respond(request_id, *self._command(name, args))

    def _respond(self, request_id: int, status: int, result: Any) -> None:
        payload = protocol.resp_payload(request_id, status, result)
        if len(payload) > protocol.MAX_PAYLOAD:
            payload = protocol.resp_payload(request_id, protocol.NACK_TOO_LARGE, {})
        self.send_raw(protocol.encode_frame(protocol.RESP, 0, payload))

    def _command(self, name: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if name == "ping":
            return protocol.STATUS_OK, {"pong": True, "uptime_ms": self.uptime_ms}
        if name == "info":
            return self._info()
        if name == "set_rate":
            return self._set_rate(args)
        if name == "set_config":
            return self._set_config(args)
        if name == "reboot":
            self._reboot_after_outbox = True  # after the RESP is out, as a board would
            return protocol.STATUS_OK, {}
        return protocol.NACK_UNKNOWN_COMMAND, {"error": f"unknown command {name!r}"}

    def _info(self) -> tuple[int, dict[str, Any]]:
        info = {**self.hello, "uptime_ms": self.uptime_ms, "queued": self.queued}
        info["config"] = self.config
        # Dropped in this order until the answer fits in a RESP (docs/protocol.md 10).
        for key in ("config", "streams", "caps", None):
            if len(protocol.resp_payload(0, 0, info)) <= protocol.MAX_PAYLOAD:
                return protocol.STATUS_OK, info
            if key is not None:
                info.pop(key)
        return protocol.NACK_TOO_LARGE, {"error": "info does not fit in a frame"}

    def _set_config(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not args:
            return protocol.NACK_BAD_ARGUMENTS, {"error": "no keys to set"}
        for key, value in args.items():
            if value is None:
                self.config.pop(key, None)
            else:
                self.config[key] = value
        return protocol.STATUS_OK, {"keys": sorted(args)}

    def _set_rate(self, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        names = [stream["name"] for stream in self.streams]
        rate = args.get("rate")
        if args.get("stream") not in names:
            return protocol.NACK_BAD_ARGUMENTS, {"error": f"stream must be one of {names}"}
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
            return protocol.NACK_BAD_ARGUMENTS, {"error": "rate must be a number >= 0"}
        self.streams[names.index(args["stream"])]["rate"] = rate
        return protocol.STATUS_OK, {"stream": args["stream"], "rate": rate}
