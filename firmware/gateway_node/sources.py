"""UART sources: line devices (every line format of the Pi) and COBS devices (protocol v1).

Both read through the sensor node's link module (machine.UART on a board, a tty on a host)
and hand records to their Ingest. A line source stops reading while a sink pushes back; a
COBS source answers BUSY then, and ACKs DATA only once its readings are stored (delivered,
or written to the flash buffer), so a reset never loses an acknowledged reading.
"""

from link import LinkClosed, make_link

from gateway.core import compat, protocol

REOPEN_MS = 200
PAUSE_MS = 20  # a line source's wait while a sink pushes back


def link_spec(spec):
    if "uart" in spec:
        uart = dict(spec["uart"])
        uart["type"] = "uart"
        return uart
    return {"type": "path", "path": spec["port"]}


class Source:
    def __init__(self, spec, ingest, log):
        self.name = spec["name"]
        self.spec = spec
        self.ingest = ingest
        self.log = log
        self.link = make_link(link_spec(spec))
        self.counters = {"bytes": 0, "connects": 0}

    async def open(self):
        while True:
            try:
                await self.link.open()
            except OSError:
                await compat.sleep_ms(REOPEN_MS)
                continue
            self.counters["connects"] += 1
            self.connected()
            return

    async def run(self):
        try:
            await self._read_until_gone()
        finally:
            self.link.close()  # a restarted task opens it afresh
            self.disconnected()

    async def _read_until_gone(self):
        await self.open()
        while True:
            await self.before_read()
            try:
                chunk = await self.link.read()
            except LinkClosed as error:
                self.log(30, f"source {self.name}: link lost ({error}), reopening")
                self.link.close()
                self.disconnected()
                if not self.link.reopens:
                    return
                await self.open()
                continue
            self.counters["bytes"] += len(chunk)
            self.receive(chunk)
            await self.after_read()

    def connected(self):
        pass

    def disconnected(self):
        pass

    async def before_read(self):
        pass

    async def after_read(self):
        pass

    def stats(self):
        stats = dict(self.counters)
        stats.update(self.ingest.counters)
        return stats


class LineSource(Source):
    """Splits on LF, strips one CR, skips empty lines; an overlong line is dropped, counted."""

    def __init__(self, spec, ingest, log):
        super().__init__(spec, ingest, log)
        self.max_line = spec.get("max_line") or 4096
        self.partial = b""
        self.discarding = False
        self.counters["oversize"] = 0
        self.counters["bad_utf8"] = 0

    def disconnected(self):
        self.partial = b""
        self.discarding = False

    async def before_read(self):
        while not self.ingest.room():
            await compat.sleep_ms(PAUSE_MS)  # the bytes wait in the UART: backpressure

    def receive(self, chunk):
        pieces = (self.partial + chunk).split(b"\n") if self.partial else chunk.split(b"\n")
        self.partial = pieces.pop()
        for raw in pieces:
            if self.discarding:  # the tail of an overlong line
                self.discarding = False
                continue
            self.line(raw)
        if len(self.partial) > self.max_line:
            self.counters["oversize"] += 1
            self.partial = b""
            self.discarding = True

    def line(self, raw):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return
        if len(raw) > self.max_line:
            self.counters["oversize"] += 1
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeError:
            self.counters["bad_utf8"] += 1
            return
        self.ingest.on_line(text)


class CobsSource(Source):
    """The gateway end of protocol v1 (docs/protocol.md), reduced to what a board needs:
    HELLO → FRESH or resuming ACK, in-order DATA with duplicates dropped and gaps NACKed
    (OUT_OF_ORDER), BUSY while a sink pushes back, cumulative ACKs after settle(); LOG text
    goes to the log ring. `memory` (device → [boot, accepted seq, oldest]) outlives a
    reconnect, so a device that kept its ring resumes without duplicates."""

    def __init__(self, spec, ingest, log, settle):
        super().__init__(spec, ingest, log)
        self.settle = settle
        self.decoder = protocol.FrameDecoder()
        self.memory = {}
        self.entry = None
        self.hello = None
        self.fields = []
        self.acked = None
        self.unacked = 0
        self.ack_due = None
        self.gap = None
        self.last_nack = {}
        self.out = bytearray()
        self.blocked = 0  # ingest.blocked as of the last ACK
        self.ack_wanted = compat.Event()
        for key in ("frames", "bad_frames", "duplicates", "gaps", "busy", "hellos", "acks"):
            self.counters[key] = 0

    def connected(self):
        self.entry = None
        self.hello = None
        self.decoder.reset()
        self.ack_due = None
        self.gap = None
        self.last_nack = {}
        self.out = bytearray(protocol.cobs.DELIMITER)  # ends any half frame the device holds

    def disconnected(self):
        self.entry = None

    async def after_read(self):
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            await self._write(data)
        if self.ack_due is not None:
            self.ack_wanted.set()

    async def _write(self, data):
        try:
            await self.link.write(data)
        except LinkClosed:
            pass  # the reader finds out and reopens

    async def run(self):
        acks = compat.create_task(self._send_acks())
        try:
            await super().run()
        finally:
            acks.cancel()

    # -- frames in ---------------------------------------------------------------------

    def receive(self, chunk):
        for item in self.decoder.feed(chunk):
            if isinstance(item, protocol.ProtocolError):
                self.counters["bad_frames"] += 1
                continue
            self.counters["frames"] += 1
            kind = item.type
            if kind == protocol.HELLO:
                self._on_hello(item)
            elif kind == protocol.DATA:
                self._on_data(item)
            elif kind == protocol.LOG:
                self._on_log(item)
            elif kind == protocol.HEARTBEAT and self.entry is None:
                self._nack_limited(protocol.NACK_NEED_HELLO, 0, "no HELLO on this connection")

    def _on_hello(self, frame):
        try:
            hello = protocol.parse_hello(frame.payload)
        except protocol.ProtocolError as error:
            self._nack(protocol.NACK_BAD_PAYLOAD, 0, "HELLO: " + error.reason)
            return
        if protocol.VERSION not in hello["proto"]:
            self._nack(protocol.NACK_UNSUPPORTED_VERSION, 0, "gateway speaks [1]")
            return
        self.counters["hellos"] += 1
        device, boot = hello["device"], hello["boot"]
        entry = self.memory.get(device)
        if entry is None or entry[0] != boot:
            if entry is not None:
                self.log(30, f"device {device} rebooted (boot {boot:08x})")
            entry = self.memory[device] = [boot, None, hello["oldest"]]
        elif entry[1] is None:
            entry[2] = hello["oldest"]
        if self.hello is None or self.hello["boot"] != boot:
            self.log(20, f"source {self.name}: device {device} connected, boot {boot:08x}")
        self.entry = entry
        self.hello = hello
        self.fields = [(stream["name"], stream["fields"]) for stream in hello["streams"]]
        self.acked = entry[1]
        self.ack_due = compat.ticks_ms()

    def _on_data(self, frame):
        entry = self.entry
        if entry is None:
            self._nack_limited(protocol.NACK_NEED_HELLO, 0, "no HELLO on this connection")
            return
        accepted = entry[1]
        expected = entry[2] if accepted is None else protocol.seq_add(accepted, 1)
        ahead = protocol.seq_diff(frame.seq, expected)
        if ahead < 0:
            self.counters["duplicates"] += 1
            if accepted is not None:
                self.ack_due = compat.ticks_ms()  # our ACK was lost: say it again
            return
        if ahead > 0:
            self._on_gap(expected)
            return
        if not self.ingest.room():
            self.counters["busy"] += 1
            self._nack_limited(protocol.NACK_BUSY, 0, "gateway buffer full")
            return
        if accepted is None:
            self.acked = protocol.seq_add(frame.seq, -1)
        entry[1] = frame.seq
        self.last_nack = {}
        self.unacked += 1
        now = compat.ticks_ms()
        if self.unacked >= protocol.ACK_EVERY_FRAMES:
            self.ack_due = now
        elif self.ack_due is None:
            self.ack_due = compat.ticks_add(now, protocol.ACK_INTERVAL_MS)
        self._deliver(frame)

    def _deliver(self, frame):
        # A bad payload in an accepted frame is still ACKed: refusing it would stall the
        # device's window behind it for ever.
        try:
            records = protocol.parse_data(frame.payload)
            protocol.check_data(records, self.hello["streams"])
        except protocol.ProtocolError as error:
            self._nack(protocol.NACK_BAD_PAYLOAD, 0, "DATA: " + error.reason)
            return
        device = self.hello["device"]
        for index, dts, values in records:
            name, fields = self.fields[index]
            data = {}
            for field, value in zip(fields, values):
                data[field] = value if value - value == 0 else None  # NaN, inf: no value
            self.ingest.on_record(data, name, dts, device)

    def _on_gap(self, expected):
        self.counters["gaps"] += 1
        if not self._may_nack(protocol.NACK_OUT_OF_ORDER, expected):
            return
        if self.entry[1] is None:
            self._nack(protocol.NACK_OUT_OF_ORDER, expected, "")
            return
        self.gap = expected  # sent right after the ACK covering expected - 1
        self.ack_due = compat.ticks_ms()

    def _on_log(self, frame):
        try:
            level, text = protocol.parse_log(frame.payload)
        except protocol.ProtocolError:
            return
        device = self.hello["device"] if self.hello else self.name
        self.log(level or 20, f"device {device}: {text}")

    # -- frames out --------------------------------------------------------------------

    def _nack(self, code, expected, reason):
        self.out += protocol.encode_frame(
            protocol.NACK, 0, protocol.nack_payload(code, expected, reason)
        )

    def _may_nack(self, code, expected):
        now = compat.ticks_ms()
        last = self.last_nack.get(code)
        recent = (
            last is not None and compat.ticks_diff(now, last[1]) < protocol.RETRANSMIT_TIMEOUT_MS
        )
        if recent and last[0] == expected:
            return False
        self.last_nack[code] = (expected, now)
        return True

    def _nack_limited(self, code, expected, reason):
        if self._may_nack(code, expected):
            self._nack(code, expected, reason)

    async def _send_acks(self):
        while True:
            due = self.ack_due
            if due is None:
                self.ack_wanted.clear()
                await self.ack_wanted.wait()
                continue
            wait = compat.ticks_diff(due, compat.ticks_ms())
            if wait > 0:
                await compat.sleep_ms(wait)
                continue
            await self._ack()

    async def _ack(self):
        self.ack_due = None
        self.unacked = 0
        gap, self.gap = self.gap, None
        entry = self.entry
        if entry is None:
            return
        covers = entry[1]
        if covers is None:
            await self._write(
                protocol.encode_frame(protocol.ACK, protocol.FRESH_SEQ, flags=protocol.FLAG_FRESH)
            )
            return
        stored = await self.settle()
        if self.entry is not entry:
            return  # a new HELLO meanwhile: this ACK belongs to the previous boot
        blocked = self.ingest.blocked
        if blocked != self.blocked:
            # A "block" sink refused readings since the last ACK: take the resent frames
            # again, so nothing is lost (what was kept then comes twice: at least once).
            # A drop policy's refusals are drops, counted, and are not taken again.
            self.blocked = blocked
            entry[1] = self.acked
            return
        if not stored:
            # Held in RAM, not yet on flash ("block" at its bound, a failed write): no ACK,
            # and no rollback, which would take the device's resent frames a second time.
            # Each resend is a duplicate that asks for this ACK again.
            return
        frame = protocol.encode_frame(protocol.ACK, covers)
        if gap is not None and gap == protocol.seq_add(covers, 1):
            frame += protocol.encode_frame(
                protocol.NACK, 0, protocol.nack_payload(protocol.NACK_OUT_OF_ORDER, gap)
            )
        await self._write(frame)
        self.acked = covers
        self.counters["acks"] += 1
