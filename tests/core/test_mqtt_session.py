"""MQTT session state machine tests against hand-written bytes; plain asserts for MicroPython."""

from gateway.core import compat
from gateway.core.mqtt_session import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    LOST,
    MESSAGE,
    REFUSED,
    MqttSession,
    SessionError,
    WindowFull,
)

CONNACK = b"\x20\x02\x00\x00"
CONNACK_SESSION_PRESENT = b"\x20\x02\x01\x00"
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"
CONNECT_GW = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02gw"  # "gw", keepalive 30, clean


def _raises(error_type, function, *args):
    """The message of the error_type that function(*args) raises; fails if it raises none."""
    try:
        function(*args)
    except error_type as error:
        return str(error)
    raise AssertionError("expected " + error_type.__name__)


def _puback(packet_id):
    return bytes((0x40, 2, packet_id >> 8, packet_id & 255))


def _publish_qos1(packet_id, dup=False):
    """PUBLISH "t/a" b"hi" at QoS 1, written out by hand."""
    first = 0x3A if dup else 0x32
    return bytes((first, 9, 0, 3)) + b"t/a" + bytes((packet_id >> 8, packet_id & 255)) + b"hi"


class _NotBytes:
    """A payload that has a length but no bytes, so encoding fails after the header."""

    def __len__(self):
        return 2


def _connected(start=0, **options):
    """A session that connected at tick start, with its output drained."""
    session = MqttSession("gw", **options)
    session.connect(start)
    session.receive_data(CONNACK, start)
    assert session.state == CONNECTED
    session.data_to_send()
    session.events_received()
    return session


def _send(session, count, now=0, first_token=0):
    for token in range(first_token, first_token + count):
        session.publish("t/a", b"hi", 1, False, token, now)


# -- connecting ----------------------------------------------------------------------------


def test_connect_queues_exactly_the_connect_packet():
    session = MqttSession("gw")
    assert session.state == DISCONNECTED and session.data_to_send() == b""
    session.connect(0)
    assert session.state == CONNECTING
    assert session.data_to_send() == CONNECT_GW
    assert session.data_to_send() == b""


def test_connect_carries_will_and_credentials():
    session = MqttSession(
        "c",
        keepalive=10,
        username="u",
        password=b"p",
        will_topic="w",
        will_payload=b"x",
        will_qos=1,
        will_retain=True,
    )
    session.connect(0)
    expected = b"\x10\x19\x00\x04MQTT\x04\xee\x00\x0a\x00\x01c\x00\x01w\x00\x01x\x00\x01u\x00\x01p"
    assert session.data_to_send() == expected


def test_connect_twice_and_publish_before_connack_are_errors():
    session = MqttSession("gw")
    _raises(SessionError, session.publish, "t/a", b"hi", 0, False, None, 0)
    session.connect(0)
    assert "connecting" in _raises(SessionError, session.connect, 0)
    assert "connecting" in _raises(SessionError, session.publish, "t/a", b"hi", 1, False, 1, 0)
    assert not session.can_publish()


def test_connack_accepted_reports_session_present():
    session = MqttSession("gw", clean_session=False)
    session.connect(0)
    session.receive_data(CONNACK_SESSION_PRESENT, 5)
    assert session.state == CONNECTED and session.can_publish()
    events = session.events_received()
    assert len(events) == 1
    assert events[0].kind == CONNECTED and events[0].session_present is True
    assert session.events_received() == []


def test_connack_refused_reports_the_reason():
    session = MqttSession("gw")
    session.connect(0)
    session.data_to_send()
    session.receive_data(b"\x20\x02\x00\x05", 5)
    assert session.state == DISCONNECTED
    events = session.events_received()
    assert len(events) == 1
    assert events[0].kind == REFUSED
    assert events[0].return_code == 5 and events[0].reason == "not authorized"
    session.connect(10)  # a refused session may try again
    assert session.data_to_send() == CONNECT_GW


def test_a_first_packet_other_than_connack_is_lost():
    session = MqttSession("gw")
    session.connect(0)
    session.receive_data(_puback(1) + CONNACK, 5)
    assert session.state == DISCONNECTED
    events = session.events_received()
    assert len(events) == 1 and events[0].kind == LOST
    assert "expected CONNACK, got PUBACK" in events[0].reason


def test_no_connack_in_time_is_lost():
    session = MqttSession("gw", ack_timeout_ms=2000)
    session.connect(100)
    assert session.next_deadline(100) == 2100
    session.tick(2099)
    assert session.state == CONNECTING
    session.tick(2100)
    assert session.state == DISCONNECTED
    assert "no CONNACK" in session.events_received()[0].reason
    assert session.next_deadline(2100) is None


def test_data_while_disconnected_is_ignored():
    session = MqttSession("gw")
    session.receive_data(CONNACK + b"\xff\xff", 0)
    assert session.state == DISCONNECTED and session.events_received() == []


# -- publishing ----------------------------------------------------------------------------


def test_qos1_publish_bytes_carry_consecutive_packet_ids():
    session = _connected()
    session.publish("t/a", b"hi", 1, False, "first", 0)
    session.publish("t/a", b"hi", 1, True, "second", 0)
    assert session.data_to_send() == b"\x32\x09\x00\x03t/a\x00\x01hi\x33\x09\x00\x03t/a\x00\x02hi"
    assert session.inflight == 2 and session.inflight_bytes == 22
    assert session.unacked() == ["first", "second"]
    assert session.counters["published"] == 2


def test_qos0_publish_bytes_are_not_tracked():
    session = _connected()
    session.publish("t/a", b"hi", 0, True, "token", 0)
    assert session.data_to_send() == b"\x31\x07\x00\x03t/ahi"
    assert session.inflight == 0 and session.inflight_bytes == 0 and session.unacked() == []
    assert session.counters["published"] == 1


def test_pubacks_out_of_order_release_exactly_their_tokens():
    session = _connected()
    _send(session, 4, first_token=10)  # ids 1..4 carry tokens 10..13
    session.receive_data(_puback(3) + _puback(1), 1)
    assert session.acked() == [12, 10]
    assert session.acked() == []
    assert session.unacked() == [11, 13]
    assert session.inflight == 2 and session.inflight_bytes == 22
    session.receive_data(_puback(4) + _puback(2), 2)
    assert session.acked() == [13, 11]
    assert session.inflight == 0 and session.inflight_bytes == 0 and session.unacked() == []
    assert session.counters["acked"] == 4


def test_window_full_by_count_leaves_the_buffer_untouched():
    session = _connected(max_inflight=2)
    _send(session, 2)
    assert not session.can_publish()
    assert "2 messages" in _raises(WindowFull, session.publish, "t/a", b"hi", 1, False, "x", 0)
    assert session.data_to_send() == _publish_qos1(1) + _publish_qos1(2)
    session.publish("t/a", b"hi", 0, False, "qos0 still goes", 0)  # QoS 0 has no window
    assert session.data_to_send() == b"\x30\x07\x00\x03t/ahi"
    session.receive_data(_puback(1), 1)
    assert session.can_publish()
    session.publish("t/a", b"hi", 1, False, "x", 1)
    assert session.data_to_send() == _publish_qos1(3)


def test_window_full_by_bytes_leaves_the_buffer_untouched():
    session = _connected(max_inflight_bytes=22)  # each packet is 11 bytes
    _send(session, 1)
    assert session.can_publish()
    _send(session, 1, first_token=1)
    assert session.inflight_bytes == 22 and not session.can_publish()
    before = session.data_to_send()
    assert before == _publish_qos1(1) + _publish_qos1(2)
    assert "bytes" in _raises(WindowFull, session.publish, "t/a", b"hi", 1, False, 2, 0)
    assert session.data_to_send() == b"" and session.inflight == 2
    session.receive_data(_puback(2), 1)
    assert session.can_publish() and session.inflight_bytes == 11


def test_qos2_and_bad_topics_are_refused_without_touching_the_buffer():
    session = _connected()
    session.publish("t/a", b"hi", 0, False, None, 0)
    assert "QoS 2" in _raises(ValueError, session.publish, "t/a", b"hi", 2, False, 1, 0)
    _raises(ValueError, session.publish, "t/+", b"hi", 1, False, 1, 0)
    _raises(ValueError, session.publish, "", b"hi", 0, False, 1, 0)
    _raises(TypeError, session.publish, "t/a", _NotBytes(), 1, False, 1, 0)
    assert session.data_to_send() == b"\x30\x07\x00\x03t/ahi"
    assert session.inflight == 0
    session.publish("t/a", b"hi", 1, False, 1, 0)
    assert session.data_to_send() == _publish_qos1(1)  # no packet id was used up


def test_a_str_payload_goes_out_as_utf8():
    session = _connected()
    session.publish("t/a", "\u00e9", 0, False, None, 0)
    assert session.data_to_send() == b"\x30\x07\x00\x03t/a\xc3\xa9"


def test_packet_ids_wrap_at_65535_and_skip_ids_in_flight():
    session = _connected(max_inflight=65535, max_inflight_bytes=1 << 30)
    session.publish("t/a", b"hi", 1, False, "one", 0)
    session.publish("t/a", b"hi", 1, False, "two", 0)
    session.publish("t/a", b"hi", 1, False, "three", 0)
    session.receive_data(_puback(2), 0)
    packet_id = 4
    while packet_id <= 65535:
        last = min(packet_id + 999, 65535)
        acks = []
        for each in range(packet_id, last + 1):
            session.publish("t/a", b"hi", 1, False, each, 0)
            acks.append(_puback(each))
        session.receive_data(b"".join(acks), 0)
        session.data_to_send()
        packet_id = last + 1
    assert session.unacked() == ["one", "three"]
    session.data_to_send()
    session.publish("t/a", b"hi", 1, False, "after wrap", 0)
    session.publish("t/a", b"hi", 1, False, "next", 0)
    assert session.data_to_send() == _publish_qos1(2) + _publish_qos1(4)
    assert session.unacked() == ["one", "three", "after wrap", "next"]


# -- receiving -----------------------------------------------------------------------------


def test_an_unknown_ack_is_ignored_and_counted():
    session = _connected()
    _send(session, 1)
    session.receive_data(_puback(7) + _puback(1) + _puback(1), 1)
    assert session.acked() == [0]
    assert session.counters["unknown_acks"] == 2
    assert session.state == CONNECTED and session.events_received() == []


def test_a_puback_split_across_feeds():
    session = _connected()
    _send(session, 2)
    session.receive_data(b"\x40", 1)
    session.receive_data(b"\x02\x00", 1)
    assert session.acked() == []
    session.receive_data(b"\x01\x40\x02", 1)
    assert session.acked() == [0]
    session.receive_data(b"\x00\x02", 1)
    assert session.acked() == [1]


def test_a_connack_split_across_feeds():
    session = MqttSession("gw")
    session.connect(0)
    session.receive_data(b"\x20\x02\x00", 1)
    assert session.state == CONNECTING
    session.receive_data(b"\x00", 2)
    assert session.state == CONNECTED


def test_a_protocol_error_is_lost_and_discards_output():
    session = _connected()
    _send(session, 1)
    session.receive_data(b"\x40\x03\x00\x01\x00", 1)  # PUBACK must have length 2
    assert session.state == DISCONNECTED
    event = session.events_received()[0]
    assert event.kind == LOST and event.reason.startswith("protocol error: ")
    assert "remaining length 2" in event.reason
    assert session.data_to_send() == b""
    assert session.unacked() == [0]


def test_subscribe_then_messages_arrive_as_events_and_qos1_ones_are_acknowledged():
    session = _connected()
    _send(session, 1)  # packet id 1 is in flight: the SUBSCRIBE takes another
    session.data_to_send()
    packet_id = session.subscribe([("ha/status", 0)], 1)
    assert packet_id == 2
    assert session.data_to_send() == b"\x82\x0e\x00\x02\x00\x09ha/status\x00"
    session.receive_data(b"\x90\x03\x00\x02\x00", 2)  # SUBACK, granted QoS 0
    assert session.state == CONNECTED and session.counters["subscribed"] == 1
    session.receive_data(b"\x30\x11\x00\x09ha/statusonline" + _publish_qos1(9), 3)
    events = session.events_received()
    assert [(e.kind, e.topic, e.payload) for e in events] == [
        (MESSAGE, "ha/status", b"online"),
        (MESSAGE, "t/a", b"hi"),
    ]
    assert session.data_to_send() == _puback(9)
    assert session.counters["received"] == 2


def test_subscribe_needs_a_connection():
    session = MqttSession("gw")
    assert "subscribe() while disconnected" in _raises(
        SessionError, session.subscribe, [("a", 0)], 0
    )


def test_pubrec_is_lost_because_qos2_is_not_supported():
    session = _connected()
    session.receive_data(b"\x50\x02\x00\x01", 1)
    assert session.state == DISCONNECTED
    assert "QoS 2 is not supported" in session.events_received()[0].reason


def test_an_unexpected_suback_is_lost():
    session = _connected()
    session.receive_data(b"\x90\x03\x00\x01\x00", 1)
    assert session.state == DISCONNECTED
    assert "unexpected SUBACK" in session.events_received()[0].reason


def test_an_incoming_qos1_publish_is_acknowledged_and_counted():
    session = _connected()
    session.receive_data(b"\x32\x08\x00\x03in/\x00\x09z", 1)
    assert session.data_to_send() == b"\x40\x02\x00\x09"
    assert session.counters["received"] == 1 and session.state == CONNECTED


# -- keepalive and ack timeout -------------------------------------------------------------


def test_pingreq_after_half_the_keepalive_idle_and_pingresp_clears_it():
    session = _connected(keepalive=10)
    assert session.next_deadline(0) == 5000
    session.tick(4999)
    assert session.data_to_send() == b""
    session.tick(5000)
    assert session.data_to_send() == PINGREQ
    assert session.next_deadline(5000) == 15000  # now waiting for the PINGRESP
    session.tick(6000)
    assert session.data_to_send() == b""  # one ping at a time
    session.receive_data(PINGRESP, 6000)
    assert session.next_deadline(6000) == 10000
    session.tick(10000)
    assert session.data_to_send() == PINGREQ
    assert session.counters["pings"] == 2 and session.state == CONNECTED


def test_publishing_postpones_the_ping():
    session = _connected(keepalive=10)
    session.publish("t/a", b"hi", 0, False, None, 4000)
    session.data_to_send()
    session.tick(5000)
    assert session.data_to_send() == b""
    assert session.next_deadline(5000) == 9000


def test_no_pingresp_within_the_keepalive_is_lost():
    session = _connected(keepalive=10)
    session.tick(5000)
    assert session.data_to_send() == PINGREQ
    session.tick(14999)
    assert session.state == CONNECTED
    session.tick(15000)
    assert session.state == DISCONNECTED
    event = session.events_received()[0]
    assert event.kind == LOST and "PINGRESP" in event.reason
    assert session.data_to_send() == b""


def test_keepalive_zero_sends_no_pings():
    session = _connected(keepalive=0)
    assert session.next_deadline(0) is None
    session.tick(10**6)
    assert session.data_to_send() == b"" and session.state == CONNECTED
    assert session.ack_timeout_ms == 10000


def test_oldest_unacked_message_past_the_ack_timeout_is_lost():
    session = _connected(keepalive=60, ack_timeout_ms=3000)
    session.publish("t/a", b"hi", 1, False, "old", 1000)
    session.publish("t/a", b"hi", 1, False, "new", 2000)
    assert session.next_deadline(2000) == 4000
    session.receive_data(_puback(1), 2500)
    assert session.next_deadline(2500) == 5000  # now the second one is the oldest
    session.tick(4999)
    assert session.state == CONNECTED
    session.tick(5000)
    assert session.state == DISCONNECTED
    event = session.events_received()[0]
    assert event.kind == LOST and "ack timeout" in event.reason and "packet id 2" in event.reason
    assert session.unacked() == ["new"]


def test_next_deadline_takes_the_earliest_and_is_none_when_disconnected():
    session = MqttSession("gw", keepalive=10, ack_timeout_ms=20000)
    assert session.next_deadline(0) is None
    session.connect(0)
    assert session.next_deadline(0) == 20000  # the CONNACK wait
    session.receive_data(CONNACK, 100)
    assert session.next_deadline(100) == 5000  # the ping, counted from CONNECT
    session.publish("t/a", b"hi", 1, False, 1, 1000)
    assert session.next_deadline(1000) == 6000
    session.publish("t/a", b"hi", 1, False, 2, 5500)
    assert session.next_deadline(5500) == 10500
    session.tick(10500)
    assert session.next_deadline(10500) == 20500  # PINGRESP wait (the ack is at 21000)
    session.receive_data(PINGRESP, 11000)
    assert session.next_deadline(11000) == 15500
    session.connection_lost(12000)
    assert session.next_deadline(12000) is None


def test_deadlines_survive_the_tick_wrap():
    start = compat.TICKS_PERIOD - 1000
    session = _connected(start=start, keepalive=10)
    deadline = session.next_deadline(start)
    assert deadline == 4000  # wrapped past zero
    assert compat.ticks_diff(deadline, start) == 5000
    session.tick(compat.ticks_add(start, 4999))
    assert session.data_to_send() == b""
    session.tick(deadline)
    assert session.data_to_send() == PINGREQ


# -- reconnecting and stopping -------------------------------------------------------------


def test_reconnect_resends_only_unacked_messages_with_dup_and_the_same_ids_in_order():
    session = _connected()
    _send(session, 4, first_token=10)  # ids 1..4
    session.receive_data(_puback(3) + _puback(1), 1)
    assert session.acked() == [12, 10]
    session.publish("t/a", b"hi", 1, False, 14, 1)  # id 5, never written out
    session.connection_lost(2)
    assert session.state == DISCONNECTED and session.inflight == 3
    assert session.data_to_send() == b""  # output for the dead connection is dropped
    session.connect(3)
    assert session.data_to_send() == CONNECT_GW
    assert session.data_to_send() == b""  # nothing is resent before the CONNACK
    session.receive_data(CONNACK + _puback(4), 4)
    events = session.events_received()
    assert len(events) == 1 and events[0].kind == CONNECTED
    expected = _publish_qos1(2, dup=True) + _publish_qos1(4, dup=True) + _publish_qos1(5, dup=True)
    assert session.data_to_send() == expected
    assert session.acked() == [13]
    assert session.unacked() == [11, 14]
    assert session.counters["resent"] == 3
    session.publish("t/a", b"hi", 1, False, 15, 5)
    assert session.data_to_send() == _publish_qos1(6)  # new messages carry no DUP


def test_resent_messages_restart_their_ack_timeout():
    session = _connected(keepalive=0, ack_timeout_ms=3000)
    _send(session, 1, now=0)
    session.connection_lost(1000)
    session.connect(60000)
    session.receive_data(CONNACK, 60000)
    assert session.next_deadline(60000) == 63000
    session.tick(62000)
    assert session.state == CONNECTED


def test_connection_lost_resets_the_reader():
    session = _connected()
    _send(session, 1)
    session.receive_data(b"\x40\x02", 1)  # half a PUBACK, then the connection dies
    session.connection_lost(2)
    session.connect(3)
    session.receive_data(CONNACK, 4)
    assert session.state == CONNECTED and session.events_received()[0].kind == CONNECTED


def test_forget_inflight_returns_tokens_in_send_order_and_frees_the_window():
    session = _connected(max_inflight=3)
    _send(session, 3, first_token=20)
    session.receive_data(_puback(2), 1)
    assert session.acked() == [21]
    session.connection_lost(2)
    assert session.forget_inflight() == [20, 22]
    assert session.inflight == 0 and session.inflight_bytes == 0 and session.unacked() == []
    session.connect(3)
    session.receive_data(CONNACK, 4)
    assert session.data_to_send() == CONNECT_GW  # nothing to resend
    session.receive_data(_puback(1), 5)
    assert session.acked() == [] and session.counters["unknown_acks"] == 1
    _send(session, 1, first_token=30)
    assert session.data_to_send() == _publish_qos1(4)  # ids go on rather than reusing late ones


def test_disconnect_queues_disconnect_after_pending_output_and_keeps_inflight():
    session = _connected()
    _send(session, 1)
    session.disconnect()
    assert session.state == DISCONNECTED
    assert session.data_to_send() == _publish_qos1(1) + DISCONNECT
    assert session.unacked() == [0]
    session.receive_data(_puback(1), 1)  # too late: the session has stopped listening
    assert session.acked() == []
    session.disconnect()  # stopping twice is harmless
    assert session.data_to_send() == b""
