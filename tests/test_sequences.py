"""Sequence numbers: consecutive while running, never repeated across restarts or crashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.store.sequences import SequenceStore


def test_numbers_are_consecutive_per_device_and_stream(tmp_path):
    store = SequenceStore(str(tmp_path / "seq.json"), block=10)
    assert [store.next("a", "env") for _ in range(25)] == list(range(25))
    assert [store.next("b", "env") for _ in range(3)] == [0, 1, 2]
    assert [store.next("a", "gps") for _ in range(2)] == [0, 1]


def test_clean_close_continues_without_a_gap(tmp_path):
    path = str(tmp_path / "seq.json")
    store = SequenceStore(path, block=10)
    for _ in range(13):
        store.next("a", "env")
    store.close()
    assert SequenceStore(path, block=10).next("a", "env") == 13


def test_crash_never_repeats_a_number(tmp_path):
    path = str(tmp_path / "seq.json")
    store = SequenceStore(path, block=10)
    issued = [store.next("a", "env") for _ in range(17)]
    # No close(): the process died. The file holds only the reservation.
    after_crash = SequenceStore(path, block=10).next("a", "env")
    assert after_crash > max(issued)
    assert after_crash - max(issued) <= 10


def test_reservations_are_written_once_per_block(tmp_path):
    path = str(tmp_path / "seq.json")
    store = SequenceStore(path, block=100)
    store.next("a", "env")
    first = os.stat(path).st_mtime_ns, json.loads(Path(path).read_text())
    for _ in range(98):
        store.next("a", "env")
    assert json.loads(Path(path).read_text()) == first[1] == {"a/env": 100}
    store.next("a", "env")  # number 99: still inside the block
    store.next("a", "env")  # number 100 reserves the next block
    assert json.loads(Path(path).read_text()) == {"a/env": 200}


def test_unwritable_directory_is_logged_and_numbering_goes_on(tmp_path, caplog):
    directory = tmp_path / "ro"
    directory.mkdir()
    path = str(directory / "seq.json")
    store = SequenceStore(path, block=5)
    os.chmod(directory, 0o500)
    try:
        if os.access(str(directory), os.W_OK):  # root ignores permissions: use a file as parent
            store.path = str(tmp_path / "file-not-dir" / "seq.json")
            (tmp_path / "file-not-dir").write_text("")
        assert [store.next("a", "env") for _ in range(12)] == list(range(12))
    finally:
        os.chmod(directory, 0o700)
    assert "cannot persist sequence numbers" in caplog.text


def test_damaged_file_is_reported_and_numbering_jumps_above_earlier_numbers(tmp_path, caplog):
    path = tmp_path / "seq.json"
    store = SequenceStore(str(path))
    earlier = [store.next("a", "env") for _ in range(5)]
    store.close()
    path.write_text("{not json")
    restarted = SequenceStore(str(path))
    first = restarted.next("a", "env")
    assert first > max(earlier) and first > 1_700_000_000_000
    assert restarted.next("a", "env") == first + 1
    assert "unreadable" in caplog.text
