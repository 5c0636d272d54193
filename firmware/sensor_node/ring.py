"""The bounded RAM ring of unacknowledged DATA payloads and its go-back-N send cursor."""

from gateway.core.device_protocol import MAX_PAYLOAD, seq_add, seq_diff

CHUNK_BYTES = 1024  # the ring's buffers are at most this long (or one slot, if longer)


class Ring:
    """DATA payloads in seq order, oldest first; payload i has seq first_seq + i.

    cursor is the index of the next payload to put on the wire; sent counts the payloads
    (from the oldest) that went out at least once, so a second sending carries RETRANSMIT.
    generation changes whenever the cursor is moved back (rewind, renumber), which tells a
    sender that finished a write meanwhile not to move the cursor past the rewound point;
    epoch changes when the payloads are numbered afresh (a new session).
    """

    def __init__(self, capacity, first_seq=0, slot_size=MAX_PAYLOAD):
        self.capacity = capacity
        self.slot_size = slot_size
        # Fixed slots, used circularly, in buffers allocated once: payloads as objects of their
        # own would each cost a header and scatter over the heap, which a full ring would leave
        # fragmented (a 256-byte frame then finds no room although kilobytes are free). Buffers
        # of a few slots, not one: a heap that imports fragmented may lack a 16 KB block.
        self._per_chunk = max(1, CHUNK_BYTES // slot_size)
        chunks = (capacity + self._per_chunk - 1) // self._per_chunk
        self._chunks = [bytearray(self._per_chunk * slot_size) for _ in range(chunks)]
        self._sizes = [0] * capacity
        self._head = 0  # slot of the oldest payload
        self._count = 0
        self.first_seq = first_seq
        self.cursor = 0
        self.sent = 0
        self.generation = 0
        self.epoch = 0
        self.dropped = 0  # payloads evicted unacknowledged (policy "drop_oldest")
        self.dropped_in_session = 0

    def __len__(self):
        return self._count

    def full(self):
        return self._count >= self.capacity

    def payload(self, index):
        """The payload index places after the oldest (0: the oldest), a view into its slot:
        valid until the ring releases it, so a sender encodes it before it awaits anything."""
        slot = (self._head + index) % self.capacity
        chunk, start = self._place(slot)
        return memoryview(chunk)[start : start + self._sizes[slot]]

    def next_seq(self):
        return seq_add(self.first_seq, self._count)

    def last_seq(self):
        """The newest payload's seq (first_seq - 1 when empty)."""
        return seq_add(self.first_seq, self._count - 1)

    def index_of(self, seq):
        """Position of seq relative to the oldest payload (negative: older than any held)."""
        return seq_diff(seq, self.first_seq)

    def push(self, payload):
        """Append a copy of payload; returns its seq. The caller makes room first (full() is
        False)."""
        if self.full():
            raise OverflowError("ring full")
        size = len(payload)
        if size > self.slot_size:
            raise ValueError(f"payload of {size} bytes exceeds the slot size {self.slot_size}")
        seq = self.next_seq()
        slot = (self._head + self._count) % self.capacity
        chunk, start = self._place(slot)
        chunk[start : start + size] = payload
        self._sizes[slot] = size
        self._count += 1
        return seq

    def drop_oldest(self):
        """Evict the oldest payload unacknowledged (counted)."""
        self._remove(1)
        self.dropped += 1
        self.dropped_in_session += 1

    def ack(self, seq):
        """Release every payload up to and including seq; returns how many were released."""
        count = self.index_of(seq) + 1
        if count <= 0:
            return 0
        count = min(count, self._count)
        self._remove(count)
        return count

    def _place(self, slot):
        """(buffer, offset) of a slot."""
        return self._chunks[slot // self._per_chunk], slot % self._per_chunk * self.slot_size

    def _remove(self, count):
        for index in range(count):
            self._sizes[(self._head + index) % self.capacity] = 0
        self._head = (self._head + count) % self.capacity
        self._count -= count
        self.first_seq = seq_add(self.first_seq, count)
        self.cursor = max(0, self.cursor - count)
        self.sent = max(0, self.sent - count)

    def rewind(self):
        """Go back N: the next payload to send is the oldest."""
        self.cursor = 0
        self.generation += 1

    def renumber(self, first_seq=0):
        """A new session: the same payloads, numbered afresh, none of them sent yet."""
        self.first_seq = first_seq
        self.cursor = 0
        self.sent = 0
        self.dropped_in_session = 0
        self.generation += 1
        self.epoch += 1

    def next_unsent(self):
        """(seq, payload, is_retransmit) at the cursor, or None when all went out."""
        if self.cursor >= self._count:
            return None
        index = self.cursor
        return seq_add(self.first_seq, index), self.payload(index), index < self.sent

    def position(self):
        """What a sender notes before a write and hands back to mark_sent()."""
        return self.generation, self.epoch

    def mark_sent(self, seq, position):
        """The payload with seq is on the wire; advance the cursor unless rewound meanwhile."""
        generation, epoch = position
        if epoch != self.epoch:
            return  # renumbered: that seq belonged to the previous session
        index = self.index_of(seq)
        if index < 0 or index >= self._count:
            return  # acknowledged (or evicted) while it was being written
        self.sent = max(self.sent, index + 1)
        if generation == self.generation:
            self.cursor = index + 1
