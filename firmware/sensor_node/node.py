"""The sensor node: samples its streams and speaks wire protocol v1 (docs/protocol.md).

One Node is one boot: a random boot id, DATA seq from 0, uptime from 0. Node.run() returns
"reboot" (the reboot command), "link_lost" (the link closed for good) or "repl" (the REPL
escape arrived); main.py decides what that means on a board and on a host.
"""

import os
import sys

import sensors
from link import LinkClosed
from ring import Ring

from gateway.core import compat
from gateway.core import device_protocol as protocol  # the device's part: no gateway parsers

FW_VERSION = "0.1.0"
CAPS = ["cmd", "log", "heartbeat"]
# DATA frames are capped at 256 bytes (247 of records), as docs/protocol.md §5 suggests, so
# the ring of 64 frames takes at most ~16 KB; HELLO and RESP may use the full frame.
DATA_MAX_PAYLOAD = min(protocol.MAX_PAYLOAD, 247)
MAX_LOGS = 8  # LOG frames kept while the HELLO is unacknowledged
RETRY_WRITE_MS = 100  # pause after a failed write before the sender tries again
HEARTBEAT_NAP_MS = 200
REBOOT_DELAY_MS = 50
SHORT_WAIT_MS = 50  # sampler waits up to this long are plain sleeps (no cancellable wait)

# Five Ctrl-C bytes between two delimiters: never a valid frame (too short), so a host can
# always reach the REPL through a node that has Ctrl-C disabled. README.md explains.
REPL_ESCAPE = b"\x00\x03\x03\x03\x03\x03\x00"


class ConfigError(Exception):
    """The config cannot run (config.ConfigError's twin, raised without loading config)."""

    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def random_boot_id():
    """A random u32 telling this boot from every other (os.urandom where the port has it)."""
    try:
        data = os.urandom(4)
    except (AttributeError, OSError, NotImplementedError):
        import random

        return random.getrandbits(32)
    return data[0] | data[1] << 8 | data[2] << 16 | data[3] << 24


class Clock:
    """Milliseconds since boot as a u32 that keeps counting past the ticks counter's wrap."""

    def __init__(self):
        self.last = compat.ticks_ms()
        self.elapsed = 0

    def now(self):
        ticks = compat.ticks_ms()
        self.elapsed = (self.elapsed + compat.ticks_diff(ticks, self.last)) & 0xFFFFFFFF
        self.last = ticks
        return self.elapsed


class Stream:
    """One configured stream: its index in HELLO, driver, rate and the sampler's wake-up."""

    def __init__(self, index, spec, sensor):
        self.index = index
        self.name = spec["name"]
        self.rate = float(spec["rate"])
        self.sensor = sensor
        self.fields = list(sensor.fields)
        self.changed = compat.Event()
        self.failing = False

    def describe(self):
        return {"name": self.name, "fields": self.fields, "rate": self.rate}


class Node:
    """The node's tasks: samplers, sender (packs and transmits DATA), receiver, timer, heartbeat."""

    def __init__(self, config, link, config_path=None, echo=None, boot_errors=()):
        self.config = config
        self.link = link
        self.config_path = config_path
        self.echo = echo  # host only: where LOG text is also printed (a board's stdout is the link)
        self.device = config["device"]
        self.boot = random_boot_id()
        self.clock = Clock()
        self.streams = [
            Stream(index, spec, sensors.make_sensor(spec))
            for index, spec in enumerate(config["streams"])
        ]
        try:
            self.ring = Ring(config["ring"], slot_size=DATA_MAX_PAYLOAD)
        except MemoryError:  # the ring is allocated whole at boot: too big shows here, at once
            frames = config["ring"]
            raise ConfigError([f"ring: {frames} frames do not fit in the heap"]) from None
        # Records sampled and not yet in the ring, packed as they come (a frame's worth at
        # most): one buffer for the life of the node, not an object per record.
        self.pending = bytearray(DATA_MAX_PAYLOAD)
        self.pending_size = 0
        self.logs = []
        self.hello_acked = False
        self.hello_sent_at = None
        self.progress_at = compat.ticks_ms()  # last ACK progress (or first frame in flight)
        self.last_nack = None  # (expected seq, ticks) of the last OUT_OF_ORDER acted upon
        self.ring_blocked = False
        self.link_up = True
        self.outcome = None
        self.failure = None
        self.done = compat.Event()
        self.wake = compat.Event()  # the sender has something to do
        self.room = compat.Event()  # the ring released frames
        self.write_lock = compat.Lock()
        self.decoder = protocol.FrameDecoder()
        self.escape_tail = b""
        self.counters = {
            "samples": 0,
            "sensor_errors": 0,
            "frames_sent": 0,
            "retransmitted": 0,
            "retransmit_rounds": 0,
            "dropped_frames": 0,
            "ring_full": 0,
            "sessions": 1,
            "hellos": 0,
            "bad_frames": 0,
            "unexpected": 0,
            "nacks": 0,
            "logs_dropped": 0,
        }
        widest = self.describe()
        widest["oldest"] = 0xFFFF  # the longest number a later HELLO may carry there
        if len(protocol.hello_payload(widest)) > protocol.MAX_PAYLOAD:
            raise ConfigError(["streams: too many to describe in one HELLO frame"])
        for error in boot_errors:
            self.log(protocol.LOG_ERROR, error)

    def describe(self):
        """The HELLO, built each time it is sent (a heap with a full ring has no room to keep
        it). It names the device this boot started as: a changed device takes a reboot."""
        return {
            "device": self.device,
            "fw": FW_VERSION,
            "proto": [protocol.VERSION],
            "boot": self.boot,
            # The frame resent first after the HELLO-ACK (the next seq when the ring is empty):
            # a gateway without state for this boot takes nothing else first, so a loss shows.
            "oldest": self.ring.first_seq,
            "max_frame": protocol.MAX_FRAME,
            "streams": [stream.describe() for stream in self.streams],
            "caps": CAPS,
        }

    # -- running -------------------------------------------------------------------------------

    async def run(self):
        """Run until the node reboots, loses its link or is asked for the REPL; returns which."""
        self.log(protocol.LOG_INFO, f"boot {self.boot:08x}, firmware {FW_VERSION}")
        jobs = [self._receive(), self._send_loop(), self._timer(), self._heartbeat()]
        jobs.extend([self._sample(stream) for stream in self.streams])
        tasks = [compat.create_task(self._guard(job)) for job in jobs]
        try:
            await self.done.wait()
        finally:
            for task in tasks:
                task.cancel()
            # Let them unwind (release the link's watchers) before a reboot starts new ones.
            await compat.gather(*tasks, return_exceptions=True)
        if self.failure is not None:
            raise self.failure
        return self.outcome

    async def _guard(self, job):
        """A task that fails ends the node (the caller reboots it) instead of dying silently."""
        try:
            await job
        except compat.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any bug must surface, not hang the node
            if self.failure is None:
                self.failure = error
            self.done.set()

    def finish(self, outcome):
        if self.outcome is None:
            self.outcome = outcome
        self.done.set()

    def uptime_ms(self):
        return self.clock.now()

    def log(self, level, text):
        """A LOG frame for the gateway (queued until the HELLO is acknowledged)."""
        if self.echo is not None:
            self.echo("[" + self.config["device"] + f"] {level} {text}")
        if len(self.logs) >= MAX_LOGS:
            self.logs.pop(0)
            self.counters["logs_dropped"] += 1
        self.logs.append((level, text))
        self.wake.set()

    # -- writing ---------------------------------------------------------------------------------

    async def _send(self, kind, payload=b"", seq=0, flags=0):
        """Write one frame; False when the link is down (the frame is simply not sent)."""
        return await self._send_raw(protocol.encode_frame(kind, seq, payload, flags))

    async def _send_raw(self, data):
        if not self.link_up:
            return False
        async with self.write_lock:
            try:
                await self.link.write(data)
            except LinkClosed:
                return False
        return True

    async def send_hello(self):
        self.hello_sent_at = compat.ticks_ms()
        self.counters["hellos"] += 1
        await self._send(protocol.HELLO, protocol.hello_payload(self.describe()))

    async def _send_nack(self, code, expected=0, reason=""):
        await self._send(protocol.NACK, protocol.nack_payload(code, expected, reason))

    # -- sampling and packing ------------------------------------------------------------------

    async def _sample(self, stream):
        """Read the stream's sensor at its rate; records go to the sender's pending buffer."""
        due = compat.ticks_ms()
        carry = 0.0  # fractions of a millisecond, so 3 samples/s really is 3 a second
        while True:
            if not stream.rate:  # paused (rate 0) until set_rate gives it a rate again
                stream.changed.clear()
                await stream.changed.wait()
                due = compat.ticks_ms()
                carry = 0.0
                continue
            wait = compat.ticks_diff(due, compat.ticks_ms())
            if 0 < wait <= SHORT_WAIT_MS:
                await compat.sleep_ms(wait)
            elif wait > 0:
                # A long wait must end early when set_rate asks for a faster schedule.
                stream.changed.clear()
                try:
                    await compat.wait_for(stream.changed.wait(), wait / 1000)
                    due = compat.ticks_ms()  # the rate changed: start the new schedule now
                    carry = 0.0
                    continue
                except compat.TimeoutError:
                    pass
            try:
                values = await stream.sensor.read()
            except sensors.SensorError as error:
                self.counters["sensor_errors"] += 1
                if not stream.failing:  # logged once per run of failures, not every sample
                    stream.failing = True
                    self.log(protocol.LOG_ERROR, f"{stream.name}: {error}")
                values = None
            if values is not None:
                if stream.failing:
                    stream.failing = False
                    self.log(protocol.LOG_INFO, f"{stream.name}: readings again")
                self.counters["samples"] += 1
                await self._queue_record(stream, self.uptime_ms(), values)
            if not stream.rate:
                continue
            period = 1000.0 / stream.rate + carry
            step = int(period)
            carry = period - step
            due = compat.ticks_add(due, step)
            if compat.ticks_diff(compat.ticks_ms(), due) > step:
                due = compat.ticks_ms()  # fell behind by a whole period: skip, do not burst

    async def _queue_record(self, stream, dts, values):
        size = protocol.RECORD_SIZE + 4 * len(values)
        while self.pending_size + size > DATA_MAX_PAYLOAD:
            self._pack_frame()
            if self.pending_size + size <= DATA_MAX_PAYLOAD:
                break
            # Ring full under policy "block": sampling waits until an ACK frees a frame.
            if not self.ring_blocked:
                self.ring_blocked = True
                self.counters["ring_full"] += 1
                self.log(
                    protocol.LOG_WARNING, f"ring full ({len(self.ring)} frames): sampling paused"
                )
            self.room.clear()
            await self.room.wait()
        self.pending_size = protocol.pack_record(
            self.pending, self.pending_size, stream.index, dts, values
        )
        self.wake.set()

    def _pack_frame(self):
        """Move the pending records into the ring as one DATA payload, if the ring has (or may
        make) room. Records wait in pending until the sender can use a frame or a frame's worth
        has gathered, so a slow or absent gateway gets full frames, not one record each."""
        if not self.pending_size:
            return
        if self.ring.full():
            if self.config["ring_policy"] != "drop_oldest":
                return
            self.ring.drop_oldest()
            self.counters["dropped_frames"] += 1
            if self.ring.dropped_in_session == 1:
                self.log(protocol.LOG_WARNING, "ring full: dropping the oldest frames")
        self.ring.push(memoryview(self.pending)[: self.pending_size])
        self.pending_size = 0
        if self.ring_blocked:
            self.ring_blocked = False
            self.log(protocol.LOG_INFO, "ring has room again: sampling resumed")

    # -- sending -------------------------------------------------------------------------------

    async def _send_loop(self):
        """The only task writing DATA (and LOG): new frames in order, and go-back-N resends."""
        while True:
            self.wake.clear()
            if self.hello_acked and self.logs:
                level, text = self.logs.pop(0)
                await self._send(protocol.LOG, protocol.log_payload(level, text))
                continue
            item = None
            if self.hello_acked:
                item = self.ring.next_unsent()
                if item is None:
                    self._pack_frame()
                    item = self.ring.next_unsent()
            if item is None:
                await self.wake.wait()
                continue
            seq, payload, again = item
            if not self.ring.sent:
                self.progress_at = compat.ticks_ms()  # the first frame in flight starts the clock
            position = self.ring.position()
            flags = protocol.FLAG_RETRANSMIT if again else 0
            if not await self._send(protocol.DATA, payload, seq, flags):
                await compat.sleep_ms(RETRY_WRITE_MS)
                continue
            self.ring.mark_sent(seq, position)
            self.counters["frames_sent"] += 1
            if again:
                self.counters["retransmitted"] += 1

    async def _timer(self):
        """Resend the HELLO until acknowledged, and go back N when ACKs stop making progress."""
        await self.send_hello()
        while True:
            timeout = self.config["retransmit_ms"]
            if not self.hello_acked:
                since = self.hello_sent_at
            elif self.ring.sent:
                since = self.progress_at
            else:
                await compat.sleep_ms(timeout)
                continue
            remaining = timeout - compat.ticks_diff(compat.ticks_ms(), since)
            if remaining > 0:
                await compat.sleep_ms(remaining)
                continue
            if not self.hello_acked:
                await self.send_hello()
            else:
                self._go_back()
                self.counters["retransmit_rounds"] += 1

    def _go_back(self):
        self.ring.rewind()
        self.progress_at = compat.ticks_ms()
        self.wake.set()

    async def _heartbeat(self):
        # Short naps rather than one long sleep, so a heartbeat_ms set_config applies at once.
        last = compat.ticks_ms()
        while True:
            interval = self.config["heartbeat_ms"]
            remaining = interval - compat.ticks_diff(compat.ticks_ms(), last)
            if not interval or remaining > 0:
                await compat.sleep_ms(
                    min(remaining, HEARTBEAT_NAP_MS) if interval else HEARTBEAT_NAP_MS
                )
                continue
            last = compat.ticks_ms()
            if self.hello_acked:
                payload = protocol.heartbeat_payload(self.uptime_ms(), len(self.ring))
                await self._send(protocol.HEARTBEAT, payload)

    # -- receiving -----------------------------------------------------------------------------

    async def _receive(self):
        while True:
            try:
                chunk = await self.link.read()
            except LinkClosed as error:
                if not self.link.reopens:
                    self.finish("link_lost")
                    return
                await self._reconnect(error)
                continue
            if self._escape_requested(chunk):
                self.finish("repl")
                return
            for item in self.decoder.feed(chunk):
                if isinstance(item, protocol.ProtocolError):
                    await self._on_bad_frame(item)
                else:
                    await self._on_frame(item)

    async def _reconnect(self, error):
        """The tty went away: reopen it (the node keeps sampling meanwhile), then HELLO again."""
        self.link_up = False
        self.hello_acked = False
        if self.echo is not None:
            self.echo("[{}] link lost ({}), reopening".format(self.config["device"], error))
        self.link.close()
        while True:
            try:
                await self.link.open()
                break
            except OSError:
                await compat.sleep_ms(200)
        self.decoder.reset()
        self.link_up = True
        await self._send_raw(b"\x00")  # end any partial frame the gateway holds
        await self.send_hello()

    def _escape_requested(self, chunk):
        window = self.escape_tail + chunk
        self.escape_tail = window[-(len(REPL_ESCAPE) - 1) :]
        return REPL_ESCAPE in window

    async def _on_bad_frame(self, error):
        self.counters["bad_frames"] += 1
        if error.code == "version":
            await self._send_nack(protocol.NACK_UNSUPPORTED_VERSION, 0, error.reason)
        elif error.code == "type":
            await self._send_nack(protocol.NACK_UNKNOWN_TYPE, 0, error.reason)

    async def _on_frame(self, frame):
        kind = frame.type
        if kind == protocol.ACK:
            await self._on_ack(frame)
        elif kind == protocol.NACK:
            await self._on_nack(frame)
        elif kind == protocol.CMD:
            await self._on_command(frame)
        else:  # a device-to-gateway type coming back: a loop or a confused peer, not answered
            self.counters["unexpected"] += 1

    async def _on_ack(self, frame):
        fresh = frame.flags & protocol.FLAG_FRESH
        if not self.hello_acked:
            if not fresh and self.ring.index_of(frame.seq) >= len(self.ring):
                # An ACK of a frame this boot never sent is stale (sent to the boot before a
                # reboot): taking it as the HELLO-ACK would stop the HELLO from repeating.
                self.counters["unexpected"] += 1
                return
            self.hello_acked = True
            if not fresh and not await self._apply_ack(frame.seq, True):
                return
            # Whatever the gateway holds, resend from the oldest unacknowledged frame.
            self._go_back()
            return
        if not fresh:
            await self._apply_ack(frame.seq, False)

    async def _apply_ack(self, seq, answers_hello):
        """Release frames up to seq; False when the node had to start a new session instead."""
        index = self.ring.index_of(seq)
        if index < -1:
            # The gateway's last frame is older than any kept. A HELLO-ACK says so for sure:
            # those frames were dropped here, so carry on as a new session it can accept.
            if answers_hello and self.ring.dropped_in_session:
                lost = seq_before(self.ring.first_seq)
                await self._new_session(f"gateway has seq {seq}, up to {lost} dropped here")
                return False
            return True  # an older cumulative ACK overtaken by a newer one
        if index >= len(self.ring):
            self.counters["unexpected"] += 1
            self.log(
                protocol.LOG_WARNING,
                f"ACK {seq} for a frame never sent (newest {self.ring.last_seq()})",
            )
            return True
        if self.ring.ack(seq):
            self.progress_at = compat.ticks_ms()
            self.room.set()
            self.wake.set()
        return True

    async def _new_session(self, reason):
        """Frames the gateway still expects are gone: announce a new boot id, number from 0."""
        self.boot = random_boot_id()
        self.ring.renumber(0)
        self.hello_acked = False
        self.counters["sessions"] += 1
        self.log(protocol.LOG_WARNING, f"new session {self.boot:08x}: {reason}")
        await self.send_hello()

    async def _on_nack(self, frame):
        self.counters["nacks"] += 1
        try:
            code, expected, reason = protocol.parse_nack(frame.payload)
        except protocol.ProtocolError:
            self.counters["bad_frames"] += 1
            return
        if code == protocol.NACK_NEED_HELLO:
            if self.hello_acked:  # while a HELLO is pending the timer resends it anyway
                self.hello_acked = False
                await self.send_hello()
        elif code == protocol.NACK_OUT_OF_ORDER:
            await self._on_out_of_order(expected)
        elif self.echo is not None:  # BAD_PAYLOAD, BUSY, ...: the timer covers a resend
            self.echo(
                "[{}] NACK code {} from the gateway: {}".format(self.config["device"], code, reason)
            )

    async def _on_out_of_order(self, expected):
        """Everything before expected was accepted (the gateway sends this NACK right after the
        ACK covering it): release it, then resend from expected, the new oldest."""
        if not self.hello_acked:
            return
        index = self.ring.index_of(expected)
        if index < 0:
            if self.ring.dropped_in_session:
                await self._new_session(f"gateway expects seq {expected}, dropped here")
            return
        if index > len(self.ring):
            return  # expects a frame not made yet: nothing to resend
        await self._apply_ack(seq_before(expected), False)
        # Every frame in flight behind the gap draws the same NACK; go back once per gap and
        # leave repeats to the retransmit timer.
        now = compat.ticks_ms()
        last = self.last_nack
        timeout = self.config["retransmit_ms"]
        if last is not None and last[0] == expected and compat.ticks_diff(now, last[1]) < timeout:
            return
        self.last_nack = (expected, now)
        self._go_back()

    # -- commands ------------------------------------------------------------------------------

    async def _on_command(self, frame):
        try:
            request_id, name, args = protocol.parse_cmd(frame.payload)
        except protocol.ProtocolError as error:
            if len(frame.payload) < 3:  # not even a request id to answer
                await self._send_nack(protocol.NACK_BAD_PAYLOAD, 0, error.reason)
                return
            request_id = frame.payload[0] | frame.payload[1] << 8
            await self._respond(request_id, protocol.NACK_BAD_PAYLOAD, {"error": error.reason})
            return
        status, result = self._run_command(name, args)
        await self._respond(request_id, status, result)
        if name == "reboot" and status == protocol.STATUS_OK:
            await compat.sleep_ms(REBOOT_DELAY_MS)  # let the RESP leave the UART
            self.finish("reboot")

    def _run_command(self, name, args):
        """(status, result) of a command. node_commands is loaded for it and let go again, with
        config.py that set_rate and set_config load: neither is in the heap while the RESP is
        encoded, nor between commands. A heap too full for them (a full ring in a small
        heap) answers BUSY, the command not applied, and the node runs on."""
        try:
            import node_commands

            return node_commands.run(self, name, args)
        except MemoryError:
            return protocol.NACK_BUSY, {"error": "no memory for this command now; try again"}
        finally:
            sys.modules.pop("node_commands", None)
            sys.modules.pop("config", None)

    async def _respond(self, request_id, status, result):
        payload = protocol.resp_payload(request_id, status, result)
        if len(payload) > protocol.MAX_PAYLOAD:
            error = {"error": f"result of {len(payload)} bytes does not fit in a frame"}
            payload = protocol.resp_payload(request_id, protocol.NACK_TOO_LARGE, error)
        await self._send(protocol.RESP, payload)


def seq_before(seq):
    return protocol.seq_add(seq, -1)


def print_error(error):
    """A traceback on stderr on either runtime."""
    if hasattr(sys, "print_exception"):
        sys.print_exception(error)
    else:
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__)
