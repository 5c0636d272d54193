"""Write tests/vectors/v1.json, the wire protocol v1 test vectors: python tests/vectors/generate.py

Every bad vector states the error it must produce; the script checks our codec agrees
before writing, so a codec change that alters a vector's meaning fails here, loudly.
"""

from __future__ import annotations

import json
import struct
import sys
from binascii import crc32
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.core import cobs  # noqa: E402
from gateway.core import protocol as p  # noqa: E402

OUTPUT = Path(__file__).resolve().parent / "v1.json"

HELLO = {
    "device": "bench-1",
    "fw": "1.0.0",
    "proto": [1],
    "boot": 0x12345678,
    "oldest": 0,  # just booted: no DATA held, seq 0 comes next
    "max_frame": 512,
    "streams": [{"name": "env", "fields": ["temperature", "humidity"], "rate": 1.0}],
    "caps": ["cmd", "log", "heartbeat"],
}

# The most values one DATA record can carry in a frame: 6 + 4 * 124 = 502 of 503 bytes.
LARGEST_RECORD = (p.MAX_PAYLOAD - 6) // 4

# 124 values whose float32 bytes hold no zero (1.1 is cd cc 8c 3f): with the RETRANSMIT
# flag and a seq and CRC without zeros the whole 511-byte frame is one run, which needs two
# full COBS blocks (code 0xff) and gives the longest encoding this payload size allows.
NO_ZERO_VALUES = [1.1] * LARGEST_RECORD


def _seq_without_zeros(kind: int, flags: int, payload: bytes) -> int:
    """The first seq from 0x0101 whose header and CRC contain no 0x00 byte."""
    for seq in range(0x0101, 0x10000):
        if b"\x00" not in raw_frame(1, kind, flags, seq, payload):
            return seq
    raise AssertionError("no seq without zeros")


# (name, type, seq, flags, fields): fields are what the payload parser returns.
VALID: list[tuple[str, int, int, int, dict[str, Any]]] = [
    ("hello", p.HELLO, 0, 0, HELLO),
    (
        "hello-minimal",
        p.HELLO,
        0,
        0,
        {
            "device": "n",
            "fw": "",
            "proto": [1, 2],
            "boot": 0,
            "oldest": 65535,  # holding a frame numbered just before the wrap
            "max_frame": 128,
            "streams": [],
            "caps": [],
        },
    ),
    ("data", p.DATA, 0, 0, {"records": [[0, 1000, [21.5, 40.25]]]}),
    (
        "data-two-records-retransmit-wrap",
        p.DATA,
        0xFFFF,
        p.FLAG_RETRANSMIT,
        {"records": [[0, 4294967295, [0.1, -3.0]], [1, 0, [1e-07, 123456.0, 40.2]]]},
    ),
    (
        "data-largest",
        p.DATA,
        0x0102,
        0,
        {"records": [[2, 65536, [float(i) for i in range(LARGEST_RECORD)]]]},
    ),
    (
        "data-no-zero-byte",
        p.DATA,
        -1,  # replaced by _seq_without_zeros below
        p.FLAG_RETRANSMIT,
        {"records": [[1, 0x01010101, NO_ZERO_VALUES]]},
    ),
    ("ack", p.ACK, 7, 0, {}),
    ("ack-zero", p.ACK, 0, 0, {}),
    ("ack-fresh", p.ACK, p.FRESH_SEQ, p.FLAG_FRESH, {}),
    (
        "nack-out-of-order",
        p.NACK,
        0,
        0,
        {"code": p.NACK_OUT_OF_ORDER, "expected": 42, "reason": "expected 42, got 44"},
    ),
    ("nack-need-hello", p.NACK, 0, 0, {"code": p.NACK_NEED_HELLO, "expected": 0, "reason": ""}),
    (
        "nack-unsupported-version",
        p.NACK,
        0,
        0,
        {"code": p.NACK_UNSUPPORTED_VERSION, "expected": 0, "reason": "version 2"},
    ),
    ("cmd-ping", p.CMD, 0, 0, {"request_id": 1, "cmd": "ping", "args": {}}),
    (
        "cmd-set-rate",
        p.CMD,
        0,
        0,
        {"request_id": 2, "cmd": "set_rate", "args": {"stream": "env", "rate": 2.0}},
    ),
    (
        "cmd-set-config",
        p.CMD,
        0,
        0,
        {"request_id": 65535, "cmd": "set_config", "args": {"sample_ms": 500, "label": "lab"}},
    ),
    (
        "resp-ping",
        p.RESP,
        0,
        0,
        {"request_id": 1, "status": 0, "result": {"pong": True, "uptime_ms": 123456}},
    ),
    (
        "resp-unknown-command",
        p.RESP,
        0,
        0,
        {
            "request_id": 3,
            "status": p.NACK_UNKNOWN_COMMAND,
            "result": {"error": "unknown command 'selfdestruct'"},
        },
    ),
    ("heartbeat", p.HEARTBEAT, 0, 0, {"uptime_ms": 3600000, "queued": 3}),
    ("log", p.LOG, 0, 0, {"level": p.LOG_WARNING, "text": "sensor timeout"}),
    ("log-utf8", p.LOG, 0, 0, {"level": p.LOG_INFO, "text": "température 21.5 °C"}),
    ("log-largest", p.LOG, 0x1234, 0, {"level": p.LOG_DEBUG, "text": "x" * (p.MAX_PAYLOAD - 1)}),
]


def payload_for(kind: int, fields: dict[str, Any]) -> bytes:
    """The payload from a vector's fields, through the public payload encoders."""
    if kind == p.HELLO:
        return p.hello_payload(fields)
    if kind == p.DATA:
        return p.data_payload([tuple(record) for record in fields["records"]])
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


def raw_frame(version: int, kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    """A decoded frame built here with struct and binascii, not through encode_frame."""
    body = struct.pack("<BBBH", version, kind, flags, seq) + payload
    return body + struct.pack("<I", crc32(body))


def wire(raw: bytes) -> bytes:
    return cobs.encode(raw) + b"\x00"


def valid_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name, kind, seq, flags, fields in VALID:
        payload = payload_for(kind, fields)
        if seq < 0:
            seq = _seq_without_zeros(kind, flags, payload)
        frame = p.encode_frame(kind, seq, payload, flags)
        assert frame == wire(raw_frame(1, kind, flags, seq, payload)), name
        vectors.append(
            {
                "name": name,
                "type": kind,
                "seq": seq,
                "flags": flags,
                "fields": fields,
                "payload": payload.hex(),
                "raw": raw_frame(1, kind, flags, seq, payload).hex(),
                "frame": frame.hex(),
            }
        )
    return vectors


def bad_frames(valid: dict[str, bytes]) -> list[dict[str, Any]]:
    """(name, stream bytes, what FrameDecoder yields: error codes or "frame:<valid name>")."""
    heartbeat = raw_frame(1, p.HEARTBEAT, 0, 0, p.heartbeat_payload(3600000, 3))
    wrong_crc = heartbeat[:-1] + bytes([heartbeat[-1] ^ 0x01])
    flipped = bytearray(heartbeat)
    flipped[6] ^= 0x10  # one bit of the uptime
    # 513 decoded bytes (one too many) with a correct CRC; its zeros keep the encoding short.
    too_long = raw_frame(1, p.LOG, 0, 0, b"\x14" + b"\x00" * (p.MAX_PAYLOAD))
    past_end = bytearray(cobs.encode(heartbeat))
    past_end[0] = 0x30  # the first code byte claims 47 data bytes in a 12-byte frame
    cases = [
        ("wrong-crc", wire(wrong_crc), ["crc"]),
        ("flipped-bit", wire(bytes(flipped)), ["crc"]),
        ("truncated-8-bytes", wire(heartbeat[:8]), ["truncated"]),
        ("truncated-1-byte", b"\x02\x01\x00", ["truncated"]),
        ("oversize-encoded", b"\x41" * (p.MAX_ENCODED + 1) + b"\x00", ["too_large"]),
        ("oversize-decoded", wire(too_long), ["too_large"]),
        ("unknown-type-9", wire(raw_frame(1, 0x09, 0, 0, b"")), ["type"]),
        ("unknown-type-0", wire(raw_frame(1, 0x00, 0, 0, b"")), ["type"]),
        ("wrong-version-2", wire(raw_frame(2, p.DATA, 0, 5, b"")), ["version"]),
        ("wrong-version-0", wire(raw_frame(0, p.HELLO, 0, 0, b"{}")), ["version"]),
        ("cobs-code-past-end", bytes(past_end) + b"\x00", ["cobs"]),
        ("cobs-cut-short", wire(heartbeat)[:-3] + b"\x00", ["cobs"]),
        (
            "garbage-then-good",
            b"\x00\x00\xff\xfe\x00" + valid["ack"] + b"\x41" * 600 + valid["heartbeat"],
            ["cobs", "frame:ack", "too_large"],
        ),
        (
            "good-bad-good",
            valid["data"] + wire(wrong_crc) + valid["ack"],
            ["frame:data", "crc", "frame:ack"],
        ),
    ]
    # A zero inside an encoded frame can only reach decode_frame directly (a stream splits
    # there), so these carry "encoded" (no delimiter) instead of "stream".
    encoded_heartbeat = cobs.encode(heartbeat)
    out = [{"name": name, "stream": data.hex(), "expect": expect} for name, data, expect in cases]
    out.append(
        {
            "name": "cobs-zero-inside",
            "encoded": (encoded_heartbeat[:4] + b"\x00" + encoded_heartbeat[5:]).hex(),
            "expect": ["cobs"],
        }
    )
    out.append({"name": "cobs-empty", "encoded": "", "expect": ["cobs"]})
    return out


def bad_payloads() -> list[dict[str, Any]]:
    """Frames that decode (good CRC) but whose payload the type's parser must reject."""
    hello = p.hello_payload(HELLO)
    cases = [
        ("data-empty", p.DATA, b""),
        ("data-count-beyond-payload", p.DATA, struct.pack("<BIB", 0, 1000, 3) + b"\x00" * 8),
        ("data-short-record-head", p.DATA, p.data_payload([(0, 1, [1.0])]) + b"\x00\x01\x02"),
        ("hello-not-json", p.HELLO, b"device=bench-1"),
        ("hello-not-object", p.HELLO, b"[1]"),
        ("hello-not-utf8", p.HELLO, hello.replace(b"bench-1", b"bench\xff1")),
        ("hello-missing-device", p.HELLO, hello.replace(b'"device"', b'"divice"')),
        ("hello-boot-not-integer", p.HELLO, hello.replace(b"305419896", b'"305419896"')),
        ("hello-missing-oldest", p.HELLO, hello.replace(b'"oldest"', b'"eldest"')),
        ("hello-oldest-out-of-range", p.HELLO, hello.replace(b'"oldest":0', b'"oldest":65536')),
        ("hello-duplicate-stream", p.HELLO, _hello_with_streams(2)),
        ("nack-short", p.NACK, b"\x04\x2a"),
        ("cmd-not-json", p.CMD, b"\x01\x00ping"),
        ("cmd-without-cmd", p.CMD, b'\x01\x00{"args":{}}'),
        ("cmd-args-not-object", p.CMD, b'\x01\x00{"args":[1],"cmd":"ping"}'),
        ("resp-short", p.RESP, b"\x01\x00\x00"),
        ("heartbeat-short", p.HEARTBEAT, b"\x10\x0e\x00\x00\x03"),
        ("log-empty", p.LOG, b""),
        ("log-not-utf8", p.LOG, b"\x14\xc3\x28"),
    ]
    return [
        {
            "name": name,
            "type": kind,
            "payload": payload.hex(),
            "frame": p.encode_frame(kind, 0, payload).hex(),
            "expect": "payload",
        }
        for name, kind, payload in cases
    ]


def _hello_with_streams(count: int) -> bytes:
    hello = dict(HELLO, streams=[{"name": "env", "fields": ["t"], "rate": 1.0}] * count)
    return p.hello_payload(hello)


def check(document: dict[str, Any]) -> None:
    """Our codec must agree with every stated expectation before the file is written."""
    for vector in document["valid"]:
        frames = p.FrameDecoder().feed(bytes.fromhex(vector["frame"]))
        assert len(frames) == 1 and isinstance(frames[0], p.Frame), vector["name"]
    by_name = {v["name"]: p.decode_frame(bytes.fromhex(v["frame"])[:-1]) for v in document["valid"]}
    for vector in document["bad_frames"]:
        if "encoded" in vector:
            try:
                p.decode_frame(bytes.fromhex(vector["encoded"]))
            except p.ProtocolError as error:
                assert [error.code] == vector["expect"], vector["name"]
                continue
            raise AssertionError(vector["name"] + " decoded")
        got = p.FrameDecoder().feed(bytes.fromhex(vector["stream"]))
        seen = [
            "frame:" + _name_of(item, by_name) if isinstance(item, p.Frame) else item.code
            for item in got
        ]
        assert seen == vector["expect"], (vector["name"], seen)
    for vector in document["bad_payloads"]:
        frame = p.decode_frame(bytes.fromhex(vector["frame"])[:-1])
        parser = PARSERS[frame.type]
        try:
            parser(frame.payload)
        except p.ProtocolError as error:
            assert error.code == "payload", vector["name"]
            continue
        raise AssertionError(vector["name"] + " parsed")


def _name_of(frame: p.Frame, by_name: dict[str, p.Frame]) -> str:
    return next(name for name, known in by_name.items() if known == frame)


PARSERS = {
    p.HELLO: p.parse_hello,
    p.DATA: p.parse_data,
    p.NACK: p.parse_nack,
    p.CMD: p.parse_cmd,
    p.RESP: p.parse_resp,
    p.HEARTBEAT: p.parse_heartbeat,
    p.LOG: p.parse_log,
}


def main() -> None:
    valid = valid_vectors()
    frames = {v["name"]: bytes.fromhex(v["frame"]) for v in valid}
    document = {
        "about": "Wire protocol v1 test vectors (docs/protocol.md). Hex strings. 'frame' "
        "and 'stream' include the 0x00 delimiters; 'raw' is the decoded frame (header, "
        "payload, CRC-32 LE); 'encoded' has no delimiter. Generated by generate.py.",
        "valid": valid,
        "bad_frames": bad_frames(frames),
        "bad_payloads": bad_payloads(),
    }
    check(document)
    OUTPUT.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(
        f"wrote {OUTPUT.relative_to(ROOT)}: {len(valid)} valid, "
        f"{len(document['bad_frames'])} bad frames, {len(document['bad_payloads'])} bad payloads"
    )


if __name__ == "__main__":
    main()
