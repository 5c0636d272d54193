"""MQTT 3.1.1 codec tests; plain asserts so the same file runs under pytest and MicroPython."""

from gateway.core import mqtt


def _raises(error_type, function, *args, **kwargs):
    """The message of the error_type that function(*args) raises; fails if it raises none."""
    try:
        function(*args, **kwargs)
    except error_type as error:
        return str(error)
    raise AssertionError(f"expected {error_type.__name__} from {function!r}")


def _one(data):
    packets = mqtt.PacketReader().feed(data)
    assert len(packets) == 1, packets
    return packets[0]


# -- remaining length ----------------------------------------------------------------------


def test_length_boundaries_use_the_right_number_of_bytes():
    cases = [
        (0, 1),
        (127, 1),
        (128, 2),
        (16383, 2),
        (16384, 3),
        (2097151, 3),
        (2097152, 4),
        (268435455, 4),
    ]
    for value, size in cases:
        encoded = mqtt.encode_length(value)
        assert len(encoded) == size, (value, encoded)
        assert mqtt.decode_length(encoded) == (value, size)


def test_length_examples_from_the_specification():
    assert mqtt.encode_length(127) == b"\x7f"
    assert mqtt.encode_length(128) == b"\x80\x01"
    assert mqtt.encode_length(16383) == b"\xff\x7f"
    assert mqtt.encode_length(16384) == b"\x80\x80\x01"
    assert mqtt.encode_length(2097151) == b"\xff\xff\x7f"
    assert mqtt.encode_length(2097152) == b"\x80\x80\x80\x01"
    assert mqtt.encode_length(268435455) == b"\xff\xff\xff\x7f"


def test_length_beyond_four_bytes_is_rejected():
    assert "4 bytes" in _raises(mqtt.MqttProtocolError, mqtt.decode_length, b"\xff\xff\xff\xff\x01")
    assert "outside" in _raises(ValueError, mqtt.encode_length, 268435456)


def test_incomplete_length_asks_for_more():
    assert mqtt.decode_length(b"\x80") is None
    assert mqtt.decode_length(b"\xff\xff\xff") is None
    assert mqtt.decode_length(b"\x00\x05", 1) == (5, 2)


# -- packet ids ----------------------------------------------------------------------------


def test_packet_ids_wrap_and_skip_zero():
    assert mqtt.next_packet_id(1) == 2
    assert mqtt.next_packet_id(65534) == 65535
    assert mqtt.next_packet_id(65535) == 1
    assert mqtt.next_packet_id(0) == 1
    assert "outside" in _raises(ValueError, mqtt.puback, 0)
    assert "outside" in _raises(ValueError, mqtt.publish, "a", b"", 1, False, 65536)


# -- encoders against hand-made bytes ------------------------------------------------------


def test_connect_bytes_match_the_specification_layout():
    packet = mqtt.connect("gw-1", keepalive=60)
    assert packet == b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04gw-1"


def test_publish_bytes_qos0_and_qos1():
    assert mqtt.publish("a/b", b"hi") == b"\x30\x07\x00\x03a/bhi"
    assert mqtt.publish("a/b", b"hi", qos=1, packet_id=258) == b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert mqtt.publish("a", "x", retain=True)[0] == 0x31
    assert mqtt.publish("a", b"", qos=1, packet_id=1, dup=True)[0] == 0x3A


def test_small_fixed_packets():
    assert mqtt.puback(1) == b"\x40\x02\x00\x01"
    assert mqtt.pingreq() == b"\xc0\x00"
    assert mqtt.pingresp() == b"\xd0\x00"
    assert mqtt.disconnect() == b"\xe0\x00"
    assert mqtt.connack(False, 0) == b"\x20\x02\x00\x00"
    assert mqtt.subscribe(10, [("a/#", 1)]) == b"\x82\x08\x00\x0a\x00\x03a/#\x01"
    assert mqtt.unsubscribe(10, ["a/#"]) == b"\xa2\x07\x00\x0a\x00\x03a/#"


def test_publish_rejects_bad_topics_and_qos():
    assert "wildcard" in _raises(ValueError, mqtt.publish, "a/+", b"")
    assert "wildcard" in _raises(ValueError, mqtt.publish, "a/#", b"")
    assert "empty" in _raises(ValueError, mqtt.publish, "", b"")
    assert "qos" in _raises(ValueError, mqtt.publish, "a", b"", 3)
    assert "65535" in _raises(ValueError, mqtt.publish, "t" * 65536, b"")


def test_password_without_user_name_is_refused():
    assert "user name" in _raises(ValueError, mqtt.connect, "c", password=b"secret")


# -- round trips through the reader --------------------------------------------------------


def test_connect_round_trip_with_will_and_credentials():
    data = mqtt.connect(
        "gw-lab",
        keepalive=15,
        clean_session=False,
        username="user",
        password=b"pass",
        will_topic="gw/lab/status",
        will_payload=b"offline",
        will_qos=1,
        will_retain=True,
    )
    packet = _one(data)
    assert packet.type == mqtt.CONNECT
    assert packet.client_id == "gw-lab"
    assert packet.keepalive == 15
    assert packet.clean_session is False
    assert packet.username == "user"
    assert packet.password == b"pass"
    assert packet.will_topic == "gw/lab/status"
    assert packet.will_payload == b"offline"
    assert packet.will_qos == 1
    assert packet.will_retain is True


def test_connect_round_trip_minimal():
    packet = _one(mqtt.connect("c"))
    assert packet.client_id == "c"
    assert packet.clean_session is True
    assert packet.will_topic is None
    assert packet.username is None
    assert packet.password is None


def test_connack_round_trip():
    packet = _one(mqtt.connack(True, 5))
    assert packet.type == mqtt.CONNACK
    assert packet.session_present is True
    assert packet.return_code == 5
    assert mqtt.CONNACK_REASONS[5] == "not authorized"


def test_publish_round_trip_all_flags():
    for qos in (0, 1, 2):
        for retain in (False, True):
            packet_id = 77 if qos else 0
            dup = qos > 0
            data = mqtt.publish("gw/x/y", b"\x00\x01payload", qos, retain, packet_id, dup)
            packet = _one(data)
            assert packet.type == mqtt.PUBLISH
            assert packet.topic == "gw/x/y"
            assert packet.payload == b"\x00\x01payload"
            assert packet.qos == qos
            assert packet.retain == retain
            assert packet.dup == dup
            assert packet.packet_id == packet_id


def test_publish_round_trip_unicode_topic_and_large_payload():
    payload = bytes(range(256)) * 1000
    packet = _one(mqtt.publish("capteurs/température", payload, 1, packet_id=65535))
    assert packet.topic == "capteurs/température"
    assert packet.payload == payload
    assert packet.packet_id == 65535


def test_id_only_packets_round_trip():
    assert _one(mqtt.puback(65535)).packet_id == 65535
    assert _one(mqtt.puback(1)).type == mqtt.PUBACK
    packet = _one(mqtt.unsuback(300))
    assert (packet.type, packet.packet_id) == (mqtt.UNSUBACK, 300)


def test_qos2_handshake_packets_round_trip():
    for encode, kind in ((mqtt.pubrec, mqtt.PUBREC), (mqtt.pubrel, mqtt.PUBREL)):
        packet = _one(encode(513))
        assert (packet.type, packet.packet_id) == (kind, 513)
    assert mqtt.pubrel(1)[0] == 0x62  # PUBREL carries the fixed flags 0b0010
    assert _one(mqtt.pubcomp(7)).type == mqtt.PUBCOMP


def test_subscribe_and_suback_round_trip():
    packet = _one(mqtt.subscribe(9, [("a/+/c", 0), ("d/#", 1), ("e", 2)]))
    assert packet.type == mqtt.SUBSCRIBE
    assert packet.packet_id == 9
    assert packet.topics == [("a/+/c", 0), ("d/#", 1), ("e", 2)]
    packet = _one(mqtt.suback(9, [0, 1, 0x80]))
    assert packet.type == mqtt.SUBACK
    assert packet.packet_id == 9
    assert packet.granted == [0, 1, 0x80]


def test_unsubscribe_round_trip():
    packet = _one(mqtt.unsubscribe(4, ["a/#", "b"]))
    assert packet.type == mqtt.UNSUBSCRIBE
    assert packet.topics == ["a/#", "b"]


def test_empty_packets_round_trip():
    assert _one(mqtt.pingreq()).type == mqtt.PINGREQ
    assert _one(mqtt.pingresp()).type == mqtt.PINGRESP
    assert _one(mqtt.disconnect()).type == mqtt.DISCONNECT


def test_publish_encoder_matches_publish():
    encoder = mqtt.PublishEncoder()
    out = bytearray()
    expected = b""
    cases = [
        ("gw/a/b", b"{}", 0, False, 0),
        ("gw/a/b", b"x" * 200, 1, False, 1),
        ("gw/a/b", b"y" * 20000, 1, True, 65535),
        ("gw/other", b"", 0, True, 0),
        ("gw/q2", b"two", 2, False, 9),
    ]
    for topic, payload, qos, retain, packet_id in cases:
        encoder.append(out, topic, payload, qos, retain, packet_id)
        expected += mqtt.publish(topic, payload, qos, retain, packet_id)
    assert bytes(out) == expected
    packets = mqtt.PacketReader().feed(bytes(out))
    assert [p.payload for p in packets] == [case[1] for case in cases]
    assert [p.packet_id for p in packets] == [case[4] for case in cases]


def test_publish_encoder_checks_topics_and_bounds_its_cache():
    encoder = mqtt.PublishEncoder(max_topics=2)
    assert "wildcard" in _raises(ValueError, encoder.append, bytearray(), "a/#", b"")
    for index in range(10):
        encoder.append(bytearray(), "t/" + str(index), b"")
    assert len(encoder._topics) <= 2


# -- stream handling -----------------------------------------------------------------------


def _mixed_stream():
    return (
        mqtt.connack(False, 0)
        + mqtt.puback(1)
        + mqtt.publish("in/x", b"z" * 300, 1, packet_id=5)
        + mqtt.suback(2, [1])
        + mqtt.pingresp()
        + mqtt.puback(2)
        + mqtt.unsuback(3)
        + mqtt.publish("in/y", b"", 0)
    )


_MIXED_TYPES = [
    mqtt.CONNACK,
    mqtt.PUBACK,
    mqtt.PUBLISH,
    mqtt.SUBACK,
    mqtt.PINGRESP,
    mqtt.PUBACK,
    mqtt.UNSUBACK,
    mqtt.PUBLISH,
]


def test_many_packets_in_one_feed():
    packets = mqtt.PacketReader().feed(_mixed_stream())
    assert [p.type for p in packets] == _MIXED_TYPES
    assert packets[2].payload == b"z" * 300


def test_every_split_point_gives_the_same_packets():
    stream = _mixed_stream()
    for cut in range(len(stream) + 1):
        reader = mqtt.PacketReader()
        packets = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [p.type for p in packets] == _MIXED_TYPES, cut
        assert reader.buffered == 0


def test_byte_by_byte_feeding():
    stream = _mixed_stream()
    reader = mqtt.PacketReader()
    packets = []
    for index in range(len(stream)):
        packets += reader.feed(stream[index : index + 1])
    assert [p.type for p in packets] == _MIXED_TYPES
    assert packets[2].payload == b"z" * 300


def test_large_packet_in_many_chunks_waits_for_the_rest():
    payload = b"p" * 100000
    stream = mqtt.publish("big", payload, 1, packet_id=8)
    chunks = [stream[start : start + 1000] for start in range(0, len(stream), 1000)]
    reader = mqtt.PacketReader()
    for chunk in chunks[:-1]:
        assert reader.feed(chunk) == []
    assert reader.buffered == len(stream) - len(chunks[-1])
    done = reader.feed(chunks[-1])
    assert len(done) == 1
    assert done[0].payload == payload


def test_many_pubacks_and_a_split_one():
    data = b"".join(mqtt.puback(i) for i in range(1, 1001))
    reader = mqtt.PacketReader()
    first = reader.feed(data[:2001])
    rest = reader.feed(data[2001:])
    ids = [p.packet_id for p in first + rest]
    assert ids == list(range(1, 1001))


# -- malformed input -----------------------------------------------------------------------


def _rejects(data, words):
    message = _raises(mqtt.MqttProtocolError, mqtt.PacketReader().feed, data)
    assert words in message, message


def test_rejects_remaining_length_longer_than_four_bytes():
    _rejects(b"\x30\xff\xff\xff\xff\x01", "4 bytes")


def test_rejects_topic_length_beyond_the_packet():
    _rejects(b"\x30\x05\x00\x09abc", "beyond the packet")


def test_rejects_reserved_packet_types():
    _rejects(b"\x00\x00", "reserved")
    _rejects(b"\xf0\x00", "reserved")


def test_rejects_wrong_fixed_header_flags():
    _rejects(b"\x41\x02\x00\x01", "flags")
    _rejects(b"\x80\x05\x00\x01\x00\x01a", "flags")


def test_rejects_publish_with_qos_3_or_packet_id_0():
    _rejects(b"\x36\x05\x00\x01a\x00\x01", "QoS 3")
    _rejects(b"\x32\x05\x00\x01a\x00\x00", "packet id 0")


def test_rejects_publish_topic_with_wildcard_or_bad_utf8():
    _rejects(b"\x30\x03\x00\x01#", "wildcard")
    _rejects(b"\x30\x04\x00\x02\xff\xfe", "UTF-8")


def test_rejects_wrong_lengths_of_fixed_size_packets():
    _rejects(b"\x20\x03\x00\x00\x00", "remaining length 2")
    _rejects(b"\x40\x03\x00\x01\x00", "remaining length 2")
    _rejects(b"\xd0\x01\x00", "remaining length 0")


def test_rejects_bad_connack_and_suback_codes():
    _rejects(b"\x20\x02\x02\x00", "reserved bits")
    _rejects(b"\x90\x03\x00\x01\x03", "return code")


def test_rejects_packets_over_the_size_limit():
    reader = mqtt.PacketReader(max_packet_size=1000)
    data = mqtt.publish("t", b"x" * 2000)
    message = _raises(mqtt.MqttProtocolError, reader.feed, data[:5])
    assert "limit" in message


def test_good_packets_before_the_bad_one_are_not_returned_as_valid():
    # The error is raised for the whole feed: the stream is not trusted after it.
    data = mqtt.puback(1) + b"\x41\x02\x00\x01"
    _rejects(data, "flags")
