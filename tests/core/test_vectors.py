"""The hex test vectors in tests/vectors/v1.json decode and encode, on CPython and MicroPython."""

import json

from gateway.core import cobs
from gateway.core import protocol as p


def _vectors_path():
    # No os.path on MicroPython: cut __file__ at its last two slashes (tests/core/x.py).
    here = __file__.replace("\\", "/")
    tests = here[: here.rfind("/", 0, here.rfind("/"))] if here.count("/") >= 2 else "tests"
    return tests + "/vectors/v1.json"


def _load():
    with open(_vectors_path()) as file:
        return json.load(file)


VECTORS = _load()
VALID = VECTORS["valid"]


def _hex(text):
    return bytes.fromhex(text)


def _fields(kind, payload):
    """The payload parsed into the vector's "fields" shape."""
    if kind == p.HELLO:
        return p.parse_hello(payload)
    if kind == p.DATA:
        return {"records": [[s, dts, values] for s, dts, values in p.parse_data(payload)]}
    if kind == p.ACK:
        return {}
    if kind == p.NACK:
        code, expected, reason = p.parse_nack(payload)
        return {"code": code, "expected": expected, "reason": reason}
    if kind == p.CMD:
        request_id, name, args = p.parse_cmd(payload)
        return {"request_id": request_id, "cmd": name, "args": args}
    if kind == p.RESP:
        request_id, status, result = p.parse_resp(payload)
        return {"request_id": request_id, "status": status, "result": result}
    if kind == p.HEARTBEAT:
        uptime_ms, queued = p.parse_heartbeat(payload)
        return {"uptime_ms": uptime_ms, "queued": queued}
    level, text = p.parse_log(payload)
    return {"level": level, "text": text}


def _payload(kind, fields):
    """The payload built from the vector's fields by the public encoders."""
    if kind == p.HELLO:
        return p.hello_payload(fields)
    if kind == p.DATA:
        return p.data_payload([(s, dts, values) for s, dts, values in fields["records"]])
    if kind == p.ACK:
        return b""
    if kind == p.NACK:
        return p.nack_payload(fields["code"], fields["expected"], fields["reason"])
    if kind == p.CMD:
        return p.cmd_payload(fields["request_id"], fields["cmd"], fields["args"])
    if kind == p.RESP:
        return p.resp_payload(fields["request_id"], fields["status"], fields["result"])
    if kind == p.HEARTBEAT:
        return p.heartbeat_payload(fields["uptime_ms"], fields["queued"])
    return p.log_payload(fields["level"], fields["text"])


PARSERS = {
    p.HELLO: p.parse_hello,
    p.DATA: p.parse_data,
    p.NACK: p.parse_nack,
    p.CMD: p.parse_cmd,
    p.RESP: p.parse_resp,
    p.HEARTBEAT: p.parse_heartbeat,
    p.LOG: p.parse_log,
}


def test_vectors_cover_every_type_and_every_error():
    assert sorted(set([v["type"] for v in VALID])) == sorted(p.TYPE_NAMES)
    codes = set()
    for vector in VECTORS["bad_frames"]:
        for item in vector["expect"]:
            codes.add(item)
    for code in p.FRAME_ERRORS:
        assert code in codes, code
    assert len(VECTORS["bad_payloads"]) >= 10


def test_valid_vectors_decode_to_their_fields():
    for vector in VALID:
        name = vector["name"]
        frame_bytes = _hex(vector["frame"])
        assert frame_bytes[-1] == 0 and b"\x00" not in frame_bytes[:-1], name
        assert cobs.decode(frame_bytes[:-1]) == _hex(vector["raw"]), name
        got = p.FrameDecoder().feed(frame_bytes)
        assert len(got) == 1 and isinstance(got[0], p.Frame), (name, got)
        frame = got[0]
        assert frame.version == 1, name
        assert (frame.type, frame.seq, frame.flags) == (
            vector["type"],
            vector["seq"],
            vector["flags"],
        )
        assert frame.payload == _hex(vector["payload"]), name
        assert _fields(frame.type, frame.payload) == vector["fields"], name


def test_valid_vectors_encode_to_their_bytes():
    for vector in VALID:
        name = vector["name"]
        payload = _payload(vector["type"], vector["fields"])
        assert payload == _hex(vector["payload"]), name
        encoded = p.encode_frame(vector["type"], vector["seq"], payload, vector["flags"])
        assert encoded == _hex(vector["frame"]), name


def test_raw_frames_carry_header_and_crc_as_specified():
    for vector in VALID:
        raw = _hex(vector["raw"])
        seq = vector["seq"]
        header = bytes((1, vector["type"], vector["flags"], seq & 0xFF, seq >> 8))
        assert raw[:5] == header, vector["name"]
        assert raw[5:-4] == _hex(vector["payload"]), vector["name"]
        crc = p.crc32_fallback(raw[:-4])
        assert raw[-4:] == bytes((crc & 0xFF, crc >> 8 & 0xFF, crc >> 16 & 0xFF, crc >> 24))


def test_all_valid_vectors_decode_from_one_stream_in_any_chunking():
    stream = b"".join([_hex(vector["frame"]) for vector in VALID])
    expected = [_hex(vector["raw"])[5:-4] for vector in VALID]
    for size in (1, 5, 64, 300, len(stream)):
        decoder = p.FrameDecoder()
        got = []
        for start in range(0, len(stream), size):
            got += decoder.feed(stream[start : start + size])
        assert [frame.payload for frame in got] == expected, size


def test_bad_frames_give_their_errors_and_keep_the_good_frames():
    by_name = {}
    for vector in VALID:
        by_name["frame:" + vector["name"]] = p.decode_frame(_hex(vector["frame"])[:-1])
    for vector in VECTORS["bad_frames"]:
        name = vector["name"]
        if "encoded" in vector:
            try:
                p.decode_frame(_hex(vector["encoded"]))
            except p.ProtocolError as error:
                assert [error.code] == vector["expect"], (name, error)
                continue
            raise AssertionError(name + " decoded")
        decoder = p.FrameDecoder()
        got = decoder.feed(_hex(vector["stream"]))
        assert len(got) == len(vector["expect"]), (name, got)
        for item, expect in zip(got, vector["expect"]):
            if expect.startswith("frame:"):
                assert item == by_name[expect], (name, item)
            else:
                assert isinstance(item, p.ProtocolError) and item.code == expect, (name, item)
                assert decoder.counters[expect] >= 1, name


def test_bad_payloads_decode_as_frames_and_fail_their_parser():
    for vector in VECTORS["bad_payloads"]:
        frame = p.decode_frame(_hex(vector["frame"])[:-1])
        assert frame.type == vector["type"] and frame.payload == _hex(vector["payload"])
        try:
            PARSERS[frame.type](frame.payload)
        except p.ProtocolError as error:
            assert error.code == vector["expect"], (vector["name"], error)
            continue
        raise AssertionError(vector["name"] + " parsed")
