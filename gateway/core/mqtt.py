"""Sans-I/O MQTT 3.1.1 codec: packet encoders and an incremental packet reader (bytes only)."""

# Control packet types (MQTT 3.1.1 section 2.2.1).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PACKET_NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}

# CONNACK return codes (section 3.2.2.3), worded for a log line.
CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

MAX_REMAINING_LENGTH = 268435455  # four varint bytes
MAX_PACKET_ID = 65535
SUBACK_FAILURE = 0x80

_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"
_DISCONNECT = b"\xe0\x00"
_PROTOCOL = b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)

# Fixed-header flags a packet type must carry (section 2.2.2); PUBLISH has its own rules.
_REQUIRED_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    PUBREC: 0,
    PUBREL: 2,
    PUBCOMP: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
}


class MqttProtocolError(Exception):
    """The byte stream is not valid MQTT 3.1.1; the connection must be closed."""


# -- remaining length ----------------------------------------------------------------------


def encode_length(value):
    """The remaining-length varint: 7 bits per byte, least significant first, 1 to 4 bytes."""
    if value < 128:
        return bytes((value,))
    if value > MAX_REMAINING_LENGTH or value < 0:
        raise ValueError(f"remaining length {value} is outside 0..{MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        digit = value & 127
        value >>= 7
        if value:
            out.append(digit | 128)
        else:
            out.append(digit)
            return bytes(out)


def decode_length(data, offset=0):
    """(value, offset after the varint), or None when more bytes are needed."""
    value = 0
    shift = 0
    end = len(data)
    while True:
        if offset >= end:
            return None
        byte = data[offset]
        offset += 1
        value |= (byte & 127) << shift
        if byte < 128:
            return value, offset
        shift += 7
        if shift >= 28:
            raise MqttProtocolError("remaining length is longer than 4 bytes")


def next_packet_id(packet_id):
    """The id after packet_id: 1..65535 and around again, never 0."""
    return packet_id % MAX_PACKET_ID + 1


# -- encoders ------------------------------------------------------------------------------


def _packet(first, body):
    return bytes((first,)) + encode_length(len(body)) + body


def _u16(value):
    return bytes((value >> 8, value & 255))


def _binary(data):
    if len(data) > 65535:
        raise ValueError(f"field of {len(data)} bytes is longer than 65535")
    return _u16(len(data)) + data


def _string(text):
    return _binary(text.encode("utf-8") if isinstance(text, str) else bytes(text))


def _check_packet_id(packet_id):
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet id {packet_id!r} is outside 1..65535")


def _check_qos(qos):
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")


def _as_bytes(payload):
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return payload


def encode_topic(topic):
    """A PUBLISH topic as it goes on the wire (length prefix and UTF-8), checked once."""
    if not topic:
        raise ValueError("topic must not be empty")
    if "+" in topic or "#" in topic:
        raise ValueError(f"topic {topic!r} contains a wildcard (+ or #), which only filters may")
    if "\x00" in topic:
        raise ValueError("topic must not contain NUL")
    return _string(topic)


def connect(
    client_id,
    keepalive=30,
    clean_session=True,
    username=None,
    password=None,
    will_topic=None,
    will_payload=b"",
    will_qos=0,
    will_retain=False,
):
    """CONNECT. keepalive is whole seconds (0 disables it)."""
    keepalive = int(keepalive)
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"keepalive {keepalive!r} is outside 0..65535 seconds")
    flags = 0
    if clean_session:
        flags |= 0x02
    payload = _string(client_id)
    if will_topic is not None:
        _check_qos(will_qos)
        flags |= 0x04 | (will_qos << 3)
        if will_retain:
            flags |= 0x20
        payload += encode_topic(will_topic) + _binary(_as_bytes(will_payload))
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        if username is None:
            raise ValueError("MQTT 3.1.1 sends a password only together with a user name")
        flags |= 0x40
        payload += _binary(_as_bytes(password))
    return _packet(0x10, _PROTOCOL + bytes((flags,)) + _u16(keepalive) + payload)


def connack(session_present, return_code):
    """CONNACK (what a broker sends; used by tests and small brokers)."""
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def publish(topic, payload, qos=0, retain=False, packet_id=0, dup=False):
    """PUBLISH. packet_id is required (1..65535) for QoS 1 and 2 and ignored for QoS 0."""
    _check_qos(qos)
    first = 0x30 | (qos << 1)
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    topic_field = encode_topic(topic)
    payload = _as_bytes(payload)
    if qos:
        _check_packet_id(packet_id)
        body_head = topic_field + _u16(packet_id)
    else:
        body_head = topic_field
    length = len(body_head) + len(payload)
    return bytes((first,)) + encode_length(length) + body_head + payload


def puback(packet_id):
    _check_packet_id(packet_id)
    return bytes((0x40, 2, packet_id >> 8, packet_id & 255))


def pubrec(packet_id):
    _check_packet_id(packet_id)
    return bytes((0x50, 2, packet_id >> 8, packet_id & 255))


def pubrel(packet_id):
    _check_packet_id(packet_id)
    return bytes((0x62, 2, packet_id >> 8, packet_id & 255))


def pubcomp(packet_id):
    _check_packet_id(packet_id)
    return bytes((0x70, 2, packet_id >> 8, packet_id & 255))


def subscribe(packet_id, topics):
    """SUBSCRIBE to [(filter, qos), ...]."""
    _check_packet_id(packet_id)
    if not topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    body = _u16(packet_id)
    for topic_filter, qos in topics:
        _check_qos(qos)
        body += _string(topic_filter) + bytes((qos,))
    return _packet(0x82, body)


def suback(packet_id, granted):
    """SUBACK with one granted QoS (or 0x80 for failure) per requested filter."""
    _check_packet_id(packet_id)
    return _packet(0x90, _u16(packet_id) + bytes(granted))


def unsubscribe(packet_id, filters):
    _check_packet_id(packet_id)
    if not filters:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    body = _u16(packet_id)
    for topic_filter in filters:
        body += _string(topic_filter)
    return _packet(0xA2, body)


def unsuback(packet_id):
    _check_packet_id(packet_id)
    return bytes((0xB0, 2, packet_id >> 8, packet_id & 255))


def pingreq():
    return _PINGREQ


def pingresp():
    return _PINGRESP


def disconnect():
    return _DISCONNECT


class PublishEncoder:
    """Appends PUBLISH packets to a bytearray, the hot path of a publishing client.

    Each topic is checked and encoded once and then reused from a bounded cache, so a
    message costs a header, a packet id and the payload.
    """

    def __init__(self, max_topics=1024):
        self.max_topics = max_topics
        self._topics = {}

    def topic_field(self, topic):
        field = self._topics.get(topic)
        if field is None:
            field = encode_topic(topic)
            if len(self._topics) >= self.max_topics:
                self._topics.clear()  # a topic explosion must not grow memory without bound
            self._topics[topic] = field
        return field

    def append(self, out, topic, payload, qos=0, retain=False, packet_id=0):
        """Append one PUBLISH to the bytearray out (packet_id is used when qos > 0)."""
        field = self._topics.get(topic)
        if field is None:
            field = self.topic_field(topic)
        length = len(field) + len(payload)
        first = 0x31 if retain else 0x30
        if qos:
            if qos > 2:
                raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
            length += 2
            first |= qos << 1
        if length < 128:
            out.append(first)
            out.append(length)
        elif length < 16384:
            out.append(first)
            out.append((length & 127) | 128)
            out.append(length >> 7)
        else:
            header = encode_length(length)  # raises before out is touched when too long
            out.append(first)
            out += header
        out += field
        if qos:
            out.append(packet_id >> 8)
            out.append(packet_id & 255)
        out += payload


# -- reader --------------------------------------------------------------------------------


class Packet:
    """One decoded control packet; only the attributes of its type are meaningful.

    CONNACK: session_present, return_code. PUBLISH: topic, payload, qos, retain, dup,
    packet_id. PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK: packet_id. SUBACK: packet_id, granted.
    SUBSCRIBE: packet_id, topics [(filter, qos)]. UNSUBSCRIBE: packet_id, topics [filter].
    CONNECT: client_id, keepalive, clean_session, username, password, will_topic,
    will_payload, will_qos, will_retain.
    """

    packet_id = 0
    topic = None
    payload = b""
    qos = 0
    retain = False
    dup = False
    session_present = False
    return_code = 0
    granted = ()
    topics = ()

    def __init__(self, kind, flags):
        self.type = kind
        self.flags = flags

    @property
    def name(self):
        return PACKET_NAMES.get(self.type, f"type {self.type}")

    def __repr__(self):
        if self.type == PUBLISH:
            size = len(self.payload)
            return f"<PUBLISH {self.topic!r} qos={self.qos} id={self.packet_id} {size} bytes>"
        return f"<{self.name} id={self.packet_id}>"


def _read_u16(data, pos, end, what):
    if pos + 2 > end:
        raise MqttProtocolError(f"{what} is cut off: the packet ends first")
    return (data[pos] << 8) | data[pos + 1], pos + 2


def _read_binary(data, pos, end, what):
    size, pos = _read_u16(data, pos, end, what + " length")
    if pos + size > end:
        left = end - pos
        raise MqttProtocolError(f"{what} length {size} goes beyond the packet ({left} bytes left)")
    return bytes(data[pos : pos + size]), pos + size


def _read_string(data, pos, end, what):
    raw, pos = _read_binary(data, pos, end, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeError:
        raise MqttProtocolError(f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise MqttProtocolError(f"{what} contains NUL")
    return text, pos


def _expect_length(packet, size, expected):
    if size != expected:
        name = packet.name
        raise MqttProtocolError(f"{name} must have remaining length {expected}, got {size}")


def _decode_publish(packet, data, pos, end):
    flags = packet.flags
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MqttProtocolError("PUBLISH with QoS 3 (both QoS bits set)")
    if qos == 0 and flags & 0x08:
        raise MqttProtocolError("PUBLISH with QoS 0 must not set DUP")
    packet.qos = qos
    packet.retain = bool(flags & 1)
    packet.dup = bool(flags & 0x08)
    packet.topic, pos = _read_string(data, pos, end, "PUBLISH topic")
    if not packet.topic or "+" in packet.topic or "#" in packet.topic:
        raise MqttProtocolError(f"PUBLISH topic {packet.topic!r} is empty or has a wildcard")
    if qos:
        packet.packet_id, pos = _read_u16(data, pos, end, "PUBLISH packet id")
        if packet.packet_id == 0:
            raise MqttProtocolError(f"PUBLISH with QoS {qos} has packet id 0")
    packet.payload = bytes(data[pos:end])


def _decode_connack(packet, data, pos, end):
    _expect_length(packet, end - pos, 2)
    if data[pos] & 0xFE:
        raise MqttProtocolError(f"CONNACK acknowledge flags 0x{data[pos]:02x} have reserved bits")
    packet.session_present = bool(data[pos] & 1)
    packet.return_code = data[pos + 1]


def _decode_id_only(packet, data, pos, end):
    _expect_length(packet, end - pos, 2)
    packet.packet_id = (data[pos] << 8) | data[pos + 1]


def _decode_suback(packet, data, pos, end):
    if end - pos < 3:
        raise MqttProtocolError("SUBACK needs a packet id and at least one return code")
    packet.packet_id = (data[pos] << 8) | data[pos + 1]
    granted = bytes(data[pos + 2 : end])
    for code in granted:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise MqttProtocolError(f"SUBACK return code 0x{code:02x} is not 0, 1, 2 or 0x80")
    packet.granted = list(granted)


def _decode_subscribe(packet, data, pos, end):
    packet.packet_id, pos = _read_u16(data, pos, end, "SUBSCRIBE packet id")
    topics = []
    while pos < end:
        topic_filter, pos = _read_string(data, pos, end, "SUBSCRIBE topic filter")
        if pos >= end:
            raise MqttProtocolError(f"SUBSCRIBE topic filter {topic_filter!r} has no QoS byte")
        qos = data[pos]
        pos += 1
        if qos > 2:
            raise MqttProtocolError(f"SUBSCRIBE requested QoS byte 0x{qos:02x}")
        topics.append((topic_filter, qos))
    if not topics:
        raise MqttProtocolError("SUBSCRIBE without a topic filter")
    packet.topics = topics


def _decode_unsubscribe(packet, data, pos, end):
    packet.packet_id, pos = _read_u16(data, pos, end, "UNSUBSCRIBE packet id")
    topics = []
    while pos < end:
        topic_filter, pos = _read_string(data, pos, end, "UNSUBSCRIBE topic filter")
        topics.append(topic_filter)
    if not topics:
        raise MqttProtocolError("UNSUBSCRIBE without a topic filter")
    packet.topics = topics


def _decode_connect(packet, data, pos, end):
    name, pos = _read_string(data, pos, end, "CONNECT protocol name")
    if name != "MQTT" or pos + 4 > end or data[pos] != 4:
        raise MqttProtocolError(f"CONNECT is not MQTT 3.1.1 (protocol {name!r})")
    flags = data[pos + 1]
    if flags & 1:
        raise MqttProtocolError("CONNECT flags have the reserved bit set")
    packet.keepalive = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4
    packet.clean_session = bool(flags & 0x02)
    packet.client_id, pos = _read_string(data, pos, end, "CONNECT client id")
    packet.will_topic = None
    packet.will_payload = b""
    packet.will_qos = (flags >> 3) & 3
    packet.will_retain = bool(flags & 0x20)
    if flags & 0x04:
        packet.will_topic, pos = _read_string(data, pos, end, "CONNECT will topic")
        packet.will_payload, pos = _read_binary(data, pos, end, "CONNECT will message")
    packet.username = None
    packet.password = None
    if flags & 0x80:
        packet.username, pos = _read_string(data, pos, end, "CONNECT user name")
    if flags & 0x40:
        packet.password, pos = _read_binary(data, pos, end, "CONNECT password")
    if pos != end:
        raise MqttProtocolError(f"CONNECT has {end - pos} bytes after its last field")


def _decode_empty(packet, data, pos, end):
    _expect_length(packet, end - pos, 0)


_DECODERS = {
    CONNECT: _decode_connect,
    CONNACK: _decode_connack,
    PUBLISH: _decode_publish,
    PUBACK: _decode_id_only,
    PUBREC: _decode_id_only,
    PUBREL: _decode_id_only,
    PUBCOMP: _decode_id_only,
    SUBSCRIBE: _decode_subscribe,
    SUBACK: _decode_suback,
    UNSUBSCRIBE: _decode_unsubscribe,
    UNSUBACK: _decode_id_only,
    PINGREQ: _decode_empty,
    PINGRESP: _decode_empty,
    DISCONNECT: _decode_empty,
}


class PacketReader:
    """Turns a byte stream into packets: feed(bytes) returns the packets completed so far.

    Packets may be split across feeds and many may arrive in one feed. Malformed input
    raises MqttProtocolError; the stream cannot be trusted after that (close the connection).
    """

    def __init__(self, max_packet_size=MAX_REMAINING_LENGTH):
        self.max_packet_size = max_packet_size
        # An incomplete packet is kept as chunks and joined only once it can be complete, so a
        # large packet arriving in many small reads costs linear, not quadratic, copying.
        self._chunks = []
        self._have = 0
        self._need = 0

    @property
    def buffered(self):
        """Bytes of an incomplete packet waiting for the rest."""
        return self._have

    def feed(self, data):
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
        packets = []
        pos = 0
        end = len(data)
        need = 0
        while end - pos >= 2:
            first = data[pos]
            # PUBACK is the packet a publisher receives most: decode it without the generic path.
            if first == 0x40 and data[pos + 1] == 2 and end - pos >= 4:
                packet = Packet(PUBACK, 0)
                packet.packet_id = (data[pos + 2] << 8) | data[pos + 3]
                packets.append(packet)
                pos += 4
                continue
            decoded = decode_length(data, pos + 1)
            if decoded is None:
                break
            size, body = decoded
            if size > self.max_packet_size:
                limit = self.max_packet_size
                raise MqttProtocolError(
                    f"packet of {size} bytes is larger than the limit of {limit}"
                )
            if body + size > end:
                need = body + size - pos
                break
            packets.append(self._decode(first, data, body, body + size))
            pos = body + size
        if pos < end:
            rest = bytes(data[pos:])
            self._chunks = [rest]
            self._have = len(rest)
            self._need = need
        else:
            self._have = 0
        return packets

    def _decode(self, first, data, pos, end):
        kind = first >> 4
        flags = first & 15
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise MqttProtocolError(f"packet type {kind} is reserved")
        required = _REQUIRED_FLAGS.get(kind, 0)
        if kind != PUBLISH and flags != required:
            name = PACKET_NAMES[kind]
            raise MqttProtocolError(
                f"{name} has fixed-header flags 0x{flags:x}, expected 0x{required:x}"
            )
        packet = Packet(kind, flags)
        decoder(packet, data, pos, end)
        return packet
