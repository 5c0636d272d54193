"""Wire protocol v1 (docs/protocol.md), all of it: device_protocol plus what only a gateway uses.

device_protocol holds the message types, flags and codes, the frame codec, the stream
decoder and every payload a device builds or reads; a sensor node imports just that. This
module adds the parsers of what a device sends (HELLO, DATA, RESP, HEARTBEAT, LOG), DATA
payloads from record lists, the CMD builder, the names of the NACK codes and the timing the
gateway applies. Everything of device_protocol is here too, so the gateway, the host tools
and the tests use this one module.
"""

import struct
import sys

from gateway.core.device_protocol import *  # noqa: F403 - this module is the whole API
from gateway.core.device_protocol import (
    MAX_FRAME,
    MAX_PAYLOAD,
    MIN_MAX_FRAME,
    NACK_BAD_ARGUMENTS,
    NACK_BAD_PAYLOAD,
    NACK_BUSY,
    NACK_NEED_HELLO,
    NACK_OUT_OF_ORDER,
    NACK_TOO_LARGE,
    NACK_UNKNOWN_COMMAND,
    NACK_UNKNOWN_TYPE,
    NACK_UNSUPPORTED_VERSION,
    RECORD_FORMAT,
    RECORD_SIZE,
    ProtocolError,
    dump_json,
    load_json,
    pack_record,
    seq_diff,
    utf8_text,
)

_SMALL_HEAP = sys.implementation.name == "micropython"  # build payloads without piece lists

NACK_NAMES = {
    NACK_UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION",
    NACK_UNKNOWN_TYPE: "UNKNOWN_TYPE",
    NACK_NEED_HELLO: "NEED_HELLO",
    NACK_OUT_OF_ORDER: "OUT_OF_ORDER",
    NACK_BAD_PAYLOAD: "BAD_PAYLOAD",
    NACK_UNKNOWN_COMMAND: "UNKNOWN_COMMAND",
    NACK_BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NACK_BUSY: "BUSY",
    NACK_TOO_LARGE: "TOO_LARGE",
}

COMMANDS = ("ping", "info", "set_rate", "set_config", "reboot")

# Timing (milliseconds) and limits; docs/protocol.md explains each. A node takes its own
# defaults from its config (firmware/sensor_node/config.py).
RETRANSMIT_TIMEOUT_MS = 500
ACK_INTERVAL_MS = 20
ACK_EVERY_FRAMES = 8
HEARTBEAT_INTERVAL_MS = 5000
CMD_TIMEOUT_MS = 2000  # the gateway gives up waiting for a RESP after this
RING_FRAMES = 64

# -- sequence numbers ----------------------------------------------------------------------


def seq_newer(a, b):
    """True when a comes after b (within half the sequence space)."""
    return seq_diff(a, b) > 0


# -- HELLO ---------------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text_list(value):
    if not isinstance(value, list):
        return False
    return all([isinstance(item, str) for item in value])


def parse_hello(payload):
    """The HELLO dict, checked; optional keys get their defaults (max_frame, caps, rate)."""
    hello = load_json(payload, "HELLO payload")
    if not isinstance(hello, dict):
        raise ProtocolError("payload", "HELLO payload is not a JSON object")
    for key in ("device", "fw", "proto", "boot", "oldest", "streams"):
        if key not in hello:
            raise ProtocolError("payload", f"HELLO lacks {key!r}")
    device = hello["device"]
    if not isinstance(device, str) or not device:
        raise ProtocolError("payload", "HELLO device must be a non-empty string")
    if not isinstance(hello["fw"], str):
        raise ProtocolError("payload", "HELLO fw must be a string")
    proto = hello["proto"]
    if not isinstance(proto, list) or not proto or not all([_is_int(v) for v in proto]):
        raise ProtocolError("payload", "HELLO proto must be a non-empty list of integers")
    boot = hello["boot"]
    if not _is_int(boot) or not 0 <= boot <= 0xFFFFFFFF:
        raise ProtocolError("payload", "HELLO boot must be an integer 0..4294967295")
    # Required: without it a lost first DATA frame after a FRESH HELLO-ACK goes unnoticed.
    oldest = hello["oldest"]
    if not _is_int(oldest) or not 0 <= oldest <= 0xFFFF:
        raise ProtocolError("payload", "HELLO oldest must be an integer 0..65535")
    max_frame = hello.setdefault("max_frame", MAX_FRAME)
    if not _is_int(max_frame) or not MIN_MAX_FRAME <= max_frame <= MAX_FRAME:
        raise ProtocolError(
            "payload", f"HELLO max_frame must be an integer {MIN_MAX_FRAME}..{MAX_FRAME}"
        )
    if not _is_text_list(hello.setdefault("caps", [])):
        raise ProtocolError("payload", "HELLO caps must be a list of strings")
    _check_streams(hello["streams"])
    return hello


def _check_streams(streams):
    if not isinstance(streams, list) or len(streams) > 256:
        raise ProtocolError("payload", "HELLO streams must be a list of at most 256 streams")
    names = set()
    for index, stream in enumerate(streams):
        where = f"HELLO streams[{index}]"
        if not isinstance(stream, dict):
            raise ProtocolError("payload", where + " is not an object")
        name = stream.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError("payload", where + " name must be a non-empty string")
        if name in names:
            raise ProtocolError("payload", where + f" repeats the name {name!r}")
        names.add(name)
        fields = stream.get("fields")
        if not _is_text_list(fields) or len(fields) > 255:
            raise ProtocolError("payload", where + " fields must be a list of at most 255 names")
        rate = stream.setdefault("rate", 0)
        if not _is_number(rate) or rate < 0:
            raise ProtocolError("payload", where + " rate must be a number >= 0")


# -- DATA ----------------------------------------------------------------------------------


def data_payload(records):
    """DATA payload from [(stream_index, dts, [values...]), ...]; dts wraps at 2**32."""
    if not records:
        raise ValueError("a DATA frame carries at least one record")
    if _SMALL_HEAP:
        return _data_payload_in_place(records)
    parts = []
    for stream, dts, values in records:
        if not 0 <= stream <= 255:
            raise ValueError(f"stream index {stream!r} is outside 0..255")
        count = len(values)
        if count > 255:
            raise ValueError(f"{count} values in one record, at most 255")
        parts.append(struct.pack(RECORD_FORMAT, stream, dts & 0xFFFFFFFF, count))
        parts.append(struct.pack(f"<{count}f", *values))
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"DATA payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return payload


def _data_payload_in_place(records):
    """data_payload() for MicroPython: packed into one buffer, not joined from a list of
    pieces (two small objects per record), which a board's small heap may not have."""
    size = 0
    for stream, _dts, values in records:
        if not 0 <= stream <= 255:
            raise ValueError(f"stream index {stream!r} is outside 0..255")
        count = len(values)
        if count > 255:
            raise ValueError(f"{count} values in one record, at most 255")
        size += RECORD_SIZE + 4 * count
    if size > MAX_PAYLOAD:
        raise ValueError(f"DATA payload of {size} bytes exceeds {MAX_PAYLOAD}")
    payload = bytearray(size)
    offset = 0
    for stream, dts, values in records:
        offset = pack_record(payload, offset, stream, dts, values)
    return bytes(payload)


def parse_data(payload):
    """[(stream_index, dts, [values...]), ...] from a DATA payload; raises ProtocolError.

    Values come back as the shortest decimal that is the same float32 (21.5, 40.2), not the
    float32's exact binary expansion (40.20000076293945).
    """
    payload = bytes(payload)
    size = len(payload)
    if not size:
        raise ProtocolError("payload", "DATA without records")
    records = []
    offset = 0
    while offset < size:
        if size - offset < RECORD_SIZE:
            raise ProtocolError(
                "payload",
                f"DATA record {len(records)}: {size - offset} bytes left, a record head needs 6",
            )
        stream, dts, count = struct.unpack_from(RECORD_FORMAT, payload, offset)
        offset += RECORD_SIZE
        end = offset + 4 * count
        if end > size:
            raise ProtocolError(
                "payload",
                f"DATA record {len(records)}: count {count} needs {4 * count} bytes, "
                f"{size - offset} left",
            )
        raw = payload[offset:end]
        records.append((stream, dts, _shortest(raw, count)))
        offset = end
    return records


def _shortest(raw, count):
    """The float32 values in raw as short decimals that round back to the same float32."""
    layout = f"<{count}f"
    exact = struct.unpack(layout, raw)
    short = [float(f"{value:.7g}") for value in exact]
    try:
        if struct.pack(layout, *short) == raw:  # the usual case: 7 digits are enough
            return short
    except (OverflowError, ValueError):  # a value rounded past the float32 range
        pass
    return [_shortest_one(value) for value in exact]


def _shortest_one(value):
    packed = struct.pack("<f", value)
    for text in (f"{value:.7g}", f"{value:.8g}", f"{value:.9g}"):
        candidate = float(text)
        try:
            if struct.pack("<f", candidate) == packed:
                return candidate
        except (OverflowError, ValueError):
            pass
    return value  # NaN and infinities: as unpacked


def check_data(records, streams):
    """Raise ProtocolError("payload") unless each record fits a HELLO stream and its fields."""
    for index, record in enumerate(records):
        stream, count = record[0], len(record[2])
        if stream >= len(streams):
            raise ProtocolError(
                "payload",
                f"DATA record {index}: stream index {stream}, HELLO has {len(streams)} streams",
            )
        fields = len(streams[stream]["fields"])
        if count != fields:
            raise ProtocolError(
                "payload",
                f"DATA record {index}: {count} values for stream {streams[stream]['name']!r} "
                f"with {fields} fields",
            )


# -- CMD, RESP, HEARTBEAT, LOG -------------------------------------------------------------


def cmd_payload(request_id, name, args=None):
    """CMD payload: request id u16 LE | JSON {"cmd": name, "args": args}."""
    body = dump_json({"cmd": name, "args": {} if args is None else args})
    return struct.pack("<H", request_id) + body.encode("utf-8")


def parse_resp(payload):
    """(request_id, status, result) from a RESP payload; raises ProtocolError."""
    if len(payload) < 4:
        raise ProtocolError(
            "payload", f"RESP of {len(payload)} bytes, needs a request id, status and JSON"
        )
    request_id, status = struct.unpack_from("<HB", payload, 0)
    return request_id, status, load_json(payload[3:], "RESP result")


def parse_heartbeat(payload):
    """(uptime_ms, queued) from a HEARTBEAT payload; later versions may append fields."""
    if len(payload) < 6:
        raise ProtocolError("payload", f"HEARTBEAT of {len(payload)} bytes, needs 6")
    return struct.unpack_from("<IH", payload, 0)


def parse_log(payload):
    """(level, text) from a LOG payload; raises ProtocolError."""
    if not payload:
        raise ProtocolError("payload", "LOG without a level")
    return payload[0], utf8_text(payload[1:], "LOG text")
