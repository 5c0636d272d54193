"""`host-tools monitor` (frames or lines, decoded live) and `host-tools send` (one command)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

from gateway.core import protocol
from host_tools.session import Session
from host_tools.stop_signals import on_stop_signals
from host_tools.wire import Channel, Received, WireError, describe_frame, hex_bytes

EXIT_OK = 0
EXIT_FAILURE = 1
FRAMINGS = ("auto", "cobs", "lines")
MAX_LINE = 4096  # a line device's line longer than this is cut and counted
HELLO_TIMEOUT = 10.0  # seconds `send` waits for the device's HELLO


def frame_fields(frame: protocol.Frame, hello: dict[str, Any] | None) -> dict[str, Any]:
    """A frame as JSON-ready fields, payload decoded (stream names from the HELLO)."""
    out: dict[str, Any] = {
        "type": protocol.TYPE_NAMES.get(frame.type, frame.type),
        "seq": frame.seq,
        "flags": frame.flags,
    }
    try:
        out.update(_payload_fields(frame, hello))
    except protocol.ProtocolError as error:
        out["bad_payload"] = error.reason
    return out


def _payload_fields(frame: protocol.Frame, hello: dict[str, Any] | None) -> dict[str, Any]:
    kind, payload = frame.type, frame.payload
    if kind == protocol.HELLO:
        return {"hello": protocol.parse_hello(payload)}
    if kind == protocol.DATA:
        streams = (hello or {}).get("streams", [])
        readings = []
        for index, dts, values in protocol.parse_data(payload):
            reading: dict[str, Any] = {"stream": index, "dts": dts, "values": values}
            if index < len(streams) and len(streams[index]["fields"]) == len(values):
                reading["stream"] = streams[index]["name"]
                reading["values"] = dict(zip(streams[index]["fields"], values))
            readings.append(reading)
        return {"readings": readings}
    if kind == protocol.NACK:
        code, expected, reason = protocol.parse_nack(payload)
        return {"code": protocol.NACK_NAMES.get(code, code), "expected": expected, "reason": reason}
    if kind == protocol.CMD:
        request_id, name, args = protocol.parse_cmd(payload)
        return {"request": request_id, "cmd": name, "args": args}
    if kind == protocol.RESP:
        request_id, status, result = protocol.parse_resp(payload)
        return {"request": request_id, "status": status, "result": result}
    if kind == protocol.HEARTBEAT:
        uptime_ms, queued = protocol.parse_heartbeat(payload)
        return {"uptime_ms": uptime_ms, "queued": queued}
    if kind == protocol.LOG:
        level, text = protocol.parse_log(payload)
        return {"level": level, "text": text}
    return {}


def frame_text(frame: protocol.Frame, fields: dict[str, Any]) -> str:
    """One line for a person: the header, then what the payload says."""
    head = describe_frame(frame)
    if "bad_payload" in fields:
        return f"{head}  bad payload: {fields['bad_payload']}"
    if "hello" in fields:
        hello = fields["hello"]
        streams = ", ".join(f"{s['name']} [{', '.join(s['fields'])}]" for s in hello["streams"])
        return (
            f"{head}  device {hello['device']} fw {hello['fw']} boot {hello['boot']:08x} "
            f"oldest {hello['oldest']} streams {streams or 'none'}"
        )
    if "readings" in fields:
        parts = []
        for reading in fields["readings"]:
            values = reading["values"]
            shown = (
                " ".join(f"{key}={value:g}" for key, value in values.items())
                if isinstance(values, dict)
                else " ".join(f"{value:g}" for value in values)
            )
            parts.append(f"{reading['stream']}@{reading['dts']} {shown}")
        return f"{head}  " + "; ".join(parts)
    rest = {key: value for key, value in fields.items() if key not in ("type", "seq", "flags")}
    return f"{head}  " + " ".join(f"{key}={json.dumps(value)}" for key, value in rest.items())


class Monitor:
    """Prints every frame (or line) and counts; stop() ends run() from a signal handler."""

    def __init__(self, out: TextIO, as_json: bool, framing: str = "auto"):
        self.out = out
        self.as_json = as_json
        self.framing = framing
        self.counters: Counter = Counter()
        self.bad: Counter = Counter()
        self.hello: dict[str, Any] | None = None
        self._line = b""
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def _emit(self, record: dict[str, Any], text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.as_json:
            print(json.dumps({"time": time.time(), **record}), file=self.out, flush=True)
        else:
            print(f"{stamp} {text}", file=self.out, flush=True)

    def item(self, item: Received) -> None:
        if item.error is not None and item.error.code not in ("version", "type"):
            self.bad[item.error.code] += 1
            record = {"bad_frame": item.error.code, "reason": item.error.reason}
            self._emit({**record, "hex": item.hex(64)}, f"bad frame ({item.error}): {item.hex(64)}")
            return
        if item.error is not None:  # a good CRC, but a version or type we do not speak
            self.bad[item.error.code] += 1
        frame = item.frame
        fields = frame_fields(frame, self.hello)
        if "hello" in fields:
            self.hello = fields["hello"]
        if "bad_payload" in fields:
            self.bad["payload"] += 1
        self.counters[fields["type"]] += 1
        self._emit(fields, frame_text(frame, fields))

    def lines(self, data: bytes) -> None:
        self._line += data
        *complete, self._line = self._line.split(b"\n")
        if len(self._line) > MAX_LINE:
            complete.append(self._line[:MAX_LINE])
            self._line = b""
            self.bad["too_long"] += 1
        for raw in complete:
            try:
                text = raw.rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                self.bad["not_utf8"] += 1
                text = raw.decode("utf-8", "replace")
            self.counters["lines"] += 1
            self._emit({"line": text}, text)

    def summary(self) -> dict[str, Any]:
        return {"counts": dict(self.counters), "bad": dict(self.bad)}

    def summary_text(self) -> str:
        counts = ", ".join(f"{key} {value}" for key, value in sorted(self.counters.items()))
        bad = ", ".join(f"{key} {value}" for key, value in sorted(self.bad.items()))
        return f"seen: {counts or 'nothing'}; bad: {bad or 'none'}"


def run_monitor(
    channel: Channel,
    monitor: Monitor,
    seconds: float | None = None,
    answer: bool = True,
) -> None:
    """Read until stopped (or seconds pass); COBS devices are answered as a gateway would."""
    deadline = None if seconds is None else time.monotonic() + seconds
    session: Session | None = None
    pending = b""  # bytes read while the framing is still undecided
    while not monitor.stop_event.is_set():
        remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
        if remaining <= 0:
            return
        if monitor.framing == "auto":
            pending += channel.read_raw(remaining)
            monitor.framing = detect_framing(pending)
            if monitor.framing == "lines":
                monitor.lines(pending)
            elif monitor.framing == "cobs":
                session = Session(channel, answer)
                for item in session.feed(pending):
                    monitor.item(item)
            continue
        if monitor.framing == "lines":
            monitor.lines(channel.read_raw(remaining))
            continue
        if session is None:
            session = Session(channel, answer)
        for item in session.pump(remaining):
            monitor.item(item)


def detect_framing(data: bytes) -> str:
    """ "cobs" once a 0x00 comes first, "lines" once a newline does; "auto" while neither."""
    zero, newline = data.find(b"\x00"), data.find(b"\n")
    if zero < 0 and newline < 0:
        return "auto"
    if newline < 0 or 0 <= zero < newline:
        return "cobs"
    return "lines"


def monitor_command(args: argparse.Namespace) -> int:
    monitor = Monitor(sys.stdout, args.json, args.framing)
    try:
        with on_stop_signals(monitor.stop), Channel(args.port, args.baud) as channel:
            print(f"monitoring {args.port} (Ctrl-C stops)", file=sys.stderr, flush=True)
            run_monitor(channel, monitor, args.seconds, not args.passive)
    except WireError as error:
        print(f"host-tools monitor: {error}", file=sys.stderr)
        print("hint: `host-tools ports` lists the ports; is a gateway using it?", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"summary": monitor.summary()}), flush=True)
    else:
        print(monitor.summary_text(), file=sys.stderr, flush=True)
    return EXIT_OK


# -- send -----------------------------------------------------------------------------------


def parse_command_args(words: list[str]) -> dict[str, Any]:
    """`key=value` words (values as JSON when they parse, else strings), or one JSON object."""
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            value = json.loads(words[0])
        except ValueError as error:
            raise ValueError(f"arguments: not a JSON object ({error})") from None
        if not isinstance(value, dict):
            raise ValueError("arguments: expected a JSON object")
        return value
    args: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {word!r}: expected key=value")
        try:
            args[key] = json.loads(text)
        except ValueError:
            args[key] = text
    return args


def send_command(args: argparse.Namespace) -> int:
    try:
        command_args = parse_command_args(args.args)
    except ValueError as error:
        print(f"host-tools send: {error}", file=sys.stderr)
        return 2
    try:
        with Channel(args.port, args.baud) as channel:
            return _send(Session(channel), args.cmd, command_args, args.timeout, args.json)
    except WireError as error:
        print(f"host-tools send: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _send(session: Session, name: str, args: dict[str, Any], timeout: float, as_json: bool) -> int:
    deadline = time.monotonic() + HELLO_TIMEOUT
    while not session.link.greeted:
        if time.monotonic() > deadline:
            print(
                f"host-tools send: no HELLO from the device within {HELLO_TIMEOUT:g} s",
                file=sys.stderr,
            )
            print(
                "hint: is it a wire-protocol (COBS) device, and its firmware running?",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        session.pump(0.1)
    try:
        session.command(1, name, args)
    except ValueError as error:
        print(f"host-tools send: {error}", file=sys.stderr)
        return EXIT_FAILURE
    answer = session.response(1, timeout)
    if answer is None:
        print(f"host-tools send: no RESP to {name} within {timeout:g} s", file=sys.stderr)
        return EXIT_FAILURE
    status, result = answer
    if as_json:
        print(json.dumps({"status": status, "result": result}))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    if status != protocol.STATUS_OK:
        name_of = protocol.NACK_NAMES.get(status, f"status {status}")
        print(f"host-tools send: the device answered {name_of}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_monitor(commands: Any) -> None:
    parser = commands.add_parser(
        "monitor",
        help="decode a device's frames (or lines) live",
        description="Print every wire-protocol frame (HELLO, DATA with its readings, ACK, NACK, "
        "CMD/RESP, HEARTBEAT, LOG) or every line of a line device, and at the end the counts and "
        "bad frames by reason. A COBS device is answered as a gateway would (HELLO-ACK, ACKs) "
        "so it keeps sending; --passive only listens.",
    )
    _port_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--framing", choices=FRAMINGS, default="auto", help="default: auto")
    parser.add_argument("--passive", action="store_true", help="never write to the device")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    parser.set_defaults(run=monitor_command)


def add_send(commands: Any) -> None:
    parser = commands.add_parser(
        "send",
        help="send one command (ping, info, set_rate, set_config, reboot) and print the RESP",
        description="Wait for the device's HELLO, send CMD with the arguments given as key=value "
        "words (values read as JSON) or one JSON object, print the result. Exit 1 when the "
        "device answers with an error status or not at all.",
    )
    _port_arguments(parser)
    parser.add_argument("cmd", help="ping, info, set_rate, set_config or reboot")
    parser.add_argument("args", nargs="*", help="key=value ... or '{\"key\": value}'")
    parser.add_argument("--timeout", type=float, default=protocol.CMD_TIMEOUT_MS / 1000)
    parser.add_argument("--json", action="store_true", help="print {status, result}")
    parser.set_defaults(run=send_command)


def _port_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="the serial port, e.g. /dev/ttyACM0")
    parser.add_argument("--baud", type=int, default=115200, help="default 115200")


__all__ = ["Monitor", "add_monitor", "add_send", "frame_fields", "hex_bytes", "run_monitor"]
