"""`gateway buffer -c FILE stats|inspect|purge SINK` as a user runs it (a child process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway.store.buffer import BufferDatabase
from tests.support.e2e import REPO_ROOT

CONFIG = """
[gateway]
id = "gw"
data_dir = "{data_dir}"

[sinks.mqtt]
type = "mqtt"

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9999"]
"""


def gateway(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        timeout=60,
    )


def reading(seq: int) -> dict:
    return {
        "gateway": "gw",
        "device": "d",
        "stream": "s",
        "seq": seq,
        "ts": 1.0,
        "data": {"n": seq},
    }


@pytest.fixture
def setup(tmp_path):
    """A config file and a buffer holding 5 readings for mqtt and 2 for a removed sink."""
    data_dir = tmp_path / "var"
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data_dir=data_dir))
    db = BufferDatabase(str(data_dir / "buffer.db"))
    db.buffer("mqtt").append([(reading(i), {"topic": "x"}) for i in range(5)])
    db.buffer("mqtt").count_drop("max_bytes", 4)
    db.buffer("old").append([(reading(i), {}) for i in range(2)])
    db.close()
    return str(config), data_dir


def test_stats_lists_every_sink_with_depth_bytes_age_and_drops(setup):
    config, _data_dir = setup
    result = gateway("buffer", "-c", config, "stats")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["sink", "readings", "bytes", "oldest", "drops"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["mqtt", "old", "udp"]
    assert rows["mqtt"].split()[1] == "5" and "max_bytes=4" in rows["mqtt"]
    assert rows["old"].split()[1] == "2" and rows["udp"].split()[1] == "0"
    one = gateway("buffer", "-c", config, "stats", "mqtt", "--json")
    stats = json.loads(one.stdout)
    assert list(stats) == ["mqtt"]
    assert stats["mqtt"]["depth"] == 5 and stats["mqtt"]["drops"]["max_bytes"] == 4
    assert stats["mqtt"]["bytes"] > 0 and stats["mqtt"]["oldest_age"] >= 0


def test_inspect_prints_the_next_readings_as_json_lines(setup):
    config, _data_dir = setup
    result = gateway("buffer", "-c", config, "inspect", "mqtt", "--limit", "2")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [reading(0), reading(1)]


def test_purge_asks_first_and_no_changes_nothing(setup):
    config, _data_dir = setup
    declined = gateway("buffer", "-c", config, "purge", "mqtt", stdin="n\n")
    assert declined.returncode == 3
    assert "purge 5 readings from mqtt? [y/N]" in declined.stdout
    assert "nothing purged" in declined.stdout
    no_answer = gateway("buffer", "-c", config, "purge", "mqtt")  # stdin closed: no
    assert no_answer.returncode == 3
    accepted = gateway("buffer", "-c", config, "purge", "mqtt", stdin="y\n")
    assert accepted.returncode == 0 and "mqtt: purged 5 readings" in accepted.stdout
    stats = json.loads(gateway("buffer", "-c", config, "stats", "mqtt", "--json").stdout)
    assert stats["mqtt"]["depth"] == 0 and stats["mqtt"]["drops"]["purged"] == 5


def test_purge_yes_removes_a_sink_that_is_no_longer_configured(setup):
    config, _data_dir = setup
    result = gateway("buffer", "-c", config, "purge", "old", "--yes")
    assert result.returncode == 0 and "old: purged 2 readings" in result.stdout


def test_while_the_gateway_runs_stats_work_and_purge_is_refused(setup):
    config, data_dir = setup
    running = BufferDatabase(str(data_dir / "buffer.db"))  # holds the lock, as a gateway does
    try:
        running.buffer("mqtt").append([(reading(9), {})])
        running.commit()
        stats = gateway("buffer", "-c", config, "stats", "mqtt", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["mqtt"]["depth"] == 6
        refused = gateway("buffer", "-c", config, "purge", "mqtt", "--yes")
        assert refused.returncode == 1
        assert f"in use by another gateway process (pid {os.getpid()})" in refused.stderr
        assert "stop the gateway before purging" in refused.stderr
    finally:
        running.close()
    assert gateway("buffer", "-c", config, "purge", "mqtt", "--yes").returncode == 0


def test_unknown_sink_and_bad_config_exit_2_and_no_buffer_is_fine(setup, tmp_path):
    config, _data_dir = setup
    unknown = gateway("buffer", "-c", config, "inspect", "nope")
    assert unknown.returncode == 2
    assert "unknown sink 'nope'; known sinks: mqtt, udp, old" in unknown.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[sinks.m]\ntype = "mqtt"\nqos = 3\n')
    invalid = gateway("buffer", "-c", str(bad), "stats")
    assert invalid.returncode == 2 and "sinks.m.qos: expected" in invalid.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text(CONFIG.format(data_dir=tmp_path / "fresh"))
    nothing = gateway("buffer", "-c", str(empty), "stats")
    assert nothing.returncode == 0 and "nothing is buffered" in nothing.stdout
    assert not (tmp_path / "fresh").exists()  # looking never creates a database


def test_a_second_gateway_on_the_same_data_directory_refuses_to_start(setup):
    config, data_dir = setup
    running = BufferDatabase(str(data_dir / "buffer.db"))  # the first gateway
    try:
        second = gateway("run", "-c", config)
    finally:
        running.close()
    assert second.returncode == 1
    assert f"in use by another gateway process (pid {os.getpid()})" in second.stderr
    assert "give this gateway its own gateway.data_dir" in second.stderr
