"""The device conformance suite: does a device on a port speak wire protocol v1 (docs/protocol.md)?

The suite plays the gateway, strictly: it answers HELLO and DATA as §9 says, and in each
check bends one thing (withholds ACKs, asks for a HELLO again, reboots the device, sends
corrupt frames) to see the device do what the contract says. Every failure names what was
expected and what was seen, with the frames in hex.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from gateway.core import protocol
from host_tools.report import CheckFailed, CheckResult, run_check
from host_tools.wire import Channel, Received, describe_frame, hex_bytes, resp_for

RETRANSMIT = protocol.RETRANSMIT_TIMEOUT_MS / 1000
CMD_TIMEOUT = protocol.CMD_TIMEOUT_MS / 1000
HELLO_WAIT = 4 * RETRANSMIT  # a HELLO (or its repeat) is due within one timeout; slack for I/O
RESEND_WAIT = 4 * RETRANSMIT  # the go-back-N resend is due one timeout after ACKs stop
REBOOT_WAIT = 10.0  # seconds a rebooting board gets to say HELLO again
DATA_WAIT = 5.0  # seconds until the first DATA after a HELLO-ACK
QUIET = 0.5  # seconds to listen for answers that must not come
SOAK_ACK_DROP = 7  # during the soak every 7th ACK is "lost" on the way


class DeviceState:
    """What the gateway side knows: the HELLO, the boot, and the last DATA seq accepted."""

    def __init__(self) -> None:
        self.hello: dict[str, Any] | None = None
        self.boot: int | None = None
        self.accepted: int | None = None  # None: nothing accepted since the FRESH HELLO-ACK
        self.expected = 0  # the next DATA seq to accept
        self.readings: list[tuple[int, int, list[float]]] = []
        self.sent_payloads: dict[int, bytes] = {}  # seq → payload of DATA seen this session
        self.counters: Counter = Counter()


class DeviceSuite:
    """Runs every check in order against the device on `channel`; results() lists them."""

    def __init__(
        self,
        channel: Channel,
        soak_seconds: float = 60.0,
        log: Callable = print,
        only: list[str] | None = None,
    ):
        self.channel = channel
        self.only = only
        self.soak_seconds = soak_seconds
        self.log = log
        self.state = DeviceState()
        self.acking = True
        self.ack_filter: Callable[[int], bool] | None = None  # False: this ACK is "lost"
        self.bad: list[Received] = []  # frame errors from the device, for the framing check

    # -- the gateway's part -------------------------------------------------------------------

    def handle(self, item: Received) -> None:
        """Answer one item as a strict gateway would (HELLO-ACK, in-order ACK, gap NACK)."""
        if item.error is not None:
            self.bad.append(item)
            return
        frame = item.frame
        if frame.type == protocol.HELLO:
            self._greet(item)
        elif frame.type == protocol.DATA:
            self._data(item)
        elif frame.type == protocol.HEARTBEAT and self.state.hello is None:
            self.channel.nack(protocol.NACK_NEED_HELLO)
        self.state.counters[protocol.TYPE_NAMES.get(frame.type, "other")] += 1

    def _greet(self, item: Received) -> None:
        hello = _parse_hello(item)
        state = self.state
        if state.boot == hello["boot"] and state.hello is not None:
            if state.accepted is None:
                state.expected = hello["oldest"]
                self.channel.ack_fresh()
            else:
                self.channel.ack(state.accepted)
            state.hello = hello
            return
        state.hello, state.boot = hello, hello["boot"]
        state.accepted, state.expected = None, hello["oldest"]
        state.sent_payloads = {}
        self.channel.ack_fresh()

    def _data(self, item: Received) -> None:
        state, frame = self.state, item.frame
        if state.hello is None:
            self.channel.nack(protocol.NACK_NEED_HELLO)
            return
        ahead = protocol.seq_diff(frame.seq, state.expected)
        if ahead < 0:
            state.counters["duplicates"] += 1
            if state.accepted is not None and self.acking:
                self.channel.ack(state.accepted)
            return
        if ahead > 0:
            state.counters["gaps"] += 1
            self.channel.nack(protocol.NACK_OUT_OF_ORDER, state.expected)
            return
        state.sent_payloads[frame.seq] = bytes(frame.payload)
        try:
            records = protocol.parse_data(frame.payload)
            protocol.check_data(records, state.hello["streams"])
        except protocol.ProtocolError as error:
            raise CheckFailed(
                "DATA records that fit the HELLO's streams", error.reason, [item.hex()]
            ) from None
        state.readings.extend(records)
        state.accepted, state.expected = frame.seq, protocol.seq_add(frame.seq, 1)
        if self.acking and (self.ack_filter is None or self.ack_filter(frame.seq)):
            self.channel.ack(frame.seq)

    def listen(self, seconds: float) -> None:
        self.channel.collect(seconds, self.handle)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float) -> Received | None:
        """The first item matching predicate; everything before it is handled as usual."""
        return self.channel.expect(predicate, timeout, self.handle)

    def greeted(self, timeout: float = HELLO_WAIT) -> None:
        """Make sure the device is in session with us (asking for a HELLO when it is not)."""
        if self.state.hello is not None:
            return
        self.channel.nack(protocol.NACK_NEED_HELLO)
        item = self.wait_for(lambda item: item.is_type(protocol.HELLO), timeout)
        if item is None:
            raise CheckFailed("a HELLO from the device", f"none within {timeout:g} s", [])
        self.handle(item)

    def recent(self, count: int = 6) -> list[str]:
        """The last frames received, as described hex lines (for a failure message)."""
        items = self.channel.history[-count:]
        return [f"{_describe(item)}: {item.hex()}" for item in items]

    # -- the checks ---------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        return ["framing"] + [name for name, _ in cls(None).checks()]  # type: ignore[arg-type]

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("hello", self.check_hello),
            ("hello_repeat", self.check_hello_repeat),
            ("data", self.check_data),
            ("go_back_n", self.check_go_back_n),
            ("out_of_order", self.check_out_of_order),
            ("need_hello", self.check_need_hello),
            ("commands", self.check_commands),
            ("corrupt_input", self.check_corrupt_input),
            ("reboot", self.check_reboot),
            ("soak", self.check_soak),
        ]

    def run(self) -> list[CheckResult]:
        results = []
        for name, check in self.checks():
            if self.only and name not in self.only:
                continue
            self.log(f"running {name} ...")
            results.append(run_check(name, check))
            self.acking, self.ack_filter = True, None
        self.listen(QUIET)
        results.insert(0, run_check("framing", self.check_framing))
        return results

    def check_framing(self) -> str:
        """Every frame the device sent during the run: COBS, CRC, 9..512 bytes, known type."""
        counters = self.channel.splitter.counters
        if self.bad:
            first = self.bad[0]
            kinds = ", ".join(f"{code} {count}" for code, count in counters.items() if count)
            raise CheckFailed(
                "only valid frames (COBS, CRC-32, at most 512 bytes decoded, version 1, "
                "a known type)",
                f"{len(self.bad)} bad ({kinds}); the first: {first.error}",
                [item.hex() for item in self.bad[:3]],
            )
        return f"{counters['frames']} frames, all valid"

    def check_hello(self) -> str:
        """The HELLO parses, names protocol 1, and repeats until acknowledged."""
        self.state.hello = None
        self.channel.nack(protocol.NACK_NEED_HELLO)  # a device already in session says HELLO
        item = self.channel.expect(
            lambda item: item.is_type(protocol.HELLO), HELLO_WAIT, self._data_without_ack
        )
        if item is None:
            seen = "; ".join(self.recent()) or "nothing"
            raise CheckFailed(f"a HELLO within {HELLO_WAIT:g} s (or after NACK NEED_HELLO)", seen)
        hello = _parse_hello(item)
        if protocol.VERSION not in hello["proto"]:
            raise CheckFailed("proto listing 1", f"proto {hello['proto']}", [item.hex()])
        if item.frame.seq != 0:
            raise CheckFailed("HELLO header seq 0", f"seq {item.frame.seq}", [item.hex()])
        self._pending_hello = item
        streams = ", ".join(stream["name"] for stream in hello["streams"]) or "none"
        return (
            f"device {hello['device']} fw {hello['fw']} boot {hello['boot']:08x}, streams {streams}"
        )

    def check_hello_repeat(self) -> str:
        """Unanswered, the HELLO comes again (same boot id) within the retransmit timeout."""
        first = getattr(self, "_pending_hello", None)
        if first is None:
            raise CheckFailed("a HELLO (the hello check)", "none")
        boot = _parse_hello(first)["boot"]
        again = self.channel.expect(
            lambda item: item.is_type(protocol.HELLO), HELLO_WAIT, self._data_without_ack
        )
        if again is None:
            raise CheckFailed(
                f"the HELLO repeated within {HELLO_WAIT:g} s while unanswered",
                "no second HELLO",
                [first.hex()],
            )
        hello = _parse_hello(again)
        if hello["boot"] != boot:
            raise CheckFailed(
                f"the repeated HELLO with the same boot id {boot:08x}",
                f"boot {hello['boot']:08x}",
                [first.hex(), again.hex()],
            )
        waited = again.at - first.at
        self.handle(again)  # FRESH HELLO-ACK: the session starts
        return f"repeated after {waited:.2f} s"

    def check_data(self) -> str:
        """After the FRESH HELLO-ACK: DATA from the HELLO's oldest, in order, fitting the HELLO."""
        self.greeted()
        oldest = self.state.expected
        first = self.wait_for(lambda item: item.is_type(protocol.DATA), DATA_WAIT)
        if first is None:
            raise CheckFailed(
                f"DATA within {DATA_WAIT:g} s of the HELLO-ACK", "none", self.recent()
            )
        if first.frame.seq != oldest:
            raise CheckFailed(
                f"the first DATA with seq {oldest} (the HELLO's oldest)",
                f"seq {first.frame.seq}",
                [first.hex()],
            )
        self.handle(first)
        before = len(self.state.readings)
        self.listen(1.0)
        gaps = self.state.counters["gaps"]
        if gaps:
            raise CheckFailed("consecutive DATA seqs", f"{gaps} gaps", self.recent())
        count = len(self.state.readings) - before
        return f"first seq {oldest}; {count} more readings in 1 s, in order"

    def check_go_back_n(self) -> str:
        """ACKs stop: the device resends every unacknowledged frame, same seq and payload,
        flagged RETRANSMIT, one timeout later; ACKs resume: it carries on without a gap."""
        self.greeted()
        self.listen(0.2)
        self.acking = False
        stopped = time.monotonic()
        acked = self.state.accepted
        resent: list[Received] = []
        deadline = time.monotonic() + RESEND_WAIT + 1.0
        while time.monotonic() < deadline:
            item = self.channel.take(max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            if item.is_type(protocol.DATA) and item.frame.flags & protocol.FLAG_RETRANSMIT:
                resent.append(item)
                if len(resent) >= 2 or self._newest_is(item.frame.seq):
                    break
                continue
            self.handle(item)
        unacked = self._unacked_after(acked)
        if not unacked:
            raise CheckFailed(
                "DATA frames sent while ACKs were withheld", "no DATA at all", self.recent()
            )
        if not resent:
            raise CheckFailed(
                f"seq {unacked[0]} resent with RETRANSMIT within {RESEND_WAIT:g} s of the ACKs "
                f"stopping (frames {unacked[0]}..{unacked[-1]} unacknowledged)",
                "no resend; " + "; ".join(self.recent(4)),
            )
        first = resent[0]
        payload = self.state.sent_payloads.get(unacked[0])
        if first.frame.seq != unacked[0] or bytes(first.frame.payload) != payload:
            other = [
                seq
                for seq, sent in self.state.sent_payloads.items()
                if sent == bytes(first.frame.payload)
            ]
            seen = f"RETRANSMIT DATA seq {first.frame.seq}"
            if other and other[0] != first.frame.seq:
                seen += f", the payload first sent as seq {other[0]} under a new number"
            raise CheckFailed(
                f"the resend to start at seq {unacked[0]} with the payload first sent under it",
                seen,
                [first.hex()]
                + (
                    [f"payload first sent as seq {unacked[0]}: {hex_bytes(payload)}"]
                    if payload
                    else []
                ),
            )
        self.acking = True
        for item in resent:
            self.handle(item)
        before = self.state.accepted
        self.listen(RETRANSMIT * 2)
        if self.state.counters["gaps"]:
            raise CheckFailed("no gap once ACKs resumed", "a gap", self.recent())
        return (
            f"{len(unacked)} unacknowledged frames; resend from seq {unacked[0]} "
            f"{first.at - stopped:.2f} s after the ACKs stopped; accepted up to {before} then "
            f"{self.state.accepted}"
        )

    def check_out_of_order(self) -> str:
        """A frame "lost" on the way: the next draws NACK OUT_OF_ORDER; the device resends
        from the expected seq."""
        self.greeted()
        first = self.wait_for(lambda item: item.is_type(protocol.DATA), DATA_WAIT)
        if first is None:
            raise CheckFailed("DATA", "none", self.recent())
        if protocol.seq_diff(first.frame.seq, self.state.expected) != 0:
            self.handle(first)
            first = self.wait_for(lambda item: item.is_type(protocol.DATA), DATA_WAIT)
            if first is None:
                raise CheckFailed("DATA", "none", self.recent())
        lost = first.frame.seq  # dropped here, as if corrupted on the wire
        self.state.sent_payloads[lost] = bytes(first.frame.payload)
        nacked = None
        deadline = time.monotonic() + DATA_WAIT
        while time.monotonic() < deadline:
            item = self.channel.take(deadline - time.monotonic())
            if item is None:
                break
            if item.is_type(protocol.DATA) and item.frame.seq == lost and nacked is not None:
                if bytes(item.frame.payload) != self.state.sent_payloads[lost]:
                    raise CheckFailed(
                        f"seq {lost} resent with its first payload", "another payload", [item.hex()]
                    )
                self.handle(item)
                self.listen(RETRANSMIT)
                return f"seq {lost} resent {item.at - nacked:.2f} s after NACK OUT_OF_ORDER"
            if item.is_type(protocol.DATA) and nacked is None and item.frame.seq != lost:
                self.channel.nack(protocol.NACK_OUT_OF_ORDER, lost)
                nacked = time.monotonic()
                continue
            if item.is_type(protocol.DATA):
                continue  # more frames behind the gap; the device answers the NACK
            self.handle(item)
        raise CheckFailed(
            f"seq {lost} resent after NACK OUT_OF_ORDER expected {lost}",
            "no resend" if nacked else "no DATA after the lost frame",
            self.recent(),
        )

    def check_need_hello(self) -> str:
        """NACK NEED_HELLO: a HELLO with the same boot id; ACKed with our last seq, the device
        carries on from the next one (its ring kept)."""
        self.greeted()
        self.listen(0.3)
        boot, accepted = self.state.boot, self.state.accepted
        self.channel.nack(protocol.NACK_NEED_HELLO)
        item = self.channel.expect(
            lambda item: item.is_type(protocol.HELLO), HELLO_WAIT, self._data_without_ack
        )
        if item is None:
            raise CheckFailed(
                f"a HELLO within {HELLO_WAIT:g} s of NACK NEED_HELLO", "none", self.recent()
            )
        hello = _parse_hello(item)
        if hello["boot"] != boot:
            raise CheckFailed(
                f"the same boot id {boot:08x} (no reboot happened)",
                f"boot {hello['boot']:08x}",
                [item.hex()],
            )
        self.handle(item)  # ACK with our last accepted seq
        self.listen(RETRANSMIT * 2)
        if self.state.counters["gaps"]:
            raise CheckFailed(
                f"DATA from seq {protocol.seq_add(accepted or 0, 1)} on", "a gap", self.recent()
            )
        return f"same boot {boot:08x}; resumed after seq {accepted}, now at {self.state.accepted}"

    def _data_without_ack(self, item: Received) -> None:
        """While the HELLO is awaited, DATA is neither accepted nor acknowledged."""
        if item.error is not None:
            self.bad.append(item)

    def check_commands(self) -> str:
        """Each command answered by one RESP with its request id and the status §10 gives."""
        self.greeted()
        hello = self.state.hello
        stream = hello["streams"][0] if hello["streams"] else None
        cases: list[tuple[str, dict[str, Any], int]] = [
            ("ping", {}, protocol.STATUS_OK),
            ("info", {}, protocol.STATUS_OK),
            ("info", {"section": "no-such-section"}, protocol.NACK_BAD_ARGUMENTS),
            ("set_rate", {"stream": "\x01no such stream", "rate": 1}, protocol.NACK_BAD_ARGUMENTS),
            ("set_config", {}, protocol.NACK_BAD_ARGUMENTS),
            ("no_such_command", {}, protocol.NACK_UNKNOWN_COMMAND),
        ]
        if stream is not None:
            cases.insert(3, ("set_rate", {"stream": stream["name"], "rate": stream["rate"]}, 0))
        answered = []
        for name, args, status in cases:
            result = self.call(name, args, status)
            if status == protocol.STATUS_OK:
                self._check_result(name, args, result)
            answered.append(name)
        self._bad_json_command()
        self._short_command()
        return "answered " + ", ".join(answered) + ", bad JSON and a short CMD"

    def call(self, name: str, args: dict[str, Any], status: int) -> Any:
        """Send a CMD; the RESP with its request id and the expected status, else fail."""
        request_id, sent = self.channel.command(name, args)
        wrong: list[Received] = []

        def other(item: Received) -> None:
            if item.is_type(protocol.RESP):
                wrong.append(item)
            self.handle(item)

        item = self.channel.expect(resp_for(request_id), CMD_TIMEOUT, other)
        if item is None:
            seen = "no RESP"
            if wrong:
                answered = protocol.parse_resp(wrong[0].frame.payload)[0]
                seen = f"a RESP to request {answered} instead"
            raise CheckFailed(
                f"{name}: a RESP to request {request_id} within {CMD_TIMEOUT:g} s",
                seen,
                [f"sent {hex_bytes(sent)}"] + [f"got {item.hex()}" for item in wrong[:2]],
            )
        _, got, result = protocol.parse_resp(item.frame.payload)
        if got != status:
            raise CheckFailed(
                f"{name} {args}: status {_status(status)}",
                f"status {_status(got)}, result {result}",
                [f"sent {hex_bytes(sent)}", f"got {item.hex()}"],
            )
        return result

    def _check_result(self, name: str, args: dict[str, Any], result: Any) -> None:
        hello = self.state.hello
        if name == "ping" and (not isinstance(result, dict) or result.get("pong") is not True):
            raise CheckFailed('ping: {"pong": true, "uptime_ms": ...}', repr(result))
        if name == "info" and not args:
            if not isinstance(result, dict) or result.get("device") != hello["device"]:
                raise CheckFailed(f"info: the HELLO's device {hello['device']!r}", repr(result))
            if result.get("boot") != hello["boot"] or "uptime_ms" not in result:
                raise CheckFailed("info: the HELLO's boot id and uptime_ms", repr(result))
        if name == "set_rate" and (
            not isinstance(result, dict)
            or result.get("stream") != args["stream"]
            or "rate" not in result
        ):
            raise CheckFailed(
                f'set_rate: {{"stream": {args["stream"]!r}, "rate": ...}}', repr(result)
            )

    def _bad_json_command(self) -> None:
        request_id = 0xBEEF
        payload = request_id.to_bytes(2, "little") + b'{"cmd": "ping", "args": '
        sent = self.channel.send(protocol.CMD, payload=payload)
        item = self.channel.expect(resp_for(request_id), CMD_TIMEOUT, self.handle)
        if item is None:
            raise CheckFailed(
                f"a CMD with broken JSON answered by RESP {request_id} status BAD_PAYLOAD",
                "no RESP",
                [f"sent {hex_bytes(sent)}"],
            )
        status = protocol.parse_resp(item.frame.payload)[1]
        if status != protocol.NACK_BAD_PAYLOAD:
            raise CheckFailed(
                "a CMD with broken JSON answered with status BAD_PAYLOAD",
                f"status {_status(status)}",
                [f"sent {hex_bytes(sent)}", f"got {item.hex()}"],
            )

    def _short_command(self) -> None:
        sent = self.channel.send(protocol.CMD, payload=b"\x07")
        item = self.channel.expect(_nack_with(protocol.NACK_BAD_PAYLOAD), CMD_TIMEOUT, self.handle)
        if item is None:
            raise CheckFailed(
                "a 1-byte CMD answered by NACK BAD_PAYLOAD",
                "no such NACK; " + "; ".join(self.recent(3)),
                [f"sent {hex_bytes(sent)}"],
            )

    def check_corrupt_input(self) -> str:
        """Corrupt, truncated and oversize frames from the gateway side are dropped without an
        answer; a good CRC with version 2 or type 0x09 draws the NACK §3 names; the link then
        still works."""
        self.greeted()
        ping = protocol.encode_frame(protocol.CMD, 0, protocol.cmd_payload(0x4242, "ping"))
        bad_crc = bytearray(ping)
        bad_crc[-3] ^= 0x01 if bad_crc[-3] != 0x01 else 0x03  # still no zero byte in it
        garbage = {
            "bad CRC": bytes(bad_crc),
            "truncated": ping[: len(ping) // 2] + b"\x00",
            "bad COBS": b"\x09\x01\x05\x00",
            "oversize": b"\x00" + b"\xff" * 700 + b"\x00",
            "noise": bytes(range(1, 200)) + b"\x00",
        }
        for label, data in garbage.items():
            self.channel.write(data)
            answers: list[Received] = []

            def note(item: Received, answers: list[Received] = answers) -> None:
                if item.is_type(protocol.NACK) or item.is_type(protocol.RESP):
                    answers.append(item)
                self.handle(item)

            self.channel.collect(QUIET, note)
            if answers:
                raise CheckFailed(
                    f"no answer to a {label} frame (nothing in it can be trusted)",
                    f"{_describe(answers[0])}",
                    [f"sent {hex_bytes(data)}", f"got {answers[0].hex()}"],
                )
        for label, frame, code in (
            ("version 2", _raw_frame(2, protocol.CMD), protocol.NACK_UNSUPPORTED_VERSION),
            ("type 0x09", _raw_frame(1, 0x09), protocol.NACK_UNKNOWN_TYPE),
        ):
            self.channel.write(frame)
            item = self.channel.expect(_nack_with(code), CMD_TIMEOUT, self.handle)
            if item is None:
                raise CheckFailed(
                    f"NACK {protocol.NACK_NAMES[code]} for a {label} frame with a good CRC",
                    "none; " + "; ".join(self.recent(3)),
                    [f"sent {hex_bytes(frame)}"],
                )
        self.call("ping", {}, protocol.STATUS_OK)
        return f"{len(garbage)} corrupt inputs unanswered, 2 NACKs right, ping answered after"

    def check_reboot(self) -> str:
        """reboot: RESP, then a HELLO with a new boot id; the new boot's DATA starts at its
        HELLO's oldest (the gateway tells the boots apart by the boot id alone)."""
        self.greeted()
        old_boot = self.state.boot
        self.call("reboot", {}, protocol.STATUS_OK)
        item = self.channel.expect(
            lambda item: item.is_type(protocol.HELLO), REBOOT_WAIT, self._data_without_ack
        )
        if item is None:
            raise CheckFailed(
                f"a HELLO within {REBOOT_WAIT:g} s of the reboot RESP",
                "none; " + ("; ".join(self.recent(3)) or "nothing at all"),
            )
        hello = _parse_hello(item)
        if hello["boot"] == old_boot:
            raise CheckFailed(
                f"a new boot id after the reboot (was {old_boot:08x})",
                f"the same boot id {hello['boot']:08x}: a gateway would take the new boot's "
                f"seq {hello['oldest']}.. as duplicates of the old one's",
                [item.hex()],
            )
        self.handle(item)
        first = self.wait_for(lambda item: item.is_type(protocol.DATA), DATA_WAIT)
        if first is None:
            raise CheckFailed("DATA after the reboot's HELLO-ACK", "none", self.recent())
        if first.frame.seq != hello["oldest"]:
            raise CheckFailed(
                f"the new boot's first DATA with seq {hello['oldest']} (its HELLO's oldest)",
                f"seq {first.frame.seq}",
                [first.hex()],
            )
        self.handle(first)
        return f"boot {old_boot:08x} → {hello['boot']:08x}, DATA from seq {hello['oldest']}"

    def check_soak(self) -> str:
        """N seconds of streaming with every 7th ACK lost: nothing missing, nothing out of order."""
        self.greeted()
        self.listen(0.2)
        start_count = len(self.state.readings)
        dropped = Counter()

        def lose_some(seq: int) -> bool:
            dropped["acks"] += 1
            return dropped["acks"] % SOAK_ACK_DROP != 0

        self.ack_filter = lose_some
        started = time.monotonic()
        self.listen(self.soak_seconds)
        self.ack_filter = None
        self.listen(RETRANSMIT * 2)
        readings = self.state.readings[start_count:]
        if not readings:
            raise CheckFailed("readings during the soak", "none", self.recent())
        missing = _counter_gaps(readings, self.state.hello)
        if missing:
            raise CheckFailed(
                "every sample of the soak delivered once, in order (its `n` field counting up)",
                "; ".join(missing[:3]),
                self.recent(3),
            )
        rate = len(readings) / max(time.monotonic() - started, 0.001)
        lost = dropped["acks"] // SOAK_ACK_DROP
        return (
            f"{len(readings)} readings in {self.soak_seconds:g} s ({rate:.0f}/s), {lost} ACKs "
            f"lost on purpose, {self.state.counters['duplicates']} duplicates, 0 missing"
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _unacked_after(self, acked: int | None) -> list[int]:
        """Seqs received since the last ACK we sent (in order)."""
        seqs = sorted(self.state.sent_payloads, key=lambda seq: protocol.seq_diff(seq, 0))
        if acked is None:
            return seqs
        return [seq for seq in seqs if protocol.seq_diff(seq, acked) > 0]

    def _newest_is(self, seq: int) -> bool:
        return self.state.accepted is not None and seq == self.state.accepted


def _counter_gaps(readings: list[tuple[int, int, list[float]]], hello: dict[str, Any]) -> list[str]:
    """Where a stream with a field `n` (a sample counter) skips or repeats a number."""
    problems = []
    last: dict[int, float] = {}
    for index, dts, values in readings:
        fields = hello["streams"][index]["fields"]
        if "n" not in fields:
            continue
        n = values[fields.index("n")]
        before = last.get(index)
        if before is not None and n != before + 1 and not (n == 0 and before > 0):
            name = hello["streams"][index]["name"]
            problems.append(f"stream {name}: n {before:g} then {n:g} (dts {dts})")
        last[index] = n
    return problems


def _parse_hello(item: Received) -> dict[str, Any]:
    try:
        return protocol.parse_hello(item.frame.payload)
    except protocol.ProtocolError as error:
        raise CheckFailed("a HELLO payload as §7 says", error.reason, [item.hex()]) from None


def _nack_with(code: int) -> Callable[[Received], bool]:
    def matches(item: Received) -> bool:
        if not item.is_type(protocol.NACK):
            return False
        try:
            return protocol.parse_nack(item.frame.payload)[0] == code
        except protocol.ProtocolError:
            return False

    return matches


def _raw_frame(version: int, kind: int) -> bytes:
    """A frame with a good CRC and the given version and type (encode_frame writes version 1
    and known types only through its arguments; both are bytes of the header here)."""
    return protocol.encode_frame(kind, 0, b"{}", 0, version)


def _status(code: int) -> str:
    return "OK" if code == protocol.STATUS_OK else protocol.NACK_NAMES.get(code, str(code))


def _describe(item: Received) -> str:
    if item.frame is None:
        return f"bad frame ({item.error})"
    text = describe_frame(item.frame)
    if item.frame.type == protocol.NACK:
        try:
            code = protocol.parse_nack(item.frame.payload)[0]
            text += f" {protocol.NACK_NAMES.get(code, code)}"
        except protocol.ProtocolError:
            pass
    if item.frame.type == protocol.RESP:
        try:
            request_id, status, _ = protocol.parse_resp(item.frame.payload)
            text += f" request {request_id} status {_status(status)}"
        except protocol.ProtocolError:
            pass
    return text
