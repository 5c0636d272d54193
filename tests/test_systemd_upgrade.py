"""Upgrading in place with the data directory kept: an older buffer layout is migrated, a
newer (or unknown) one is refused with a clear message and left untouched."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.store import buffer as store
from gateway.store.buffer import BufferDatabase, StoreIncompatible
from tests.support.e2e import REPO_ROOT


def reading(seq: int) -> dict:
    return {"device": "d", "stream": "s", "seq": seq, "ts": 1.0, "data": {"n": seq}}


def stored_database(directory) -> str:
    """A data directory whose buffer holds three readings for sink "mqtt"."""
    path = os.path.join(directory, "var", store.DATABASE_NAME)
    db = BufferDatabase(path, fsync="off")
    db.buffer("mqtt").append([(reading(seq), {}) for seq in range(3)])
    db.close()
    return path


def set_layout(path: str, value: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (value,))


@pytest.mark.parametrize(
    ("value", "found"), [("2", "layout version 2"), ("banana", "an unknown version 'banana'")]
)
def test_a_newer_or_unknown_layout_is_refused_and_left_as_it_is(tmp_path, value, found):
    path = stored_database(tmp_path)
    set_layout(path, value)
    before = Path(path).read_bytes()
    for readonly in (False, True):
        with pytest.raises(StoreIncompatible, match=found) as refused:
            BufferDatabase(path, readonly=readonly)
        assert "this gateway reads version 1 and older" in str(refused.value)
    assert Path(path).read_bytes() == before


def gateway_command(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "pi"\ndata_dir = "./var"\n[api]\nlisten = "127.0.0.1:0"\n'
        '[sinks.mqtt]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", *arguments[:1], "-c", str(config), *arguments[1:]],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [("run",), ("buffer", "stats")], ids=["run", "buffer"])
def test_the_commands_refuse_a_newer_buffer_with_one_clear_line(tmp_path, command):
    set_layout(stored_database(tmp_path), "2")
    result = gateway_command(tmp_path, *command)
    assert result.returncode == 1, result.stderr
    assert "has buffer layout version 2; this gateway reads version 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_older_layout_is_migrated_keeping_every_reading(tmp_path, monkeypatch):
    path = stored_database(tmp_path)  # layout 1, as this gateway writes it
    monkeypatch.setattr(store, "SCHEMA_VERSION", 2)  # a later gateway's layout...
    monkeypatch.setattr(store, "MIGRATIONS", {1: ("CREATE TABLE added_in_2 (x INTEGER)",)})
    db = BufferDatabase(path)  # ...opens it: migrated in place
    try:
        assert [item[0]["seq"] for _id, item in db.buffer("mqtt").peek(10)] == [0, 1, 2]
        layout = db.connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        assert layout == ("2",)
        db.connection.execute("SELECT count(*) FROM added_in_2").fetchone()
    finally:
        db.close()
