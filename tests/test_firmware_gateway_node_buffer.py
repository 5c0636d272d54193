"""firmware/gateway_node/buffer.py on CPython (the same module runs on the board): what a
reset leaves on flash is delivered, a torn last record is ignored, the share is kept."""

from __future__ import annotations

import importlib.util
import os

import pytest

from host_tools import resources

_spec = importlib.util.spec_from_file_location(
    "gateway_node_buffer", resources.firmware_dir("gateway_node") / "buffer.py"
)
buffer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(buffer)


def make(folder, max_bytes=64 * 1024, overflow="drop_oldest", ram=8):
    return buffer.Buffer(str(folder), max_bytes, overflow, ram, 4, 1024)


def drain(store) -> list[bytes]:
    out = []
    while (body := store.peek()) is not None:
        out.append(body)
        store.pop()
    return out


def entries(start: int, count: int) -> list[bytes]:
    return [b"reading %05d" % index for index in range(start, start + count)]


def test_flushed_entries_survive_a_reset_and_come_out_in_order(tmp_path):
    store = make(tmp_path)
    for body in entries(0, 100):
        assert store.put(body)
    store.flush()
    again = make(tmp_path)  # a reset: only what is on flash
    assert len(again) == 100
    assert drain(again) == entries(0, 100)


def test_after_a_reset_at_most_the_deliveries_since_the_last_cursor_come_again(tmp_path):
    store = make(tmp_path)
    for body in entries(0, 200):
        store.put(body)
    store.flush()
    for _ in range(37):  # delivered, then the power goes
        assert store.peek() is not None
        store.pop()
    again = make(tmp_path)
    rest = drain(again)
    assert rest[-1] == entries(199, 1)[0]
    repeated = len(rest) - (200 - 37)
    assert 0 <= repeated < buffer.CURSOR_EVERY
    assert rest == entries(200 - len(rest), len(rest))


def test_a_torn_last_record_is_ignored_and_writing_goes_on_in_a_new_segment(tmp_path):
    store = make(tmp_path)
    for body in entries(0, 10):
        store.put(body)
    store.flush()
    segment = sorted(name for name in os.listdir(tmp_path) if name.endswith(".seg"))[-1]
    with open(tmp_path / segment, "ab") as handle:
        handle.write(b"\x20\x00half a rec")  # a power cut in the middle of an append
    again = make(tmp_path)
    assert len(again) == 10
    for body in entries(10, 5):
        again.put(body)
    again.flush()
    assert drain(again) == entries(0, 15)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_the_folder_never_outgrows_max_bytes_and_drops_are_counted(tmp_path, overflow):
    store = make(tmp_path, max_bytes=4096, overflow=overflow)
    for body in entries(0, 2000):
        store.put(body)
        size = sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path))
        assert size <= 4096
    store.flush()
    kept = drain(store)
    assert len(kept) + store.counters["dropped"] == 2000
    if overflow == "drop_oldest":
        assert kept == entries(2000 - len(kept), len(kept))
    else:
        assert kept == entries(0, len(kept))


def test_block_keeps_what_does_not_fit_in_ram_and_says_there_is_no_room(tmp_path):
    store = make(tmp_path, max_bytes=2048, overflow="block", ram=8)
    taken = 0
    while store.room():
        assert store.put(entries(taken, 1)[0])
        taken += 1
    assert store.counters["dropped"] == 0
    assert drain(store) == entries(0, taken)
