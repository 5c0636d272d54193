"""COBS codec and frame splitter tests; plain asserts so they run under pytest and MicroPython."""

from gateway.core import cobs


def _raises(function, *args):
    """The message of the CobsError function(*args) raises; fails if it raises none."""
    try:
        function(*args)
    except cobs.CobsError as error:
        return str(error)
    raise AssertionError(f"expected CobsError from {function!r}{args!r}")


def _run(start, stop):
    return bytes(range(start, stop))


# The examples in Cheshire and Baker's COBS paper as commonly tabulated: (data, encoding).
EXAMPLES = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (_run(1, 255), b"\xff" + _run(1, 255)),
    (_run(0, 255), b"\x01\xff" + _run(1, 255)),
    (_run(1, 256), b"\xff" + _run(1, 255) + b"\x02\xff"),
    (_run(2, 256) + b"\x00", b"\xff" + _run(2, 256) + b"\x01\x01"),
    (_run(3, 256) + b"\x00\x01", b"\xfe" + _run(3, 256) + b"\x02\x01"),
]


def test_published_examples_encode_and_decode():
    for data, encoded in EXAMPLES:
        assert cobs.encode(data) == encoded, data
        assert cobs.decode(encoded) == data, encoded


def test_empty_data_encodes_to_a_single_code_byte():
    assert cobs.encode(b"") == b"\x01"
    assert cobs.decode(b"\x01") == b""


def test_round_trip_around_block_boundaries():
    for size in (1, 2, 253, 254, 255, 256, 507, 508, 509, 600):
        for filler in (b"\x07", b"\x00", b"\x07\x00", b"\x00\x07\x07"):
            data = (filler * size)[:size]
            encoded = cobs.encode(data)
            assert b"\x00" not in encoded, (size, filler)
            assert len(encoded) <= size + 1 + size // 254, (size, filler, len(encoded))
            assert cobs.decode(encoded) == data, (size, filler)


def test_accepts_bytearray_and_memoryview():
    assert cobs.encode(bytearray(b"\x11\x00")) == b"\x02\x11\x01"
    assert cobs.decode(memoryview(b"\x02\x11\x01")) == b"\x11\x00"


def test_decode_rejects_a_zero_inside():
    assert "offset 2" in _raises(cobs.decode, b"\x03\x11\x00\x01")


def test_decode_rejects_a_code_byte_pointing_past_the_end():
    assert "past the end" in _raises(cobs.decode, b"\x05\x11\x22")
    assert "offset 2" in _raises(cobs.decode, b"\x02\x11\x03\x01")
    assert "offset 0" in _raises(cobs.decode, b"\xff" + b"\x01" * 200)  # a full block, cut
    assert "offset 255" in _raises(cobs.decode, b"\xff" + b"\x01" * 254 + b"\x03\x01")


def test_decode_rejects_empty_input():
    assert "empty" in _raises(cobs.decode, b"")


def test_cobs_error_is_a_value_error():
    assert issubclass(cobs.CobsError, ValueError)


# -- FrameSplitter -------------------------------------------------------------------------


def test_splitter_returns_frames_without_delimiters_and_skips_empty_ones():
    splitter = cobs.FrameSplitter()
    assert splitter.feed(b"\x00\x02a\x00\x00\x03bc\x00") == [b"\x02a", b"\x03bc"]
    assert splitter.counters == {"oversize": 0}


def test_splitter_joins_frames_across_chunks():
    splitter = cobs.FrameSplitter()
    stream = b"\x03ab\x00\x04xyz\x00\x02q\x00"
    frames = []
    for index in range(len(stream)):
        frames += splitter.feed(stream[index : index + 1])
    assert frames == [b"\x03ab", b"\x04xyz", b"\x02q"]


def test_splitter_keeps_a_partial_frame_until_its_delimiter():
    splitter = cobs.FrameSplitter()
    assert splitter.feed(b"\x03a") == []
    assert splitter.feed(b"") == []
    assert splitter.feed(b"b") == []
    assert splitter.feed(bytearray(b"\x00\x02")) == [b"\x03ab"]
    assert splitter.feed(b"c\x00") == [b"\x02c"]


def test_splitter_passes_the_longest_frame_and_drops_one_byte_more():
    splitter = cobs.FrameSplitter(max_encoded=10)
    assert splitter.feed(b"\x01" * 10 + b"\x00") == [b"\x01" * 10]
    assert splitter.feed(b"\x01" * 11 + b"\x00") == []
    assert splitter.counters["oversize"] == 1
    assert splitter.feed(b"\x02z\x00") == [b"\x02z"]


def test_splitter_drops_an_oversize_frame_that_arrives_in_pieces_and_resyncs():
    splitter = cobs.FrameSplitter(max_encoded=8)
    assert splitter.feed(b"\x02a\x00" + b"\x01" * 5) == [b"\x02a"]
    assert splitter.feed(b"\x01" * 5) == []  # 10 pending: dropped, discarding from here
    assert splitter.feed(b"\x01" * 50) == []
    assert splitter.counters["oversize"] == 1
    assert splitter.feed(b"\x01\x01\x00\x02b\x00") == [b"\x02b"]
    assert splitter.counters["oversize"] == 1


def test_splitter_marks_where_an_oversize_frame_was_dropped():
    splitter = cobs.FrameSplitter(max_encoded=4, mark_oversize=True)
    assert splitter.feed(b"\x02a\x00" + b"\x01" * 6 + b"\x00\x02b\x00") == [
        b"\x02a",
        None,
        b"\x02b",
    ]
    assert splitter.feed(b"\x01" * 6) == [None]
    assert splitter.feed(b"\x01\x00\x02c\x00") == [b"\x02c"]
    assert splitter.counters["oversize"] == 2


def test_splitter_reset_forgets_a_partial_frame():
    splitter = cobs.FrameSplitter(max_encoded=4)
    splitter.feed(b"\x05ab")
    splitter.reset()
    assert splitter.feed(b"\x02c\x00") == [b"\x02c"]
    splitter.feed(b"\x01" * 9)  # discarding
    splitter.reset()
    assert splitter.feed(b"\x02d\x00") == [b"\x02d"]
