"""Distribution sessions over the API: own sinks, routes to configured ones, ends, restarts."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from gateway.api.control import PREFIX
from tests.support.api import ThreadedGateway, api_head, call, token_for
from tests.support.broker import Subscriber
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

TOML = (
    api_head("sessions")
    + """
[[sources]]
name = "bench-1"
simulate = { profile = "env", rate = 100 }
preset = "out"

[[sources]]
name = "other"
simulate = { profile = "env", rate = 100 }
preset = "out"

[presets.out]
extends = "basic"
routes = [{ sink = "udp" }, { sink = "mqtt" }]

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{udp}"]

[sinks.mqtt]
type = "mqtt"
url = "{broker}"
"""
)
OPERATOR = token_for("operator")


@pytest.fixture
def setup(broker, tmp_path):
    collectors = {name: UdpCollector() for name in ("configured", "a", "b")}
    toml = (
        TOML.replace("{data_dir}", str(tmp_path))
        .replace("{udp}", str(collectors["configured"].port))
        .replace("{broker}", broker.url)
    )
    yield toml, tmp_path / "gateway.toml", collectors
    for collector in collectors.values():
        collector.close()


def sessions_url(gateway: ThreadedGateway, session_id: str = "") -> str:
    return gateway.base + PREFIX + "/sessions" + (f"/{session_id}" if session_id else "")


def start_session(gateway: ThreadedGateway, body: dict) -> dict:
    answer = call(sessions_url(gateway), "POST", OPERATOR, body)
    assert answer.status == 201, answer.body
    return answer.json()


def session(gateway: ThreadedGateway, session_id: str) -> dict:
    answer = call(sessions_url(gateway, session_id), token=OPERATOR)
    assert answer.status == 200, answer.body
    return answer.json()


def test_sessions_route_on_their_own_survive_a_restart_and_end_by_themselves(broker, setup):
    toml, path, collectors = setup
    runs = Subscriber(broker.port, "runs/#")
    gateway = ThreadedGateway(toml, path).start()
    timed = start_session(
        gateway,
        {
            "name": "run-7",
            "select": ["bench-1/#"],
            "sinks": {"a-udp": {"type": "udp", "targets": [f"127.0.0.1:{collectors['a'].port}"]}},
            "routes": [{"sink": "a-udp"}, {"sink": "mqtt", "topic": "runs/7/{device}/{stream}"}],
            "duration": "8s",
        },
    )
    other = start_session(
        gateway,
        {
            "name": "watch-other",
            "select": ["other/+"],
            "sinks": {"b-udp": {"type": "udp", "targets": [f"127.0.0.1:{collectors['b'].port}"]}},
            "routes": [{"sink": "b-udp"}],
        },
    )
    assert timed["state"] == other["state"] == "running"
    wait_until(lambda: len(collectors["a"].readings) >= 20, 15, "session readings")
    wait_until(lambda: len(runs.messages) >= 20, 15, "session readings at the broker")

    gateway.close()  # a restart in the middle of both
    before_restart = len(collectors["a"].readings)
    gateway = ThreadedGateway(toml, path).start()
    resumed = {s["id"]: s for s in call(sessions_url(gateway), token=OPERATOR).json()["sessions"]}
    assert resumed[timed["id"]]["state"] == "running"
    assert resumed[timed["id"]]["ends_at"] == timed["ends_at"]  # the same end, not 8 s more
    assert resumed[other["id"]]["state"] == "running"
    wait_until(lambda: len(collectors["a"].readings) > before_restart, 15, "resumed readings")

    wait_until(lambda: session(gateway, timed["id"])["state"] == "ended", 20, "the end")
    ended = session(gateway, timed["id"])
    assert ended["end_reason"] == "duration"
    counters = ended["counters"]
    # Every reading the session routed, over both runs, arrived at its own UDP target.
    assert counters["routes"][0]["offered"] == counters["readings"]
    wait_until(lambda: len(collectors["a"].readings) == counters["readings"], 5, "in flight")
    at_end = len(collectors["a"].readings)
    # Time passes (the other session and the configured sink go on), the ended one gets none.
    b_now, configured_now = len(collectors["b"].readings), len(collectors["configured"].readings)
    wait_until(lambda: len(collectors["b"].readings) >= b_now + 50, 15, "the other session")
    wait_until(lambda: len(collectors["configured"].readings) >= configured_now + 100, 15, "udp")
    assert len(collectors["a"].readings) == at_end

    # Each session got its own selection, at its own sinks and under its own topic.
    assert {r["device"] for r in collectors["a"].readings} == {"bench-1"}
    assert {r["device"] for r in collectors["b"].readings} == {"other"}
    topics = {topic for topic, _payload, _at in runs.messages}
    assert topics == {"runs/7/bench-1/default"}
    # The configured routes were untouched: both devices, in order, no gaps across it all.
    configured = collectors["configured"].readings
    for device in ("bench-1", "other"):
        seqs = [r["seq"] for r in configured if r["device"] == device]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), device
    # A session's readings are the gateway's readings: same numbers as at the configured sink.
    configured_seqs = {r["seq"] for r in configured if r["device"] == "bench-1"}
    assert {r["seq"] for r in collectors["a"].readings} <= configured_seqs
    published = [json.loads(payload)["seq"] for _topic, payload, _at in runs.messages]
    assert sorted(set(published)) == sorted({r["seq"] for r in collectors["a"].readings})

    deleted = call(sessions_url(gateway, other["id"]), "DELETE", OPERATOR)
    assert deleted.status == 200 and deleted.json()["end_reason"] == "deleted"
    assert call(sessions_url(gateway, other["id"]), token=OPERATOR).status == 404
    gateway.close()
    runs.close()


def test_a_session_with_max_readings_ends_after_exactly_that_many(setup):
    toml, path, collectors = setup
    gateway = ThreadedGateway(toml.replace('url = "', 'enabled = false\nurl = "'), path).start()
    started = start_session(
        gateway,
        {
            "name": "ten",
            "sinks": {"a-udp": {"type": "udp", "targets": [f"127.0.0.1:{collectors['a'].port}"]}},
            "routes": [{"sink": "a-udp"}],
            "max_readings": 10,
        },
    )
    wait_until(lambda: session(gateway, started["id"])["state"] == "ended", 15, "the end")
    assert session(gateway, started["id"])["end_reason"] == "readings"
    wait_until(lambda: len(collectors["a"].readings) >= 10, 5, "the ten readings")
    configured_now = len(collectors["configured"].readings)
    wait_until(lambda: len(collectors["configured"].readings) >= configured_now + 50, 15, "more")
    assert len(collectors["a"].readings) == 10
    gateway.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "x", "routes": [{"sink": "nope"}]}, 400, "routes[0].sink: expected one of"),
        ({"name": "x", "routes": [{"type": "udp"}]}, 400, "routes[0].type: a session routes"),
        ({"name": "x", "select": ["a/#/b"], "routes": [{"sink": "udp"}]}, 400, "select[0]: '#'"),
        (
            {"name": "x", "sinks": {"w": {"type": "websocket"}}, "routes": [{"sink": "w"}]},
            400,
            "sinks.w.type: expected one of udp, recorder, webhook",
        ),
        ({"name": "x", "duration": "soon", "routes": [{"sink": "udp"}]}, 400, "duration:"),
        (
            {
                "name": "x",
                "sinks": {"udp": {"type": "udp", "targets": ["127.0.0.1:9"]}},
                "routes": [{"sink": "udp"}],
            },
            409,
            "sinks.udp: a sink of that name exists already",
        ),  # fmt: skip
    ],
)
def test_a_bad_session_is_refused_naming_the_field(setup, body, status, message):
    toml, path, _collectors = setup
    gateway = ThreadedGateway(toml, path).start()
    answer = call(sessions_url(gateway), "POST", OPERATOR, body)
    assert answer.status == status, answer.body
    assert answer.json()["error"]["message"].startswith(message), answer.body
    assert call(sessions_url(gateway), token=OPERATOR).json()["sessions"] == []
    gateway.close()


def test_two_running_sessions_cannot_share_a_name(setup):
    toml, path, _collectors = setup
    gateway = ThreadedGateway(toml, path).start()
    body = {"name": "same", "routes": [{"sink": "udp", "batch": {"max_readings": 5}}]}
    start_session(gateway, body)
    again = call(sessions_url(gateway), "POST", OPERATOR, body)
    assert again.status == 409
    assert again.json()["error"]["message"] == "name: a running session is named 'same'"
    assert call(sessions_url(gateway), "POST", token_for("viewer"), body).status == 403
    gateway.close()


def test_a_session_records_to_a_file_of_its_own(setup, tmp_path):
    toml, path, _collectors = setup
    gateway = ThreadedGateway(toml, path).start()
    recordings = tmp_path / "recordings"
    started = start_session(
        gateway,
        {
            "name": "lab-run",
            "select": ["other/#"],
            "sinks": {"file": {"type": "recorder", "path": str(recordings)}},
            "routes": [{"sink": "file"}],
            "max_readings": 30,
        },
    )
    wait_until(lambda: session(gateway, started["id"])["state"] == "ended", 15, "the end")
    ended = session(gateway, started["id"])
    gateway.close()
    (recording,) = recordings.iterdir()
    assert recording.name.startswith("sessions_lab-run-file_")
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert len(lines) == 30 and {line["device"] for line in lines} == {"other"}
    assert ended["counters"]["sinks"]["file"]["delivered"] == 30


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_session_posts_to_a_webhook_of_its_own(setup):
    toml, path, _collectors = setup
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    hook.posts = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    gateway = ThreadedGateway(toml, path).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/in"
        started = start_session(
            gateway,
            {
                "name": "to-hook",
                "select": ["bench-1/#"],
                "sinks": {"hook": {"type": "webhook", "url": url}},
                "routes": [{"sink": "hook"}],
                "max_readings": 40,
            },
        )
        wait_until(lambda: session(gateway, started["id"])["state"] == "ended", 15, "the end")
        ended = session(gateway, started["id"])
    finally:
        gateway.close()
        hook.shutdown()
    readings = [reading for _key, batch in hook.posts for reading in batch]
    assert len(readings) == 40 and {r["device"] for r in readings} == {"bench-1"}
    assert len({key for key, _batch in hook.posts}) == len(hook.posts)  # a key per batch
    assert ended["counters"]["sinks"]["hook"]["delivered"] == 40
