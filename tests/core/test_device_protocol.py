"""device_protocol, the part of the protocol a device runs, and protocol re-exporting it."""

from gateway.core import device_protocol as d
from gateway.core import protocol as p

GATEWAY_ONLY = (
    "parse_hello",
    "parse_data",
    "check_data",
    "parse_resp",
    "parse_heartbeat",
    "parse_log",
    "cmd_payload",
    "data_payload",
    "seq_newer",
    "NACK_NAMES",
)


def test_protocol_offers_every_name_of_device_protocol_as_the_same_object():
    public = [name for name in dir(d) if not name.startswith("_")]
    assert len(public) > 40, public
    missing = [name for name in public if getattr(p, name, None) is not getattr(d, name)]
    assert missing == [], missing


def test_device_protocol_leaves_the_gateway_parsers_to_protocol():
    assert [name for name in GATEWAY_ONLY if hasattr(d, name)] == []
    assert [name for name in GATEWAY_ONLY if not hasattr(p, name)] == []


def test_records_packed_one_by_one_are_the_data_payload_of_the_list():
    records = [(0, 1000, [1.5, -2.25]), (3, 2**32 + 7, [40.2]), (255, 0, [])]
    buffer = bytearray(64)
    offset = 0
    for stream, dts, values in records:
        offset = d.pack_record(buffer, offset, stream, dts, values)
    assert bytes(buffer[:offset]) == p.data_payload(records)
    assert offset == 3 * d.RECORD_SIZE + 4 * 3
    assert p.parse_data(buffer[:offset]) == [
        (0, 1000, [1.5, -2.25]),
        (3, 7, [40.2]),
        (255, 0, []),
    ]


def test_pack_record_refuses_what_a_record_cannot_hold():
    for stream, values in ((256, [1.0]), (-1, [1.0]), (0, [0.0] * 256)):
        try:
            d.pack_record(bytearray(2048), 0, stream, 0, values)
        except ValueError:
            continue
        raise AssertionError(f"packed stream {stream} with {len(values)} values")


def test_a_frame_from_a_memoryview_payload_decodes_to_the_same_bytes():
    payload = bytearray(b"\x00\x01\x02" * 80)
    view = memoryview(payload)[3:240]  # how a node hands a ring slot to encode_frame
    wire = d.encode_frame(d.DATA, 65535, view, d.FLAG_RETRANSMIT)
    assert wire == d.encode_frame(d.DATA, 65535, bytes(view), d.FLAG_RETRANSMIT)
    frames = d.FrameDecoder().feed(wire)
    assert len(frames) == 1 and isinstance(frames[0], d.Frame)
    frame = frames[0]
    assert (frame.type, frame.seq, frame.flags) == (d.DATA, 65535, d.FLAG_RETRANSMIT)
    assert bytes(frame.payload) == bytes(view)
