"""Wire protocol v1, gateway end of one serial link: bytes in → readings, replies and ACKs out.

`CobsLink` is the protocol state machine and does no I/O (like the websockets library's
protocol objects): the caller feeds it received bytes with receive(), takes the readings,
command responses and bytes to send, and asks it when an ACK is due. `CobsHandler` is the
thin asyncio driver a SerialSource plugs in for framing = "cobs": it hands readings to the
ingest, writes the link's bytes to the port, and sends each ACK only after the ingest has
settled the readings it covers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from typing import Any, Callable

from gateway.core import protocol
from gateway.sources.commands import CommandError, CommandTimeout, PendingCommands
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sources")

ACK_INTERVAL = protocol.ACK_INTERVAL_MS / 1000  # seconds an accepted frame may wait for its ACK
ACK_EVERY_FRAMES = protocol.ACK_EVERY_FRAMES
# A burst of frames after a gap (or before a HELLO) would otherwise earn one NACK each, and
# each NACK makes the device resend its whole ring again (docs/protocol.md 9.3: at most one
# per expected seq per retransmit timeout; a NACK lost on the wire is then repeated).
NACK_REPEAT_INTERVAL = protocol.RETRANSMIT_TIMEOUT_MS / 1000
COMMAND_TIMEOUT = protocol.CMD_TIMEOUT_MS / 1000
# A device is offline after three heartbeat intervals without any frame from it.
OFFLINE_AFTER = 3 * protocol.HEARTBEAT_INTERVAL_MS / 1000
COUNTERS = (
    "frames",
    "readings",
    "bad_frames",
    "bad_payloads",
    "duplicates",
    "gaps",
    "busy",
    "unsafe_rollbacks",
    "acks_sent",
    "nacks_sent",
    "nacks_received",
    "hellos",
    "unsupported_hellos",
    "reboots",
    "heartbeats",
    "device_logs",
    "commands",
    "responses",
    "unmatched_responses",
    "non_finite_values",
)
# Frame errors answered with a NACK: the CRC was good, so the frame is the device's own.
# COBS, length and CRC failures are never answered: none of their fields can be trusted.
FRAME_NACKS = {
    "version": protocol.NACK_UNSUPPORTED_VERSION,
    "type": protocol.NACK_UNKNOWN_TYPE,
}

# One reading for the ingest: (data, ts, stream name, device time in ms, device id).
Reading = tuple


def nack_name(code: int) -> str:
    return protocol.NACK_NAMES.get(code, f"code {code}")


class CobsLink:
    """The protocol state of one serial link (no I/O).

    Feed received bytes to receive(chunk, ts, now); then take `readings` and `responses`,
    send data_to_send(), and when ack_delay(now) reaches 0 send take_ack() (after the
    readings it covers are settled) and confirm with ack_sent(). `ts` is the wall-clock
    receive time given to readings, `now` a monotonic clock in seconds for ACK pacing.

    `memory` maps device id → [boot id, last accepted DATA seq or None, the HELLO's "oldest"]:
    while nothing of the boot is accepted, the device's oldest is the one seq it may start
    with, so a lost first frame shows up as a gap (docs/protocol.md 9.3). It outlives
    connections, so a device that kept its ring while the port was unplugged resumes
    without duplicates; the app shares one among all links (a device moved to another port
    resumes too), and a persisted one would do the same across gateway restarts.
    `accepting()` says whether the ingest can queue now; while it cannot, DATA is refused
    with NACK BUSY and taken when the device resends it.
    """

    def __init__(
        self,
        name: str,
        memory: dict[str, list] | None = None,
        accepting: Callable[[], bool] | None = None,
    ):
        self.name = name
        self.memory: dict[str, list] = memory if memory is not None else {}
        self.accepting: Callable[[], bool] = accepting or _always
        self.port: str | None = None
        self.counters: Counter = Counter(dict.fromkeys(COUNTERS, 0))
        self.bad_frames: Counter = Counter()  # by reason: cobs, crc, truncated, too_large, ...
        self.nacks_by_code: Counter = Counter()  # NACKs sent, by code name
        self.readings: list[Reading] = []
        self.responses: list[tuple[int, int, Any]] = []  # (request id, status, result)
        self.epoch = 0  # bumped whenever ACK numbering restarts; a stale ACK must not go out
        # What the last HELLO said; kept after a disconnect for the health page.
        self.hello: dict[str, Any] | None = None
        self.device: str | None = None
        self.boot: int | None = None
        self.last_heartbeat: dict[str, Any] | None = None
        self.last_seen: float | None = None  # wall-clock time of the device's last good frame
        self._stream_fields: list[tuple[str, list[str]]] = []
        self._out = bytearray()
        self._decoder = protocol.FrameDecoder()
        self._throttle = ThrottledLog(log)
        self._handlers: dict[int, Callable[[protocol.Frame, float, float], None]] = {
            protocol.HELLO: self._on_hello,
            protocol.DATA: self._on_data,
            protocol.NACK: self._on_nack,
            protocol.RESP: self._on_resp,
            protocol.HEARTBEAT: self._on_heartbeat,
            protocol.LOG: self._on_log,
        }
        self._forget_connection()

    # -- connection ------------------------------------------------------------------------

    def connected(self, port: str) -> None:
        """A port was (re)opened: the device must say HELLO on it before its DATA counts."""
        self.port = port
        self._forget_connection()
        self._out += protocol.cobs.DELIMITER  # ends whatever half frame the device holds

    def disconnected(self) -> None:
        """The port closed: drop what belongs to the connection, keep what each device sent."""
        self._forget_connection()

    def _forget_connection(self) -> None:
        self.greeted = False  # a HELLO arrived on this connection
        self._entry: list | None = None  # memory entry of the greeted device
        self._acked: int | None = None  # the last seq an ACK that went out covered
        self._ack_covers: int | None = None  # the seq the ACK being settled covers
        self._unacked_frames = 0
        self._ack_due: float | None = None
        self._gap_expected: int | None = None  # an OUT_OF_ORDER NACK to send with the next ACK
        self._last_nack: dict[int, tuple[int, float]] = {}
        self._out.clear()
        self._decoder.reset()
        self.epoch += 1

    @property
    def accepted(self) -> int | None:
        """The last DATA seq accepted from the greeted device's current boot."""
        return None if self._entry is None else self._entry[1]

    # -- bytes in --------------------------------------------------------------------------

    def receive(self, chunk: bytes, ts: float, now: float) -> None:
        for item in self._decoder.feed(chunk):
            if isinstance(item, protocol.ProtocolError):
                self._bad_frame(item)
                continue
            self.counters["frames"] += 1
            self.last_seen = ts
            handler = self._handlers.get(item.type)
            if handler is None:  # a gateway-to-device type coming from the device
                self._bad_frame(protocol.ProtocolError("type", "device sent a gateway type", item))
                continue
            handler(item, ts, now)

    def _bad_frame(self, error: protocol.ProtocolError) -> None:
        self.counters["bad_frames"] += 1
        self.bad_frames[error.code] += 1
        self._throttle.warning(error.code, "source %s: dropped a bad frame (%s)", self.name, error)
        code = FRAME_NACKS.get(error.code)
        if code is not None and error.frame.type != protocol.NACK:  # never NACK a NACK
            self._nack(code, 0, error.reason)

    def _bad_payload(self, frame: protocol.Frame, error: protocol.ProtocolError) -> None:
        kind = protocol.TYPE_NAMES[frame.type]
        self.counters["bad_payloads"] += 1
        self.bad_frames["payload"] += 1
        self._throttle.warning(
            "payload " + kind,
            "source %s: bad %s payload from device %s: %s",
            self.name,
            kind,
            self.device or "(no HELLO yet)",
            error.reason,
        )
        self._nack(protocol.NACK_BAD_PAYLOAD, 0, f"{kind}: {error.reason}")

    def _on_hello(self, frame: protocol.Frame, ts: float, now: float) -> None:
        try:
            hello = protocol.parse_hello(frame.payload)
        except protocol.ProtocolError as error:
            self._bad_payload(frame, error)
            return
        if protocol.VERSION not in hello["proto"]:
            self.counters["unsupported_hellos"] += 1
            self._throttle.warning(
                "proto",
                "source %s: device %s speaks protocol versions %s, this gateway only %d",
                self.name,
                hello["device"],
                hello["proto"],
                protocol.VERSION,
            )
            self._nack(protocol.NACK_UNSUPPORTED_VERSION, 0, f"gateway speaks [{protocol.VERSION}]")
            return
        self.counters["hellos"] += 1
        device, boot = hello["device"], hello["boot"]
        repeated = self.greeted and (device, boot) == (self.device, self.boot)
        self._remember(device, boot, hello["oldest"])
        self._acked = self._entry[1] if self._entry is not None else None
        self.hello, self.device, self.boot = hello, device, boot
        self._stream_fields = [(stream["name"], stream["fields"]) for stream in hello["streams"]]
        self.greeted = True
        self.epoch += 1  # an ACK computed before this HELLO may belong to another boot
        self._ack_due = now  # the HELLO-ACK, at once
        if repeated:  # the device missed our HELLO-ACK
            log.debug("source %s: device %s repeated its HELLO", self.name, device)
            return
        log.info(
            "device %s (fw %s) connected on %s, boot %08x; streams %s",
            device,
            hello["fw"],
            self.port or self.name,
            boot,
            describe_streams(hello["streams"]) or "none",
        )

    def _remember(self, device: str, boot: int, oldest: int) -> None:
        entry = self.memory.get(device)
        if entry is None:
            entry = self.memory[device] = [boot, None, oldest]
        elif entry[0] != boot:
            self.counters["reboots"] += 1
            log.warning(
                "device %s rebooted (boot %08x, was %08x; last accepted seq %s); "
                "its sequence numbers start again",
                device,
                boot,
                entry[0],
                entry[1],
            )
            entry[:] = [boot, None, oldest]
        elif entry[1] is None:
            # Nothing accepted of this boot yet: where the device starts is its own word. Its
            # oldest moves on only when it dropped frames itself (ring policy drop_oldest).
            entry[2] = oldest
        self._entry = entry

    def _need_hello(self, now: float) -> bool:
        """True (after a NACK NEED_HELLO, at most one per interval) when no HELLO came yet."""
        if self._entry is not None:
            return False
        self._nack_limited(protocol.NACK_NEED_HELLO, 0, now, "no HELLO on this connection")
        return True

    def _on_data(self, frame: protocol.Frame, ts: float, now: float) -> None:
        if self._need_hello(now):
            return
        seq, accepted, oldest = frame.seq, self._entry[1], self._entry[2]
        # After a FRESH HELLO-ACK the device resends from the oldest frame its HELLO named.
        expected = oldest if accepted is None else protocol.seq_add(accepted, 1)
        ahead = protocol.seq_diff(seq, expected)
        if ahead < 0:
            self.counters["duplicates"] += 1
            if accepted is not None:
                self._ack_due = now  # our ACK was lost or late: say it again
            return
        if ahead > 0:
            self._gap(expected, now)
            return
        if not self.accepting():
            self.counters["busy"] += 1
            self._nack_limited(protocol.NACK_BUSY, 0, now, "gateway queue full")
            return
        if accepted is None:  # a FRESH start: a failed settle() rolls back to before it
            self._acked = protocol.seq_add(seq, -1)
        self._entry[1] = seq
        self._last_nack.clear()  # progress: a later gap deserves a NACK of its own
        self._unacked_frames += 1
        if self._unacked_frames >= ACK_EVERY_FRAMES:
            self._ack_due = now
        elif self._ack_due is None:
            self._ack_due = now + ACK_INTERVAL
        self._deliver(frame, ts)

    def _gap(self, expected: int, now: float) -> None:
        self.counters["gaps"] += 1
        last = self._last_nack.get(protocol.NACK_OUT_OF_ORDER)
        if last is not None and last[0] == expected and now - last[1] < NACK_REPEAT_INTERVAL:
            return
        self._last_nack[protocol.NACK_OUT_OF_ORDER] = (expected, now)
        if self._entry is not None and self._entry[1] is None:
            # Nothing accepted, so nothing to settle or acknowledge first (and a FRESH ACK
            # answers only a HELLO): the NACK goes at once.
            self._nack(protocol.NACK_OUT_OF_ORDER, expected, "")
            return
        # The device takes this NACK as an ACK of expected - 1, so it waits for the ACK:
        # both go out once the accepted readings are settled.
        self._gap_expected = expected
        self._ack_due = now

    def _deliver(self, frame: protocol.Frame, ts: float) -> None:
        # An accepted frame whose payload is bad is still accepted (and ACKed): refusing it
        # would stall the go-back-N window behind it forever, losing everything after it.
        try:
            records = protocol.parse_data(frame.payload)
            protocol.check_data(records, self.hello["streams"] if self.hello else [])
        except protocol.ProtocolError as error:
            self._bad_payload(frame, error)
            return
        device, streams, readings = self.device, self._stream_fields, self.readings
        for index, dts, values in records:
            name, fields = streams[index]
            if not math.isfinite(sum(values)):
                values = self._finite_or_none(values)
            readings.append((dict(zip(fields, values)), ts, name, dts, device))
        self.counters["readings"] += len(records)

    def _finite_or_none(self, values: list[float]) -> list[float | None]:
        # JSON has no NaN or infinity; a sensor sends them for "no value", so that is what
        # the reading says (null), and the count shows it happened.
        cleaned = [value if math.isfinite(value) else None for value in values]
        self.counters["non_finite_values"] += cleaned.count(None)
        return cleaned

    def _on_nack(self, frame: protocol.Frame, ts: float, now: float) -> None:
        try:
            code, expected, reason = protocol.parse_nack(frame.payload)
        except protocol.ProtocolError as error:
            self.counters["bad_payloads"] += 1
            self.bad_frames["payload"] += 1
            self._throttle.warning("payload NACK", "source %s: bad NACK: %s", self.name, error)
            return
        self.counters["nacks_received"] += 1
        self._throttle.warning(
            "nack " + nack_name(code),
            "source %s: device %s sent NACK %s (%s)",
            self.name,
            self.device or "(no HELLO yet)",
            nack_name(code),
            reason or f"expected {expected}",
        )

    def _on_resp(self, frame: protocol.Frame, ts: float, now: float) -> None:
        if self._need_hello(now):  # an answer to a command of an earlier connection
            self.counters["unmatched_responses"] += 1
            return
        try:
            response = protocol.parse_resp(frame.payload)
        except protocol.ProtocolError as error:
            self._bad_payload(frame, error)
            return
        self.counters["responses"] += 1
        self.responses.append(response)

    def _on_heartbeat(self, frame: protocol.Frame, ts: float, now: float) -> None:
        if self._need_hello(now):  # how an idle device learns the gateway restarted
            return
        try:
            uptime_ms, queued = protocol.parse_heartbeat(frame.payload)
        except protocol.ProtocolError as error:
            self._bad_payload(frame, error)
            return
        self.counters["heartbeats"] += 1
        self.last_heartbeat = {"at": ts, "uptime_ms": uptime_ms, "queued": queued}

    def _on_log(self, frame: protocol.Frame, ts: float, now: float) -> None:
        try:
            level, text = protocol.parse_log(frame.payload)
        except protocol.ProtocolError as error:
            self._bad_payload(frame, error)
            return
        self.counters["device_logs"] += 1
        logger = logging.getLogger("gateway.device." + (self.device or self.name))
        logger.log(level or logging.INFO, "%s", text)

    # -- bytes out -------------------------------------------------------------------------

    def _nack(self, code: int, expected: int, reason: str) -> None:
        payload = protocol.nack_payload(code, expected, reason)
        self._out += protocol.encode_frame(protocol.NACK, 0, payload)
        self.counters["nacks_sent"] += 1
        self.nacks_by_code[nack_name(code)] += 1

    def _nack_limited(self, code: int, expected: int, now: float, reason: str) -> None:
        last = self._last_nack.get(code)
        if last is not None and last[0] == expected and now - last[1] < NACK_REPEAT_INTERVAL:
            return
        self._last_nack[code] = (expected, now)
        self._nack(code, expected, reason)

    def command(self, request_id: int, name: str, args: dict[str, Any]) -> None:
        """Queue a CMD frame; raises ValueError if it cannot be encoded or does not fit the
        device's receive limit (HELLO max_frame)."""
        payload = protocol.cmd_payload(request_id, name, args)
        limit = (self.hello or {}).get("max_frame", protocol.MAX_FRAME)
        if protocol.MIN_FRAME + len(payload) > limit:
            raise ValueError(
                f"a {protocol.MIN_FRAME + len(payload)}-byte frame exceeds the device's "
                f"max_frame of {limit} bytes"
            )
        self._out += protocol.encode_frame(protocol.CMD, 0, payload)
        self.counters["commands"] += 1

    def data_to_send(self) -> bytes:
        """The bytes queued for the device (NACKs, commands), emptying the queue."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def ack_delay(self, now: float) -> float | None:
        """Seconds until an ACK is due (0 or less: now), None when none is pending."""
        return None if self._ack_due is None else self._ack_due - now

    def take_ack(self) -> bytes | None:
        """The ACK for what is accepted now (and a pending OUT_OF_ORDER NACK after it);
        send it once those readings are settled, and only if `epoch` is still what it was
        when this was called."""
        self._ack_due = None
        self._unacked_frames = 0
        gap_expected, self._gap_expected = self._gap_expected, None
        if self._entry is None:
            return None
        accepted = self._ack_covers = self._entry[1]
        if accepted is None:
            return protocol.encode_frame(
                protocol.ACK, protocol.FRESH_SEQ, flags=protocol.FLAG_FRESH
            )
        ack = protocol.encode_frame(protocol.ACK, accepted)
        if gap_expected is None or gap_expected != protocol.seq_add(accepted, 1):
            return ack
        self.counters["nacks_sent"] += 1
        self.nacks_by_code[nack_name(protocol.NACK_OUT_OF_ORDER)] += 1
        payload = protocol.nack_payload(protocol.NACK_OUT_OF_ORDER, gap_expected)
        return ack + protocol.encode_frame(protocol.NACK, 0, payload)

    def ack_sent(self) -> None:
        self.counters["acks_sent"] += 1
        if self._ack_covers is not None:  # a FRESH ACK covers nothing
            self._acked = self._ack_covers

    def unsafe(self) -> None:
        """The ingest could not make the readings safe (settle() said False): forget what
        was accepted since the last ACK, so the device's resent frames are taken again.

        Consumers may then see those readings twice, never miss one."""
        self.counters["unsafe_rollbacks"] += 1
        if self._entry is not None and self._entry[1] != self._acked:
            self._throttle.warning(
                "unsafe",
                "source %s: readings after seq %s not safely queued; taking them again",
                self.name,
                self._acked,
            )
            self._entry[1] = self._acked

    # -- reporting -------------------------------------------------------------------------

    def state(self, now: float | None = None) -> dict[str, Any]:
        """What the health page shows: the device on this link and how it is doing.

        `now` is wall-clock time (default time.time()); `online` means greeted on this
        connection and heard from within OFFLINE_AFTER seconds.
        """
        hello = self.hello or {}
        now = time.time() if now is None else now
        recent = self.last_seen is not None and now - self.last_seen < OFFLINE_AFTER
        return {
            "device": self.device,
            "fw": hello.get("fw"),
            "boot": self.boot,
            "greeted": self.greeted,
            "online": self.greeted and recent,
            "last_seen": self.last_seen,
            "streams": hello.get("streams", []),
            "caps": hello.get("caps", []),
            "accepted_seq": self.accepted,
            "last_heartbeat": self.last_heartbeat,
        }

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "bad_frames_by_reason": dict(self.bad_frames),
            "nacks_sent_by_code": dict(self.nacks_by_code),
        }


def _always() -> bool:
    return True


def describe_streams(streams: list[dict[str, Any]]) -> str:
    """'env [temperature, humidity] at 1/s, power [watts]' for the connect log line."""
    parts = []
    for stream in streams:
        text = "{} [{}]".format(stream["name"], ", ".join(stream["fields"]))
        if stream.get("rate"):
            text += " at {:g}/s".format(stream["rate"])
        parts.append(text)
    return ", ".join(parts)


OnData = Callable[..., None]


class CobsHandler:
    """Drives a CobsLink for a SerialSource with framing = "cobs".

    Readings go to `on_data(data, ts, stream=, device_time=, device=)` (Ingest.on_data) as
    frames arrive; an ACK goes out at most ACK_INTERVAL after the first frame it covers or at
    once after ACK_EVERY_FRAMES, and only after `await settle()` returned True (Ingest.settle),
    so an acknowledged reading is as safe as the ingest makes it. When settle() returns False
    no ACK goes out and the readings since the last ACK will be taken again when resent.
    """

    def __init__(self, link: CobsLink, on_data: OnData, settle: Callable[[], Any]):
        self.link = link
        self.on_data = on_data
        self.settle = settle
        self.counters: Counter = Counter(callback_errors=0)
        self._write: Callable[[bytes], bool] | None = None
        self._pending = PendingCommands()
        self._ack_wanted = asyncio.Event()
        self._ack_idle = True  # the ACK task waits with no deadline
        self._ack_task: asyncio.Task | None = None
        self._problems = ThrottledLog(log)

    # -- called by SerialSource ------------------------------------------------------------

    def connected(self, port: str, write: Callable[[bytes], bool]) -> None:
        self.link.connected(port)
        self._write = write
        self._flush()
        self._ack_task = asyncio.get_running_loop().create_task(self._send_acks())

    def disconnected(self) -> None:
        self._write = None
        if self._ack_task is not None:
            self._ack_task.cancel()
            self._ack_task = None
        self.link.disconnected()
        device = self.link.device or self.link.name
        self._pending.fail_all(CommandError(f"device {device}: disconnected before answering"))

    def receive(self, chunk: bytes, ts: float) -> None:
        link = self.link
        now = time.monotonic()
        link.receive(chunk, ts, now)
        if link.readings:
            self._deliver(link.readings)
            link.readings = []
        if link.responses:
            for request_id, status, result in link.responses:
                if not self._pending.resolve(request_id, status, result):
                    link.counters["unmatched_responses"] += 1
            link.responses = []
        self._flush()
        delay = link.ack_delay(now)
        if delay is not None and (delay <= 0 or self._ack_idle):
            self._ack_wanted.set()

    def stats(self) -> dict[str, Any]:
        return {**self.link.stats(), **self.counters, "pending_commands": len(self._pending)}

    def state(self) -> dict[str, Any]:
        return self.link.state()

    # -- commands --------------------------------------------------------------------------

    async def command(
        self, name: str, args: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        """Send CMD `name` and return the device's result; raises CommandError (or its
        CommandTimeout) naming the NACK code when the device refuses or does not answer."""
        link = self.link
        device = link.device or link.name
        if self._write is None or not link.greeted:
            raise CommandError(f"device {device}: not connected (no HELLO on the link yet)")
        request_id, answer = self._pending.open()
        try:
            link.command(request_id, name, args or {})
        except (ValueError, TypeError) as error:
            self._pending.discard(request_id)
            raise CommandError(f"device {device}: cannot send {name!r}: {error}") from None
        self._flush()
        try:
            status, result = await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            raise CommandTimeout(
                f"device {device}: no answer to {name!r} (request {request_id}) "
                f"within {timeout:g} s"
            ) from None
        finally:
            self._pending.discard(request_id)
        if status != protocol.STATUS_OK:
            detail = result.get("error") if isinstance(result, dict) else None
            raise CommandError(
                f"device {device} refused {name!r}: {nack_name(status)}"
                + (f" ({detail})" if detail else ""),
                code=status,
                code_name=nack_name(status),
                result=result,
            )
        return result

    # -- internals -------------------------------------------------------------------------

    async def _until_ack_wanted(self, delay: float | None) -> None:
        """Wait `delay` seconds (None: no deadline) or until receive() wants an ACK sooner."""
        # A timer setting the event, not asyncio.wait_for: on Python 3.11 wait_for can
        # swallow a cancellation that meets the event being set, leaving the task running.
        self._ack_wanted.clear()
        self._ack_idle = delay is None
        timer = None
        if delay is not None:
            timer = asyncio.get_running_loop().call_later(delay, self._ack_wanted.set)
        try:
            await self._ack_wanted.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self._ack_idle = False

    def _deliver(self, readings: list[Reading]) -> None:
        on_data = self.on_data
        for data, ts, stream, dts, device in readings:
            try:
                on_data(data, ts, stream=stream, device_time=dts, device=device)
            except Exception:  # a consumer bug must not stop the link or lose the next readings
                self.counters["callback_errors"] += 1
                self._problems.warning(
                    "callback",
                    "source %s: reading handler failed on %r",
                    self.link.name,
                    data,
                    exc_info=True,
                )

    def _flush(self) -> None:
        data = self.link.data_to_send()
        if data and self._write is not None:
            self._write(data)

    async def _send_acks(self) -> None:
        link = self.link
        while True:
            delay = link.ack_delay(time.monotonic())
            if delay is None or delay > 0:
                await self._until_ack_wanted(delay)
                continue
            epoch = link.epoch
            frame = link.take_ack()
            if frame is None:
                continue
            if await self.settle() is False:
                link.unsafe()
                continue
            if link.epoch == epoch and self._write is not None and self._write(frame):
                link.ack_sent()


__all__ = ["CobsHandler", "CobsLink", "CommandError", "CommandTimeout", "describe_streams"]
