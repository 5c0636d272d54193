"""Wire protocol v1, the part a device runs: codes, frames, and the payloads it sends or reads.

A sensor node imports only this. protocol.py adds what only a gateway uses (the parsers of
what a device sends, the names of the NACK codes, the gateway's timing) and is the whole API
for everything else.
"""

import json
import struct

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


LOG_DEBUG = 10
LOG_INFO = 20
LOG_WARNING = 30
LOG_ERROR = 40

SEQ_MODULUS = 0x10000
FRESH_SEQ = 0xFFFF

# ProtocolError codes for frames (the stream decoder counts them under these names).
FRAME_ERRORS = ("cobs", "crc", "truncated", "too_large", "version", "type")

_HEADER = "<BBBH"
_CRC = "<I"
RECORD_FORMAT = "<BIB"  # DATA record head: stream index, dts, count
RECORD_SIZE = 6


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
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise ProtocolError("too_large", f"payload of {size} bytes exceeds {MAX_PAYLOAD}")
    for name, value, top in (("type", type, 0xFF), ("flags", flags, 0xFF), ("seq", seq, 0xFFFF)):
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value!r} is outside 0..{top}")
    # Built in one buffer: a node encodes whole rounds of retransmits with its ring full, and
    # every joined piece would be another object for its heap to find room for.
    end = HEADER_SIZE + size
    body = bytearray(end + CRC_SIZE)
    struct.pack_into(_HEADER, body, 0, version, type, flags, seq)
    body[HEADER_SIZE:end] = payload
    struct.pack_into(_CRC, body, end, crc32(memoryview(body)[:end]))
    return cobs.encode(body) + cobs.DELIMITER


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


def load_json(data, what):
    """The JSON value in a payload; what names the payload in the ProtocolError."""
    text = utf8_text(data, what)
    try:
        return json.loads(text)
    except ValueError:
        raise ProtocolError("payload", what + " is not valid JSON") from None


def utf8_text(data, what):
    """A payload's UTF-8 as str; what names the payload in the ProtocolError."""
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


# -- HELLO ---------------------------------------------------------------------------------


def hello_payload(hello):
    """HELLO payload: the device description as compact UTF-8 JSON."""
    return dump_json(hello).encode("utf-8")


# -- DATA ----------------------------------------------------------------------------------


def pack_record(buffer, offset, stream, dts, values):
    """Write one DATA record into buffer at offset (which must have its room); returns the
    offset after it. A device packs each sample as it comes, so no record object waits."""
    if not 0 <= stream <= 255:
        raise ValueError(f"stream index {stream!r} is outside 0..255")
    count = len(values)
    if count > 255:
        raise ValueError(f"{count} values in one record, at most 255")
    struct.pack_into(RECORD_FORMAT, buffer, offset, stream, dts & 0xFFFFFFFF, count)
    offset += RECORD_SIZE
    for value in values:
        struct.pack_into("<f", buffer, offset, value)
        offset += 4
    return offset


# -- NACK, CMD, RESP, HEARTBEAT, LOG (a device parses only NACK and CMD) ------------------


def nack_payload(code, expected=0, reason=""):
    """NACK payload: code u8 | expected seq u16 LE | reason (UTF-8, cut to fit)."""
    return struct.pack("<BH", code, expected) + _truncated_utf8(reason, MAX_PAYLOAD - 3)


def parse_nack(payload):
    """(code, expected, reason) from a NACK payload; raises ProtocolError."""
    if len(payload) < 3:
        raise ProtocolError("payload", f"NACK of {len(payload)} bytes, needs at least 3")
    code, expected = struct.unpack_from("<BH", payload, 0)
    return code, expected, utf8_text(payload[3:], "NACK reason")


def parse_cmd(payload):
    """(request_id, name, args) from a CMD payload; raises ProtocolError."""
    if len(payload) < 3:
        raise ProtocolError("payload", f"CMD of {len(payload)} bytes, needs a request id and JSON")
    request_id = struct.unpack_from("<H", payload, 0)[0]
    body = load_json(payload[2:], "CMD body")
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


def heartbeat_payload(uptime_ms, queued):
    """HEARTBEAT payload: uptime ms u32 LE (wraps) | queued DATA frames u16 LE (saturates)."""
    return struct.pack("<IH", uptime_ms & 0xFFFFFFFF, min(queued, 0xFFFF))


def log_payload(level, text):
    """LOG payload: level u8 | UTF-8 text (cut to fit)."""
    if not 0 <= level <= 255:
        raise ValueError(f"log level {level!r} is outside 0..255")
    return bytes((level,)) + _truncated_utf8(text, MAX_PAYLOAD - 1)
