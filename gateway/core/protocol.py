"""Wire protocol v1 (docs/protocol.md): frame codec, stream decoder and payload codecs."""

import json
import struct
import sys

from gateway.core import cobs

VERSION = 1
HEADER_SIZE = 5
CRC_SIZE = 4
MIN_FRAME = HEADER_SIZE + CRC_SIZE  # 9: a frame with an empty payload
MAX_FRAME = 512  # decoded bytes: header + payload + CRC; a HELLO or info result must fit
MAX_PAYLOAD = MAX_FRAME - MIN_FRAME  # 503
MAX_ENCODED = MAX_FRAME + 1 + MAX_FRAME // 254  # COBS worst case (515); delimiter not counted
MIN_MAX_FRAME = 64  # the smallest receive limit a device may announce in HELLO

# Message types (header byte 1).
HELLO = 0x01
DATA = 0x02
ACK = 0x03
NACK = 0x04
CMD = 0x05
RESP = 0x06
HEARTBEAT = 0x07
LOG = 0x08

TYPE_NAMES = {
    HELLO: "HELLO",
    DATA: "DATA",
    ACK: "ACK",
    NACK: "NACK",
    CMD: "CMD",
    RESP: "RESP",
    HEARTBEAT: "HEARTBEAT",
    LOG: "LOG",
}

# Flags (header byte 2); undefined bits are reserved: sent as 0, ignored on receipt.
FLAG_RETRANSMIT = 0x01  # DATA: this frame was sent before
FLAG_FRESH = 0x02  # ACK of a HELLO: nothing accepted yet for this boot (seq is 0xFFFF)

# NACK codes, also the non-zero RESP status codes.
STATUS_OK = 0
NACK_UNSUPPORTED_VERSION = 1
NACK_UNKNOWN_TYPE = 2
NACK_NEED_HELLO = 3
NACK_OUT_OF_ORDER = 4
NACK_BAD_PAYLOAD = 5
NACK_UNKNOWN_COMMAND = 6
NACK_BAD_ARGUMENTS = 7
NACK_BUSY = 8
NACK_TOO_LARGE = 9

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
LOG_DEBUG = 10
LOG_INFO = 20
LOG_WARNING = 30
LOG_ERROR = 40

# Timing (milliseconds) and limits; docs/protocol.md explains each.
RETRANSMIT_TIMEOUT_MS = 500
ACK_INTERVAL_MS = 20
ACK_EVERY_FRAMES = 8
HEARTBEAT_INTERVAL_MS = 5000
CMD_TIMEOUT_MS = 2000  # the gateway gives up waiting for a RESP after this
RING_FRAMES = 64
SEQ_MODULUS = 0x10000
FRESH_SEQ = 0xFFFF

# ProtocolError codes for frames (the stream decoder counts them under these names).
FRAME_ERRORS = ("cobs", "crc", "truncated", "too_large", "version", "type")

_HEADER = "<BBBH"
_CRC = "<I"
_RECORD = "<BIB"  # DATA record head: stream index, dts, count
_RECORD_SIZE = 6
_SMALL_HEAP = sys.implementation.name == "micropython"  # build payloads without piece lists


class ProtocolError(ValueError):
    """A frame or payload breaks the protocol. code names the kind, reason says what and where.

    For "version" and "type" errors the CRC was good, so frame holds the decoded Frame (the
    receiver answers it with a NACK); otherwise frame is None.
    """

    def __init__(self, code, reason, frame=None):
        super().__init__(code + ": " + reason)
        self.code = code
        self.reason = reason
        self.frame = frame


# -- CRC-32 --------------------------------------------------------------------------------

_crc_table = None


def crc32_fallback(data, crc=0):
    """CRC-32 (IEEE 802.3, as zlib/binascii) for ports built without binascii.crc32."""
    global _crc_table
    if _crc_table is None:
        _crc_table = _make_crc_table()
    table = _crc_table
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_crc_table():
    table = []
    for index in range(256):
        value = index
        for _ in range(8):
            value = (value >> 1) ^ 0xEDB88320 if value & 1 else value >> 1
        table.append(value)
    return table


try:
    from binascii import crc32
except ImportError:  # some MicroPython board builds leave it out
    crc32 = crc32_fallback


# -- frames --------------------------------------------------------------------------------


class Frame:
    """One decoded frame: header fields and the payload bytes (CRC already checked)."""

    def __init__(self, type, seq=0, flags=0, payload=b"", version=VERSION):
        self.type = type
        self.seq = seq
        self.flags = flags
        self.payload = payload
        self.version = version

    def __eq__(self, other):
        return (
            isinstance(other, Frame)
            and self.type == other.type
            and self.seq == other.seq
            and self.flags == other.flags
            and self.payload == other.payload
            and self.version == other.version
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        name = TYPE_NAMES.get(self.type) or f"0x{self.type:02x}"
        return (
            f"Frame({name}, seq={self.seq}, flags=0x{self.flags:02x}, "
            f"payload={self.payload!r}, version={self.version})"
        )

    def encode(self):
        return encode_frame(self.type, self.seq, self.payload, self.flags, self.version)


def encode_frame(type, seq=0, payload=b"", flags=0, version=VERSION):
    """The frame on the wire: COBS(header | payload | CRC-32 LE) followed by 0x00."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    for name, value, top in (("type", type, 0xFF), ("flags", flags, 0xFF), ("seq", seq, 0xFFFF)):
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value!r} is outside 0..{top}")
    body = struct.pack(_HEADER, version, type, flags, seq) + bytes(payload)
    return cobs.encode(body + struct.pack(_CRC, crc32(body))) + cobs.DELIMITER


def decode_frame(encoded):
    """The Frame in one encoded frame (without its 0x00); raises ProtocolError."""
    if len(encoded) > MAX_ENCODED:
        raise ProtocolError(
            "too_large", f"encoded frame of {len(encoded)} bytes exceeds {MAX_ENCODED}"
        )
    try:
        raw = cobs.decode(encoded)
    except cobs.CobsError as error:
        raise ProtocolError("cobs", str(error)) from None
    size = len(raw)
    if size < MIN_FRAME:
        raise ProtocolError("truncated", f"frame of {size} bytes is shorter than {MIN_FRAME}")
    if size > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = raw[:-CRC_SIZE]
    sent = struct.unpack(_CRC, raw[-CRC_SIZE:])[0]
    computed = crc32(body)
    if sent != computed:
        raise ProtocolError("crc", f"CRC-32 0x{sent:08x}, computed 0x{computed:08x}")
    version, type, flags, seq = struct.unpack_from(_HEADER, body, 0)
    frame = Frame(type, seq, flags, body[HEADER_SIZE:], version)
    if version != VERSION:
        raise ProtocolError("version", f"protocol version {version}, expected {VERSION}", frame)
    if type not in TYPE_NAMES:
        raise ProtocolError("type", f"unknown message type 0x{type:02x}", frame)
    return frame


class FrameDecoder:
    """Bytes in, Frames out: feed(chunk) returns Frames and ProtocolErrors in stream order.

    Errors are returned, not raised, so one bad frame never hides the good ones around it.
    counters counts good frames ("frames") and each error code ("crc", "too_large", ...).
    """

    def __init__(self):
        self.counters = {"frames": 0}
        for code in FRAME_ERRORS:
            self.counters[code] = 0
        self._splitter = cobs.FrameSplitter(MAX_ENCODED, mark_oversize=True)

    def reset(self):
        """Forget a partial frame (e.g. after the port was reopened)."""
        self._splitter.reset()

    def feed(self, chunk):
        out = []
        counters = self.counters
        for encoded in self._splitter.feed(chunk):
            try:
                if encoded is None:  # the splitter dropped an oversize frame here
                    raise ProtocolError(
                        "too_large", f"more than {MAX_ENCODED} bytes before a 0x00, discarded"
                    )
                out.append(decode_frame(encoded))
            except ProtocolError as error:
                counters[error.code] += 1
                out.append(error)
                continue
            counters["frames"] += 1
        return out


# -- sequence numbers (RFC 1982 serial arithmetic over 16 bits) ----------------------------


def seq_add(seq, count):
    """seq advanced by count, wrapping 65535 -> 0."""
    return (seq + count) & 0xFFFF


def seq_diff(a, b):
    """a - b as the signed distance -32768..32767 (positive: a is newer than b)."""
    diff = (a - b) & 0xFFFF
    return diff - SEQ_MODULUS if diff >= 0x8000 else diff


def seq_newer(a, b):
    """True when a comes after b (within half the sequence space)."""
    return seq_diff(a, b) > 0


# -- payloads: JSON ------------------------------------------------------------------------


def _json_string(text):
    return json.dumps(text)


try:
    json.dumps("", ensure_ascii=False)
except TypeError:  # MicroPython writes UTF-8 as is and takes no ensure_ascii
    pass
else:

    def _json_string(text):  # noqa: F811 - CPython: the same bytes MicroPython writes
        return json.dumps(text, ensure_ascii=False)


def dump_json(value):
    """Compact JSON with sorted keys and UTF-8 as is: the same bytes on CPython and MicroPython."""
    if isinstance(value, dict):
        parts = []
        for key in sorted(value):
            if not isinstance(key, str):
                raise ValueError(f"JSON object key {key!r} is not a string")
            parts.append(_json_string(key) + ":" + dump_json(value[key]))
        return "{" + ",".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([dump_json(item) for item in value]) + "]"
    if isinstance(value, str):
        return _json_string(value)
    return json.dumps(value)


def _load_json(data, what):
    text = _text(data, what)
    try:
        return json.loads(text)
    except ValueError:
        raise ProtocolError("payload", what + " is not valid JSON") from None


def _text(data, what):
    try:
        return bytes(data).decode("utf-8")
    except UnicodeError:
        raise ProtocolError("payload", what + " is not valid UTF-8") from None


def _truncated_utf8(text, limit):
    """text as UTF-8, cut to at most limit bytes at a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    cut = limit
    while cut and data[cut] & 0xC0 == 0x80:  # a continuation byte: back to the start byte
        cut -= 1
    return data[:cut]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text_list(value):
    if not isinstance(value, list):
        return False
    return all([isinstance(item, str) for item in value])


# -- HELLO ---------------------------------------------------------------------------------


def hello_payload(hello):
    """HELLO payload: the device description as compact UTF-8 JSON."""
    return dump_json(hello).encode("utf-8")


def parse_hello(payload):
    """The HELLO dict, checked; optional keys get their defaults (max_frame, caps, rate)."""
    hello = _load_json(payload, "HELLO payload")
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
        parts.append(struct.pack(_RECORD, stream, dts & 0xFFFFFFFF, count))
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
        size += _RECORD_SIZE + 4 * count
    if size > MAX_PAYLOAD:
        raise ValueError(f"DATA payload of {size} bytes exceeds {MAX_PAYLOAD}")
    payload = bytearray(size)
    offset = 0
    for stream, dts, values in records:
        count = len(values)
        struct.pack_into(_RECORD, payload, offset, stream, dts & 0xFFFFFFFF, count)
        offset += _RECORD_SIZE
        for value in values:
            struct.pack_into("<f", payload, offset, value)
            offset += 4
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
        if size - offset < _RECORD_SIZE:
            raise ProtocolError(
                "payload",
                f"DATA record {len(records)}: {size - offset} bytes left, a record head needs 6",
            )
        stream, dts, count = struct.unpack_from(_RECORD, payload, offset)
        offset += _RECORD_SIZE
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


# -- NACK, CMD, RESP, HEARTBEAT, LOG -------------------------------------------------------


def nack_payload(code, expected=0, reason=""):
    """NACK payload: code u8 | expected seq u16 LE | reason (UTF-8, cut to fit)."""
    return struct.pack("<BH", code, expected) + _truncated_utf8(reason, MAX_PAYLOAD - 3)


def parse_nack(payload):
    """(code, expected, reason) from a NACK payload; raises ProtocolError."""
    if len(payload) < 3:
        raise ProtocolError("payload", f"NACK of {len(payload)} bytes, needs at least 3")
    code, expected = struct.unpack_from("<BH", payload, 0)
    return code, expected, _text(payload[3:], "NACK reason")


def cmd_payload(request_id, name, args=None):
    """CMD payload: request id u16 LE | JSON {"cmd": name, "args": args}."""
    body = dump_json({"cmd": name, "args": {} if args is None else args})
    return struct.pack("<H", request_id) + body.encode("utf-8")


def parse_cmd(payload):
    """(request_id, name, args) from a CMD payload; raises ProtocolError."""
    if len(payload) < 3:
        raise ProtocolError("payload", f"CMD of {len(payload)} bytes, needs a request id and JSON")
    request_id = struct.unpack_from("<H", payload, 0)[0]
    body = _load_json(payload[2:], "CMD body")
    if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
        raise ProtocolError("payload", 'CMD body must be an object with a string "cmd"')
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("payload", "CMD args must be an object")
    return request_id, body["cmd"], args


def resp_payload(request_id, status, result=None):
    """RESP payload: request id u16 LE | status u8 | JSON result ({} when None)."""
    body = dump_json({} if result is None else result)
    return struct.pack("<HB", request_id, status) + body.encode("utf-8")


def parse_resp(payload):
    """(request_id, status, result) from a RESP payload; raises ProtocolError."""
    if len(payload) < 4:
        raise ProtocolError(
            "payload", f"RESP of {len(payload)} bytes, needs a request id, status and JSON"
        )
    request_id, status = struct.unpack_from("<HB", payload, 0)
    return request_id, status, _load_json(payload[3:], "RESP result")


def heartbeat_payload(uptime_ms, queued):
    """HEARTBEAT payload: uptime ms u32 LE (wraps) | queued DATA frames u16 LE (saturates)."""
    return struct.pack("<IH", uptime_ms & 0xFFFFFFFF, min(queued, 0xFFFF))


def parse_heartbeat(payload):
    """(uptime_ms, queued) from a HEARTBEAT payload; later versions may append fields."""
    if len(payload) < 6:
        raise ProtocolError("payload", f"HEARTBEAT of {len(payload)} bytes, needs 6")
    return struct.unpack_from("<IH", payload, 0)


def log_payload(level, text):
    """LOG payload: level u8 | UTF-8 text (cut to fit)."""
    if not 0 <= level <= 255:
        raise ValueError(f"log level {level!r} is outside 0..255")
    return bytes((level,)) + _truncated_utf8(text, MAX_PAYLOAD - 1)


def parse_log(payload):
    """(level, text) from a LOG payload; raises ProtocolError."""
    if not payload:
        raise ProtocolError("payload", "LOG without a level")
    return payload[0], _text(payload[1:], "LOG text")
