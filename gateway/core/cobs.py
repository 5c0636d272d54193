"""COBS byte stuffing and splitting a byte stream into 0x00-delimited encoded frames."""

DELIMITER = b"\x00"
MAX_BLOCK = 254  # data bytes one code byte can cover (code 0xFF)
# The COBS worst case of a 512-byte frame (protocol.MAX_FRAME): one code byte per 254 plus
# one, 515 bytes. protocol.MAX_ENCODED is the same number; this module cannot import it.
DEFAULT_MAX_ENCODED = 512 + 1 + 512 // MAX_BLOCK

# One-byte bytes objects by value, so encoding does not build them per block on CPython.
# MicroPython builds them as needed: the table would cost a board about 10 KB of heap.
_SMALL_HEAP = __import__("sys").implementation.name == "micropython"
if _SMALL_HEAP:

    class _Codes:
        def __getitem__(self, value):
            return bytes((value,))

    _CODE = _Codes()
else:
    _CODE = [bytes((value,)) for value in range(256)]


class CobsError(ValueError):
    """The bytes are not a valid COBS encoding."""


def encode(data):
    """The COBS encoding of data (no zero byte in it), without the 0x00 delimiter."""
    if _SMALL_HEAP:
        return _encode_in_place(data)
    pieces = bytes(data).split(DELIMITER)
    last = len(pieces) - 1
    out = []
    for index, piece in enumerate(pieces):
        size = len(piece)
        start = 0
        # A full block (code 0xFF) carries 254 bytes and no implied zero after it.
        while size - start >= MAX_BLOCK:
            out.append(b"\xff")
            out.append(piece[start : start + MAX_BLOCK])
            start += MAX_BLOCK
        # The last piece has no zero after it: after full blocks nothing more is needed,
        # but an empty tail still needs its code byte (empty data encodes as 0x01).
        if index == last and start and start == size:
            break
        out.append(_CODE[size - start + 1])
        out.append(piece[start:])
    return b"".join(out)


def _encode_in_place(data):
    """encode() for MicroPython: one output buffer, no list of pieces. Float data is full
    of zero bytes, and the pieces of a 512-byte frame would need a 2 KB list at once."""
    data = bytes(data)
    out = bytearray(len(data) + len(data) // MAX_BLOCK + 2)
    code_at = 0  # where the current block's code byte goes
    write = 1
    code = 1
    after_full = False  # the last block closed was a full one (code 0xFF)
    for byte in data:
        after_full = False
        if byte == 0:
            out[code_at] = code
            code_at = write
            write += 1
            code = 1
            continue
        out[write] = byte
        write += 1
        code += 1
        if code == 0xFF:
            out[code_at] = code
            code_at = write
            write += 1
            code = 1
            after_full = True
    if after_full and data:
        write = code_at  # a full block at the very end needs no code byte after it
    else:
        out[code_at] = code
    return bytes(out[:write])


def decode(data):
    """The bytes whose COBS encoding is data (given without delimiter); raises CobsError."""
    data = bytes(data)
    size = len(data)
    if not size:
        raise CobsError("empty frame")
    if DELIMITER in data:
        raise CobsError(f"0x00 inside an encoded frame at offset {data.find(DELIMITER)}")
    # Fast path: each code byte after the first stands where the decoded data has its zero,
    # so overwrite those with 0x00 and drop the first byte. Full blocks break this rule.
    out = bytearray(data)
    index = 0
    while True:
        code = data[index]
        if code == 0xFF:
            return _decode_blocks(data)
        end = index + code
        if end >= size:
            break
        out[end] = 0
        index = end
    if end > size:
        raise CobsError(_past_end(code, index, size))
    return bytes(out[1:])


def _decode_blocks(data):
    """decode() block by block, for encodings with full (0xFF) blocks."""
    size = len(data)
    out = []
    index = 0
    while index < size:
        code = data[index]
        end = index + code
        if end > size:
            raise CobsError(_past_end(code, index, size))
        out.append(data[index + 1 : end])
        # Every block but a full one and the last one stands for data followed by a zero.
        if code != 0xFF and end < size:
            out.append(DELIMITER)
        index = end
    return b"".join(out)


def _past_end(code, index, size):
    return f"code byte 0x{code:02x} at offset {index} points past the end ({size} bytes)"


class FrameSplitter:
    """Cuts a byte stream at 0x00 into encoded frames, discarding any longer than max_encoded.

    feed(chunk) returns the complete encoded frames (delimiter stripped, empty ones skipped).
    A frame longer than max_encoded is dropped up to the next 0x00 and counted in
    counters["oversize"]; with mark_oversize=True feed() also puts None in its result where
    the dropped frame was, so a caller can report it in stream order.
    """

    def __init__(self, max_encoded=DEFAULT_MAX_ENCODED, mark_oversize=False):
        self.max_encoded = max_encoded
        self.mark_oversize = mark_oversize
        self.counters = {"oversize": 0}
        self._pending = b""
        self._discarding = False

    def reset(self):
        """Forget a partial frame (e.g. after the port was reopened)."""
        self._pending = b""
        self._discarding = False

    def feed(self, chunk):
        chunk = bytes(chunk)
        frames = []
        if DELIMITER not in chunk:
            self._keep(chunk, frames)
            return frames
        if _SMALL_HEAP:
            return self._feed_scanning(chunk, frames)
        parts = chunk.split(DELIMITER)
        head = parts[0]
        if self._discarding:
            self._discarding = False
        else:
            self._take(self._pending + head if self._pending else head, frames)
        self._pending = b""
        for index in range(1, len(parts) - 1):
            self._take(parts[index], frames)
        self._keep(parts[-1], frames)
        return frames

    def _feed_scanning(self, chunk, frames):
        """feed() for MicroPython: the frames found one by one, no list of every piece."""
        end = chunk.find(DELIMITER)
        head = chunk[:end]
        if self._discarding:
            self._discarding = False
        else:
            self._take(self._pending + head if self._pending else head, frames)
        self._pending = b""
        start = end + 1
        while True:
            end = chunk.find(DELIMITER, start)
            if end < 0:
                break
            self._take(chunk[start:end], frames)
            start = end + 1
        self._keep(chunk[start:], frames)
        return frames

    def _take(self, frame, frames):
        if not frame:
            return
        if len(frame) > self.max_encoded:
            self._oversize(frames)
            return
        frames.append(frame)

    def _keep(self, tail, frames):
        """Buffer an unterminated tail, switching to discarding once it grows too long."""
        if self._discarding or not tail:
            return
        pending = self._pending + tail if self._pending else tail
        if len(pending) > self.max_encoded:
            self._pending = b""
            self._discarding = True
            self._oversize(frames)
            return
        self._pending = pending

    def _oversize(self, frames):
        self.counters["oversize"] += 1
        if self.mark_oversize:
            frames.append(None)
