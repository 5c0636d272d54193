"""Wire protocol v1 codec tests; plain asserts so they run under pytest and MicroPython."""

import struct

from gateway.core import cobs
from gateway.core import protocol as p


def _error(function, *args):
    """The ProtocolError that function(*args) raises; fails if it raises none."""
    try:
        function(*args)
    except p.ProtocolError as error:
        return error
    raise AssertionError(f"expected ProtocolError from {function!r}{args!r}")


def _bitwise_crc32(data):
    """CRC-32 written out bit by bit from its definition, independent of binascii."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _raw(version, kind, flags, seq, payload):
    body = bytes((version, kind, flags, seq & 0xFF, seq >> 8)) + payload
    return body + struct.pack("<I", _bitwise_crc32(body))


def _wire(raw):
    return cobs.encode(raw) + b"\x00"


HELLO = {
    "device": "bench-1",
    "fw": "1.0.0",
    "proto": [1],
    "boot": 305419896,
    "oldest": 0,
    "max_frame": 512,
    "streams": [{"name": "env", "fields": ["temperature", "humidity"], "rate": 1.0}],
    "caps": ["cmd", "log", "heartbeat"],
}


# -- CRC and the hand-derived frame (docs/protocol.md, "Worked example") -------------------


def test_crc32_matches_the_standard_check_value():
    assert p.crc32(b"123456789") == 0xCBF43926
    assert p.crc32_fallback(b"123456789") == 0xCBF43926
    assert _bitwise_crc32(b"123456789") == 0xCBF43926


def test_crc32_fallback_agrees_with_the_crc_in_use():
    for data in (b"", b"\x00", b"\xff" * 300, bytes(range(256))):
        assert p.crc32_fallback(data) == p.crc32(data), data


def test_ack_frame_derived_by_hand():
    # header 01 03 00 07 00, CRC-32 of it 0xa6b6e784 -> 84 e7 b6 a6; COBS blocks
    # [01 03] [07] [84 e7 b6 a6] -> 03 01 03 | 02 07 | 05 84 e7 b6 a6, then the delimiter.
    assert _bitwise_crc32(b"\x01\x03\x00\x07\x00") == 0xA6B6E784
    expected = b"\x03\x01\x03\x02\x07\x05\x84\xe7\xb6\xa6\x00"
    assert p.encode_frame(p.ACK, 7) == expected
    assert p.decode_frame(expected[:-1]) == p.Frame(p.ACK, 7)


def test_heartbeat_frame_derived_by_hand():
    # payload 80 ee 36 00 | 03 00 (3,600,000 ms, 3 queued) after header 01 07 00 00 00.
    body = b"\x01\x07\x00\x00\x00\x80\xee\x36\x00\x03\x00"
    crc = struct.pack("<I", _bitwise_crc32(body))
    # zeros split it into [01 07] [] [] [80 ee 36] [03] [crc]: one code byte per piece.
    expected = b"\x03\x01\x07\x01\x01\x04\x80\xee\x36\x02\x03\x05" + crc + b"\x00"
    assert b"\x00" not in crc  # else the hand-written COBS above would be wrong
    assert p.encode_frame(p.HEARTBEAT, 0, p.heartbeat_payload(3600000, 3)) == expected


# -- frames --------------------------------------------------------------------------------


def test_every_type_round_trips():
    for kind in p.TYPE_NAMES:
        for seq, flags, payload in ((0, 0, b""), (65535, 1, b"\x00\x01\xff"), (258, 2, b"x" * 503)):
            frame = p.decode_frame(p.encode_frame(kind, seq, payload, flags)[:-1])
            assert frame == p.Frame(kind, seq, flags, payload, p.VERSION), (kind, seq)
            assert (frame.type, frame.seq, frame.flags, frame.payload, frame.version) == (
                kind,
                seq,
                flags,
                payload,
                1,
            )


def test_encode_frame_ends_with_the_only_zero():
    frame = p.encode_frame(p.DATA, 0, b"\x00" * 20)
    assert frame[-1] == 0 and b"\x00" not in frame[:-1]


def test_largest_frame_fits_the_maximum_encoding():
    frame = p.encode_frame(p.LOG, 0x0101, b"\x01" * p.MAX_PAYLOAD, 1)
    assert len(frame) - 1 <= p.MAX_ENCODED == 515
    assert p.MAX_FRAME == 512 and p.MAX_PAYLOAD == 503 and p.MIN_FRAME == 9
    assert cobs.DEFAULT_MAX_ENCODED == p.MAX_ENCODED  # a splitter's default fits any frame
    assert p.decode_frame(frame[:-1]).payload == b"\x01" * p.MAX_PAYLOAD


def test_encode_frame_refuses_what_cannot_be_sent():
    error = _error(p.encode_frame, p.LOG, 0, b"x" * 504)
    assert error.code == "too_large" and "504" in error.reason
    for args in ((p.DATA, 65536), (p.DATA, -1), (256, 0), (p.DATA, 0, b"", 256)):
        try:
            p.encode_frame(*args)
        except ValueError:
            continue
        raise AssertionError(f"encoded {args!r}")


def test_frame_encode_method_and_repr():
    frame = p.Frame(p.DATA, 5, p.FLAG_RETRANSMIT, b"\x01")
    assert frame.encode() == p.encode_frame(p.DATA, 5, b"\x01", p.FLAG_RETRANSMIT)
    assert "DATA" in repr(frame) and "seq=5" in repr(frame)
    assert frame != p.Frame(p.DATA, 6, p.FLAG_RETRANSMIT, b"\x01")
    assert frame != "frame"


def test_decode_frame_errors_name_the_kind():
    good = _raw(1, p.ACK, 0, 7, b"")
    cases = [
        (cobs.encode(good[:-1] + b"\x85"), "crc"),
        (cobs.encode(good[:8]), "truncated"),
        (cobs.encode(b""), "truncated"),
        (b"\x09\x01", "cobs"),
        (b"\x02\x01\x00\x01", "cobs"),
        (b"", "cobs"),
        (b"\x01" * 516, "too_large"),
        (cobs.encode(_raw(1, p.LOG, 0, 0, b"\x00" * 504)), "too_large"),
        (cobs.encode(_raw(2, p.ACK, 0, 7, b"")), "version"),
        (cobs.encode(_raw(1, 0x09, 0, 7, b"")), "type"),
        (cobs.encode(_raw(1, 0x00, 0, 7, b"")), "type"),
    ]
    for encoded, code in cases:
        error = _error(p.decode_frame, encoded)
        assert error.code == code, (encoded, error)
        assert str(error).startswith(code + ": ")
        assert isinstance(error, ValueError)


def test_version_and_type_errors_carry_the_frame_for_the_nack():
    error = _error(p.decode_frame, cobs.encode(_raw(2, p.DATA, 1, 9, b"\x01")))
    assert error.frame == p.Frame(p.DATA, 9, 1, b"\x01", 2)
    error = _error(p.decode_frame, cobs.encode(_raw(1, 0x42, 0, 3, b"")))
    assert error.frame.type == 0x42 and error.frame.seq == 3
    assert _error(p.decode_frame, b"\x09\x01").frame is None


def test_reserved_flag_bits_are_kept_not_rejected():
    frame = p.decode_frame(cobs.encode(_raw(1, p.DATA, 0xF1, 0, b"")))
    assert frame.flags == 0xF1 and frame.flags & p.FLAG_RETRANSMIT


# -- FrameDecoder --------------------------------------------------------------------------


def test_decoder_yields_frames_and_errors_in_stream_order():
    ack = p.encode_frame(p.ACK, 1)
    data = p.encode_frame(p.DATA, 2, b"\x00\x01")
    bad_crc = _wire(_raw(1, p.ACK, 0, 7, b"")[:-1] + b"\x00")
    stream = b"\x00" + ack + bad_crc + b"\x41" * 600 + b"\x00" + data + b"\x01\x00" + ack
    decoder = p.FrameDecoder()
    got = decoder.feed(stream)
    kinds = [item.code if isinstance(item, p.ProtocolError) else item.seq for item in got]
    assert kinds == [1, "crc", "too_large", 2, "truncated", 1], kinds
    assert decoder.counters == {
        "frames": 3,
        "cobs": 0,
        "crc": 1,
        "truncated": 1,
        "too_large": 1,
        "version": 0,
        "type": 0,
    }


def test_decoder_handles_any_chunking():
    frames = [p.encode_frame(p.DATA, seq, bytes(range(seq, seq + 40))) for seq in range(12)]
    stream = b"".join(frames)
    for size in (1, 2, 3, 7, 64, 515, 516, 1000):
        decoder = p.FrameDecoder()
        got = []
        for start in range(0, len(stream), size):
            got += decoder.feed(stream[start : start + size])
        assert [frame.seq for frame in got] == list(range(12)), size
        assert decoder.counters["frames"] == 12


def test_decoder_drops_an_oversize_run_and_keeps_the_frame_after_it():
    decoder = p.FrameDecoder()
    got = decoder.feed(b"\x41" * 300)
    got += decoder.feed(b"\x41" * 300)
    got += decoder.feed(b"\x41\x00" + p.encode_frame(p.ACK, 9))
    assert [getattr(item, "code", None) for item in got] == ["too_large", None]
    assert got[1] == p.Frame(p.ACK, 9)


def test_decoder_reset_forgets_a_partial_frame():
    decoder = p.FrameDecoder()
    frame = p.encode_frame(p.ACK, 3)
    assert decoder.feed(frame[:4]) == []
    decoder.reset()
    assert decoder.feed(frame) == [p.Frame(p.ACK, 3)]


# -- sequence numbers ----------------------------------------------------------------------


def test_seq_arithmetic_wraps_at_16_bits():
    assert p.seq_add(65535, 1) == 0
    assert p.seq_add(65530, 10) == 4
    assert p.seq_add(5, -6) == 65535
    assert p.seq_diff(0, 65535) == 1
    assert p.seq_diff(65535, 0) == -1
    assert p.seq_diff(100, 100) == 0
    assert p.seq_diff(32767, 0) == 32767
    assert p.seq_diff(32768, 0) == -32768  # half way round: never "newer"
    assert p.seq_newer(0, 65535) and not p.seq_newer(65535, 0)
    assert not p.seq_newer(7, 7)
    assert not p.seq_newer(32768, 0) and p.seq_newer(32767, 0)


# -- payloads ------------------------------------------------------------------------------


def test_hello_round_trips_and_fills_defaults():
    assert p.parse_hello(p.hello_payload(HELLO)) == HELLO
    minimal = {
        "device": "d",
        "fw": "0",
        "proto": [1],
        "boot": 0,
        "oldest": 0,
        "streams": [{"name": "s", "fields": []}],
    }
    parsed = p.parse_hello(p.hello_payload(minimal))
    assert parsed["max_frame"] == 512 and parsed["caps"] == []
    assert parsed["streams"][0]["rate"] == 0
    for limit in (64, 512):  # the range a device may announce
        hello = dict(HELLO)
        hello["max_frame"] = limit
        assert p.parse_hello(p.hello_payload(hello))["max_frame"] == limit
    for oldest in (0, 65535):  # the whole seq range: the oldest frame may sit anywhere
        hello = dict(HELLO)
        hello["oldest"] = oldest
        assert p.parse_hello(p.hello_payload(hello))["oldest"] == oldest


def test_a_realistic_hello_fits_one_frame():
    # Why MAX_FRAME is 512 (docs/decisions.md): two streams of five fields already exceed
    # the 247 bytes a 256-byte frame could carry; three streams of nine fields fit in 503.
    two = dict(HELLO)
    two["streams"] = [
        {"name": "env", "fields": ["temperature", "humidity", "pressure"], "rate": 1.0},
        {"name": "power", "fields": ["voltage", "current"], "rate": 1.0},
    ]
    assert len(p.hello_payload(HELLO)) == 196
    assert 247 < len(p.hello_payload(two)) == 266 <= p.MAX_PAYLOAD
    three = dict(two)
    three["streams"] = two["streams"] + [
        {"name": "air", "fields": ["co2", "tvoc", "pm2_5", "pm10"], "rate": 0.2}
    ]
    frame = p.encode_frame(p.HELLO, 0, p.hello_payload(three))
    assert p.parse_hello(p.decode_frame(frame[:-1]).payload) == three


def test_hello_errors_say_what_is_wrong():
    def reason(**changes):
        hello = dict(HELLO)
        hello.update(changes)
        return _error(p.parse_hello, p.hello_payload(hello)).reason

    assert "device" in reason(device="")
    assert "fw" in reason(fw=1)
    assert "proto" in reason(proto=[])
    assert "proto" in reason(proto=["1"])
    assert "boot" in reason(boot=-1)
    assert "boot" in reason(boot=2**32)
    assert "boot" in reason(boot=True)
    for oldest in (-1, 65536, True, "0", 1.0, None):
        assert reason(oldest=oldest) == "HELLO oldest must be an integer 0..65535", oldest
    assert "max_frame" in reason(max_frame=513)
    assert "max_frame" in reason(max_frame=63)
    assert "caps" in reason(caps="cmd")
    assert "streams" in reason(streams={})
    assert "streams[0] is not" in reason(streams=[1])
    assert "name" in reason(streams=[{"fields": []}])
    assert "fields" in reason(streams=[{"name": "a", "fields": [1]}])
    assert "rate" in reason(streams=[{"name": "a", "fields": [], "rate": -1}])
    assert "repeats" in reason(streams=[{"name": "a", "fields": []}, {"name": "a", "fields": []}])
    assert "lacks 'boot'" in _error(p.parse_hello, b'{"device":"d","fw":"","proto":[1]}').reason
    without_oldest = dict(HELLO)
    del without_oldest["oldest"]
    assert _error(p.parse_hello, p.hello_payload(without_oldest)).reason == "HELLO lacks 'oldest'"
    assert "JSON" in _error(p.parse_hello, b"{").reason
    assert "UTF-8" in _error(p.parse_hello, b'{"device":"\xff"}').reason
    assert "object" in _error(p.parse_hello, b"[]").reason
    assert _error(p.parse_hello, b"{").code == "payload"


def test_dump_json_is_canonical():
    assert p.dump_json({"b": 1, "a": [True, None, 1.5, "é"]}) == '{"a":[true,null,1.5,"é"],"b":1}'
    assert p.dump_json({"z": {"y": 1, "x": 2}}) == '{"z":{"x":2,"y":1}}'
    assert p.dump_json(("a", 1)) == '["a",1]'


def test_data_round_trips_records_in_order():
    records = [(0, 1000, [21.5, 40.25]), (3, 4294967295, []), (255, 0, [-1.0] * 10)]
    payload = p.data_payload(records)
    assert payload[:6] == b"\x00\xe8\x03\x00\x00\x02"
    assert payload[6:14] == b"\x00\x00\xac\x41\x00\x00\x21\x42"
    assert p.parse_data(payload) == [
        (0, 1000, [21.5, 40.25]),
        (3, 4294967295, []),
        (255, 0, [-1.0] * 10),
    ]


def test_data_values_come_back_as_the_decimals_the_device_meant():
    values = [40.2, 0.1, -273.15, 1e-07, 3.4028234663852886e38, 16777217.0, 1.17549435e-38]
    parsed = p.parse_data(p.data_payload([(0, 0, values)]))[0][2]
    assert parsed[:5] == [40.2, 0.1, -273.15, 1e-07, 3.4028235e38], parsed
    assert parsed[5] == 16777216.0  # float32 has 24 bits of mantissa
    assert struct.pack("<7f", *parsed) == struct.pack("<7f", *values)


def test_data_keeps_nan_and_infinity():
    inf = float("inf")
    parsed = p.parse_data(p.data_payload([(0, 0, [inf, -inf, float("nan")])]))[0][2]
    assert parsed[0] == inf and parsed[1] == -inf and parsed[2] != parsed[2]


def test_data_dts_wraps_and_bad_records_are_refused():
    assert p.parse_data(p.data_payload([(0, 2**32 + 5, [1.0])])) == [(0, 5, [1.0])]
    for records in (
        [],
        [(256, 0, [1.0])],
        [(-1, 0, [])],
        [(0, 0, [0.0] * 256)],
        [(0, 0, [0.0] * 125)],
    ):
        try:
            p.data_payload(records)
        except ValueError:
            continue
        raise AssertionError(f"encoded {records!r}")


def test_data_errors_say_what_is_wrong():
    assert "without records" in _error(p.parse_data, b"").reason
    assert (
        "count 3 needs 12 bytes, 8 left"
        in _error(p.parse_data, b"\x00\xe8\x03\x00\x00\x03" + b"\x00" * 8).reason
    )
    assert "record 1" in _error(p.parse_data, p.data_payload([(0, 0, [1.0])]) + b"\x00").reason


def test_check_data_compares_records_with_hello_streams():
    streams = HELLO["streams"]
    p.check_data([(0, 0, [1.0, 2.0])], streams)
    assert "stream index 1" in _error(p.check_data, [(1, 0, [1.0, 2.0])], streams).reason
    assert "3 values" in _error(p.check_data, [(0, 0, [1.0, 2.0, 3.0])], streams).reason


def test_nack_round_trips_and_cuts_long_reasons_at_a_character():
    assert p.nack_payload(p.NACK_OUT_OF_ORDER, 42, "gap") == b"\x04\x2a\x00gap"
    assert p.parse_nack(b"\x03\x00\x00") == (p.NACK_NEED_HELLO, 0, "")
    long = p.nack_payload(p.NACK_BAD_PAYLOAD, 0, "é" * 300)
    assert len(long) == 3 + 500 and p.parse_nack(long)[2] == "é" * 250
    assert "at least 3" in _error(p.parse_nack, b"\x04\x00").reason
    assert p.NACK_NAMES[p.NACK_TOO_LARGE] == "TOO_LARGE" and len(p.NACK_NAMES) == 9


def test_cmd_round_trips():
    payload = p.cmd_payload(513, "set_rate", {"stream": "env", "rate": 2.0})
    assert payload == b'\x01\x02{"args":{"rate":2.0,"stream":"env"},"cmd":"set_rate"}'
    assert p.parse_cmd(payload) == (513, "set_rate", {"stream": "env", "rate": 2.0})
    assert p.parse_cmd(p.cmd_payload(1, "ping")) == (1, "ping", {})
    assert p.parse_cmd(b'\x01\x00{"cmd":"info"}') == (1, "info", {})
    assert "request id" in _error(p.parse_cmd, b"\x01\x00").reason
    assert '"cmd"' in _error(p.parse_cmd, b'\x01\x00{"cmd":1}').reason
    assert "args" in _error(p.parse_cmd, b'\x01\x00{"cmd":"x","args":[]}').reason


def test_resp_round_trips():
    payload = p.resp_payload(7, p.STATUS_OK, {"pong": True, "uptime_ms": 5})
    assert payload == b'\x07\x00\x00{"pong":true,"uptime_ms":5}'
    assert p.parse_resp(payload) == (7, 0, {"pong": True, "uptime_ms": 5})
    assert p.parse_resp(p.resp_payload(8, p.NACK_BUSY)) == (8, p.NACK_BUSY, {})
    assert "JSON" in _error(p.parse_resp, b"\x07\x00\x00{").reason


def test_heartbeat_round_trips_and_saturates():
    assert p.heartbeat_payload(3600000, 3) == b"\x80\xee\x36\x00\x03\x00"
    assert p.parse_heartbeat(p.heartbeat_payload(2**32 + 1, 70000)) == (1, 65535)
    assert p.parse_heartbeat(p.heartbeat_payload(1, 2) + b"\x09") == (1, 2)  # later fields
    assert "needs 6" in _error(p.parse_heartbeat, b"\x00" * 5).reason


def test_log_round_trips():
    assert p.log_payload(p.LOG_ERROR, "über") == b"\x28\xc3\xbcber"
    assert p.parse_log(b"\x28\xc3\xbcber") == (40, "über")
    assert len(p.log_payload(p.LOG_INFO, "x" * 1000)) == p.MAX_PAYLOAD
    assert "without a level" in _error(p.parse_log, b"").reason
    assert "UTF-8" in _error(p.parse_log, b"\x14\xff").reason
