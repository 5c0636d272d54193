"""Property tests for the wire protocol codecs: round trips, and corruption never passes as data."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import cobs
from gateway.core import protocol as p

types = st.sampled_from(sorted(p.TYPE_NAMES))
seqs = st.integers(0, 0xFFFF)
flag_bytes = st.integers(0, 0xFF)
payloads = st.binary(max_size=p.MAX_PAYLOAD)
# Payloads rich in zeros and 0xff runs exercise COBS block edges more than uniform bytes do.
edgy_payloads = st.lists(
    st.sampled_from([b"\x00", b"\xff", b"\x01" * 254, b"\x02" * 253, b"ab"]), max_size=6
).map(lambda parts: b"".join(parts)[: p.MAX_PAYLOAD])
frames = st.builds(p.Frame, types, seqs, flag_bytes, st.one_of(payloads, edgy_payloads))


@given(st.binary(max_size=2000))
def test_cobs_round_trips_any_bytes(data: bytes) -> None:
    encoded = cobs.encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs.decode(encoded) == data


@given(frames)
def test_any_frame_round_trips(frame: p.Frame) -> None:
    wire = frame.encode()
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert len(wire) - 1 <= p.MAX_ENCODED
    assert p.decode_frame(wire[:-1]) == frame


@given(st.lists(frames, min_size=1, max_size=10), st.data())
def test_any_chunking_of_a_stream_decodes_every_frame(originals: list[p.Frame], data) -> None:
    stream = b"".join(frame.encode() for frame in originals)
    assert _decode(stream, _chunk_sizes(data, len(stream))) == originals


@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.lists(st.floats(width=32, allow_nan=False), max_size=8),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_data_records_round_trip_bit_exactly(records) -> None:
    payload = p.data_payload(records)
    parsed = p.parse_data(payload)
    assert [(s, dts) for s, dts, _ in parsed] == [(s, dts) for s, dts, _ in records]
    assert p.data_payload(parsed) == payload  # every value is the same float32
    for (_, _, sent), (_, _, got) in zip(records, parsed):
        assert len(got) == len(sent)
        for value in got:  # at most 9 significant digits, as float32 needs
            assert len(repr(value).lstrip("-").split("e")[0].replace(".", "").strip("0")) <= 9


@given(seqs, st.integers(-0x7FFF, 0x7FFF))
def test_seq_arithmetic_inverts(seq: int, step: int) -> None:
    later = p.seq_add(seq, step)
    assert p.seq_diff(later, seq) == step
    assert p.seq_newer(later, seq) == (step > 0)


# -- corruption ----------------------------------------------------------------------------

corruptions = st.lists(
    st.tuples(
        st.sampled_from(["flip", "drop", "insert"]), st.integers(0, 10**6), st.integers(0, 255)
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300)
@given(st.lists(frames, min_size=2, max_size=8), corruptions, st.data())
def test_corruption_never_yields_a_foreign_frame_and_spares_untouched_frames(
    originals: list[p.Frame], damage, data
) -> None:
    wires = [frame.encode() for frame in originals]
    stream = bytearray(b"".join(wires))
    # origin[i]: (frame index, offset in its wire) of the stream's byte i; None if inserted.
    origin: list[tuple[int, int] | None] = [
        (index, offset) for index, wire in enumerate(wires) for offset in range(len(wire))
    ]
    touched: set[int] = set()
    for action, where, value in damage:
        if action == "insert":
            position = where % (len(stream) + 1)
            if position < len(origin) and origin[position] is not None:
                touched.add(origin[position][0])  # the inserted byte joins this frame
            stream.insert(position, value)
            origin.insert(position, None)
            continue
        position = where % len(stream)
        _touch(touched, origin[position], wires)
        if action == "flip":
            stream[position] ^= 1 << (value % 8)
        else:
            del stream[position]
            del origin[position]
    decoded = _decode(bytes(stream), _chunk_sizes(data, len(stream)))
    good = [item for item in decoded if isinstance(item, p.Frame)]
    for item in decoded:
        if isinstance(item, p.ProtocolError):
            assert item.code in ("cobs", "crc", "truncated", "too_large"), item
    assert _is_subsequence(good, originals), (good, originals)
    untouched = [frame for index, frame in enumerate(originals) if index not in touched]
    assert _is_subsequence(untouched, good), (untouched, good)


def _touch(touched: set[int], origin: tuple[int, int] | None, wires: list[bytes]) -> None:
    """Damage to a byte harms its frame; to a delimiter, also the next frame (they merge)."""
    if origin is None:
        return
    index, offset = origin
    touched.add(index)
    if offset == len(wires[index]) - 1:
        touched.add(index + 1)


def _is_subsequence(needles: list, haystack: list) -> bool:
    remaining = iter(haystack)
    return all(any(item == candidate for candidate in remaining) for item in needles)


def _chunk_sizes(data, total: int) -> list[int]:
    return data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=max(1, total // 20)))


def _decode(stream: bytes, sizes: list[int], decoder: p.FrameDecoder | None = None) -> list:
    decoder = decoder or p.FrameDecoder()
    out: list = []
    start = 0
    index = 0
    while start < len(stream):
        size = sizes[index % len(sizes)]
        out += decoder.feed(stream[start : start + size])
        start += size
        index += 1
    return out


@given(st.binary(max_size=1500), st.data())
def test_garbage_never_raises_and_every_result_is_counted(garbage: bytes, data) -> None:
    decoder = p.FrameDecoder()
    stream = garbage + b"\x00" + p.encode_frame(p.ACK, 1)
    results = _decode(stream, _chunk_sizes(data, len(stream)), decoder)
    assert results and results[-1] == p.Frame(p.ACK, 1)  # the frame after garbage survives
    for item in results:
        assert isinstance(item, (p.Frame, p.ProtocolError)), item
        assert not isinstance(item, p.ProtocolError) or item.code in p.FRAME_ERRORS
    assert sum(decoder.counters.values()) == len(results)  # every result counted once
