"""Sans-I/O MQTT 3.1.1 publishing client session: bytes and ticks in, events and bytes out."""

from gateway.core import compat, mqtt

DISCONNECTED = "disconnected"
CONNECTING = "connecting"
CONNECTED = "connected"

# Event kinds; a CONNECTED event has the same name as the state it starts.
REFUSED = "refused"
LOST = "lost"
MESSAGE = "message"  # a PUBLISH from the broker, on a topic subscribe() asked for

_DUP = 0x08
_MIN_ACK_TIMEOUT_MS = 10000

# An in-flight entry is a list [packet_id, token, packet, sent_at]; a packet id of 0 marks
# an entry that was acknowledged but is still referenced from the send-order list.
_ID = 0
_TOKEN = 1
_PACKET = 2
_SENT_AT = 3


class WindowFull(Exception):
    """publish() of a QoS 1 message while the in-flight window has no room."""


class SessionError(Exception):
    """The session was used in a way its state does not allow."""


class Event:
    """A connection-level event: CONNECTED (session_present), REFUSED (return_code, reason)
    or LOST (reason); or MESSAGE (topic, payload) received."""

    CONNECTED = CONNECTED
    REFUSED = REFUSED
    LOST = LOST
    MESSAGE = MESSAGE

    def __init__(
        self, kind, session_present=False, return_code=0, reason="", topic=None, payload=b""
    ):
        self.kind = kind
        self.session_present = session_present
        self.return_code = return_code
        self.reason = reason
        self.topic = topic
        self.payload = payload

    def __repr__(self):
        if self.kind == CONNECTED:
            return "<Event connected session_present=" + str(self.session_present) + ">"
        return "<Event " + self.kind + " " + repr(self.reason) + ">"


class MqttSession:
    """One client's MQTT session across connections, for a client that only publishes.

    The driver owns the transport and the clock: it passes received bytes and the current
    tick (compat.ticks_ms) in, writes data_to_send() out, calls tick() by next_deadline(),
    and acts on events_received() and acked(). QoS 1 messages stay in flight across
    connections until their PUBACK (or forget_inflight()) and are resent with DUP on the
    next CONNACK. The byte window counts as full once its limit is reached, so it may
    overshoot by one packet (a message larger than the limit can still be sent).
    """

    def __init__(
        self,
        client_id,
        keepalive=30,
        clean_session=True,
        username=None,
        password=None,
        will_topic=None,
        will_payload=b"",
        will_qos=0,
        will_retain=False,
        max_inflight=1000,
        max_inflight_bytes=1048576,
        ack_timeout_ms=None,
    ):
        if not 1 <= max_inflight <= mqtt.MAX_PACKET_ID:
            raise ValueError(f"max_inflight {max_inflight!r} is outside 1..65535")
        if max_inflight_bytes < 1:
            raise ValueError(f"max_inflight_bytes {max_inflight_bytes!r} must be positive")
        if ack_timeout_ms is None:
            ack_timeout_ms = max(int(keepalive) * 1000, _MIN_ACK_TIMEOUT_MS)
        if ack_timeout_ms <= 0:
            raise ValueError(f"ack_timeout_ms {ack_timeout_ms!r} must be positive")
        # Built once: it validates the options now rather than at the first connect.
        self._connect_packet = mqtt.connect(
            client_id,
            keepalive,
            clean_session,
            username,
            password,
            will_topic,
            will_payload,
            will_qos,
            will_retain,
        )
        self.client_id = client_id
        self.keepalive_ms = int(keepalive) * 1000
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.ack_timeout_ms = ack_timeout_ms
        self.counters = {"published": 0, "acked": 0, "resent": 0, "unknown_acks": 0, "pings": 0}
        self.counters["received"] = 0  # PUBLISH packets from the broker (MESSAGE events)
        self.counters["subscribed"] = 0  # SUBACKs
        self.state = DISCONNECTED
        self._encoder = mqtt.PublishEncoder()
        self._reader = mqtt.PacketReader()
        self._out = bytearray()
        self._events = []
        self._acked = []
        self._inflight = {}  # packet id -> entry
        self._order = []  # entries in send order; acknowledged ones are skipped lazily
        self._head = 0  # entries before this index in _order are all acknowledged
        self._inflight_bytes = 0
        self._last_id = 0
        self._last_sent = 0
        self._connect_sent = 0
        self._ping_sent = None  # tick of the unanswered PINGREQ
        self._subscribing = set()  # packet ids of SUBSCRIBEs waiting for their SUBACK

    # -- connection -------------------------------------------------------------------------

    def connect(self, now):
        """Start a connection: queue CONNECT (output left from an old connection is dropped)."""
        if self.state != DISCONNECTED:
            raise SessionError(f"connect() while {self.state}")
        self._reset_connection()
        self._out += self._connect_packet
        self._connect_sent = now
        self._last_sent = now
        self.state = CONNECTING

    def connection_lost(self, now):
        """The transport is gone; in-flight messages wait for the next connection."""
        self._reset_connection()
        self.state = DISCONNECTED

    def disconnect(self):
        """Queue DISCONNECT after anything still pending; the session is then disconnected."""
        if self.state == DISCONNECTED:
            return
        self._out += mqtt.disconnect()
        self._reader = mqtt.PacketReader()
        self._ping_sent = None
        self.state = DISCONNECTED

    def _reset_connection(self):
        self._out = bytearray()
        self._reader = mqtt.PacketReader()
        self._ping_sent = None
        self._subscribing = set()

    def _lose(self, reason):
        self._reset_connection()
        self.state = DISCONNECTED
        self._events.append(Event(LOST, reason=reason))

    # -- output and results -----------------------------------------------------------------

    def data_to_send(self):
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out = bytearray()
        return data

    def events_received(self):
        events = self._events
        self._events = []
        return events

    def acked(self):
        tokens = self._acked
        self._acked = []
        return tokens

    # -- publishing -------------------------------------------------------------------------

    @property
    def inflight(self):
        return len(self._inflight)

    @property
    def inflight_bytes(self):
        return self._inflight_bytes

    def can_publish(self):
        return (
            self.state == CONNECTED
            and len(self._inflight) < self.max_inflight
            and self._inflight_bytes < self.max_inflight_bytes
        )

    def publish(self, topic, payload, qos, retain, token, now):
        """Queue one PUBLISH; a QoS 1 message is tracked under token until its PUBACK."""
        if self.state != CONNECTED:
            raise SessionError(f"publish() while {self.state}")
        inflight = self._inflight
        if qos == 1:
            if len(inflight) >= self.max_inflight:
                raise WindowFull(f"{len(inflight)} messages in flight")
            if self._inflight_bytes >= self.max_inflight_bytes:
                raise WindowFull(f"{self._inflight_bytes} bytes in flight")
            packet_id = self._last_id % mqtt.MAX_PACKET_ID + 1
            if packet_id in inflight:
                packet_id = self._free_packet_id(packet_id)
        elif qos == 0:
            packet_id = 0
        else:
            raise ValueError(f"qos must be 0 or 1 (QoS 2 is not supported), got {qos!r}")
        if isinstance(payload, str):
            # MicroPython would append a str as UTF-8 after counting its characters.
            payload = payload.encode("utf-8")
        out = self._out
        start = len(out)
        try:
            self._encoder.append(out, topic, payload, qos, retain, packet_id)
        except Exception:
            out[start:] = b""  # a payload of the wrong type fails after the header went in
            raise
        if qos:
            packet = bytes(out[start:])
            entry = [packet_id, token, packet, now]
            inflight[packet_id] = entry
            self._order.append(entry)
            self._inflight_bytes += len(packet)
            self._last_id = packet_id
        self.counters["published"] += 1
        self._last_sent = now

    def subscribe(self, filters, now):
        """Queue SUBSCRIBE to [(filter, qos), ...]; matching messages come as MESSAGE events.

        Not tracked across connections (subscribe again after each CONNACK). Its packet id
        is one no QoS 1 message holds now; the broker tells SUBACK from PUBACK by type.
        """
        if self.state != CONNECTED:
            raise SessionError(f"subscribe() while {self.state}")
        packet_id = self._free_packet_id(self._last_id % mqtt.MAX_PACKET_ID + 1)
        self._out += mqtt.subscribe(packet_id, filters)
        self._subscribing.add(packet_id)
        self._last_sent = now
        return packet_id

    def _free_packet_id(self, packet_id):
        # Terminates: the window (at most 65535) is not full, so some id is free.
        while packet_id in self._inflight:
            packet_id = mqtt.next_packet_id(packet_id)
        return packet_id

    def unacked(self):
        """Tokens of the messages still waiting for their PUBACK, in send order."""
        return [entry[_TOKEN] for entry in self._live_entries()]

    def forget_inflight(self):
        """Drop every in-flight message and return their tokens in send order."""
        tokens = self.unacked()
        self._inflight = {}
        self._order = []
        self._head = 0
        self._inflight_bytes = 0
        return tokens

    def _live_entries(self):
        order = self._order
        return [order[i] for i in range(self._head, len(order)) if order[i][_ID]]

    def _oldest(self):
        """The oldest unacknowledged entry, or None."""
        order = self._order
        head = self._head
        end = len(order)
        while head < end and not order[head][_ID]:
            head += 1
        self._head = head
        return order[head] if head < end else None

    def _compact(self):
        # Acknowledged entries are dropped in bulk, so an ack costs O(1) even out of order
        # and the list stays within a constant factor of what is in flight.
        self._oldest()
        if len(self._order) - self._head > 2 * len(self._inflight) + 64:
            self._order = self._live_entries()
            self._head = 0
        elif self._head > 64 and self._head * 2 > len(self._order):
            del self._order[: self._head]
            self._head = 0

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data, now):
        if self.state == DISCONNECTED:
            return
        try:
            packets = self._reader.feed(data)
        except mqtt.MqttProtocolError as error:
            self._lose("protocol error: " + str(error))
            return
        if not packets:
            return
        first = 0
        if self.state == CONNECTING:
            self._receive_connack(packets[0], now)
            first = 1
        inflight = self._inflight
        acked = self._acked
        released = 0
        for index in range(first, len(packets)):
            if self.state != CONNECTED:
                break
            packet = packets[index]
            if packet.type == mqtt.PUBACK:
                entry = inflight.pop(packet.packet_id, None)
                if entry is None:
                    self.counters["unknown_acks"] += 1  # late ack of a forgotten message
                    continue
                entry[_ID] = 0
                self._inflight_bytes -= len(entry[_PACKET])
                acked.append(entry[_TOKEN])
                released += 1
            else:
                self._receive_other(packet)
        if released:
            self.counters["acked"] += released
            self._compact()

    def _receive_connack(self, packet, now):
        if packet.type != mqtt.CONNACK:
            self._lose(f"protocol error: expected CONNACK, got {packet.name}")
            return
        if packet.return_code:
            code = packet.return_code
            reason = mqtt.CONNACK_REASONS.get(code, f"return code {code}")
            self._reset_connection()
            self.state = DISCONNECTED
            self._events.append(Event(REFUSED, return_code=code, reason=reason))
            return
        self.state = CONNECTED
        self._events.append(Event(CONNECTED, session_present=packet.session_present))
        self._resend(now)

    def _resend(self, now):
        out = self._out
        entries = self._live_entries()
        for entry in entries:
            packet = entry[_PACKET]
            out.append(packet[0] | _DUP)
            out += packet[1:]
            entry[_SENT_AT] = now  # the ack timeout counts from this connection's send
        self._order = entries
        self._head = 0
        if entries:
            self.counters["resent"] += len(entries)
            self._last_sent = now

    def _receive_other(self, packet):
        kind = packet.type
        if kind == mqtt.PINGRESP:
            self._ping_sent = None
        elif kind == mqtt.PUBLISH and packet.qos < 2:
            self.counters["received"] += 1
            if packet.qos:
                self._out += mqtt.puback(packet.packet_id)  # or the broker sends it forever
            self._events.append(Event(MESSAGE, topic=packet.topic, payload=packet.payload))
        elif kind == mqtt.SUBACK and packet.packet_id in self._subscribing:
            self._subscribing.discard(packet.packet_id)
            self.counters["subscribed"] += 1
        elif kind in (mqtt.PUBLISH, mqtt.PUBREC, mqtt.PUBREL, mqtt.PUBCOMP):
            self._lose(f"unexpected {packet.name}: QoS 2 is not supported")
        else:
            self._lose(f"protocol error: unexpected {packet.name} from the broker")

    # -- time -------------------------------------------------------------------------------

    def next_deadline(self, now):
        """The tick by which tick() must run next (maybe already past), or None."""
        if self.state == CONNECTING:
            return compat.ticks_add(self._connect_sent, self.ack_timeout_ms)
        if self.state != CONNECTED:
            return None
        deadline = None
        if self.keepalive_ms:
            if self._ping_sent is None:
                deadline = compat.ticks_add(self._last_sent, self.keepalive_ms // 2)
            else:
                deadline = compat.ticks_add(self._ping_sent, self.keepalive_ms)
        oldest = self._oldest()
        if oldest is not None:
            ack_deadline = compat.ticks_add(oldest[_SENT_AT], self.ack_timeout_ms)
            if deadline is None or compat.ticks_diff(ack_deadline, deadline) < 0:
                deadline = ack_deadline
        return deadline

    def tick(self, now):
        """Send a keepalive PINGREQ when due; declare the connection lost when the broker
        stopped answering (no CONNACK, PINGRESP or PUBACK in time)."""
        if self.state == CONNECTING:
            if self._waited(now, self._connect_sent, self.ack_timeout_ms):
                self._lose(f"no CONNACK within {self.ack_timeout_ms} ms")
            return
        if self.state != CONNECTED:
            return
        if self._ping_sent is not None and self._waited(now, self._ping_sent, self.keepalive_ms):
            self._lose(f"keepalive expired: no PINGRESP within {self.keepalive_ms} ms")
            return
        oldest = self._oldest()
        if oldest is not None and self._waited(now, oldest[_SENT_AT], self.ack_timeout_ms):
            timeout = self.ack_timeout_ms
            self._lose(f"ack timeout: no PUBACK for packet id {oldest[_ID]} in {timeout} ms")
            return
        if self._ping_due(now):
            self._out += mqtt.pingreq()
            self._ping_sent = now
            self._last_sent = now
            self.counters["pings"] += 1

    def _ping_due(self, now):
        if not self.keepalive_ms or self._ping_sent is not None:
            return False
        return self._waited(now, self._last_sent, self.keepalive_ms // 2)

    @staticmethod
    def _waited(now, since, duration_ms):
        return compat.ticks_diff(now, since) >= duration_ms
