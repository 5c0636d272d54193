"""The gateway conformance suite: a running gateway and its broker against DESIGN's contracts.

Checks the API (health, metrics), then what reaches the broker: every reading on its topic
(`gw/{gateway}/{device}/{stream}` by default) in the envelope of DESIGN §3, `seq` counting
up per device and stream, the retained availability `online` and per-device status, and
the last will: the suite takes the gateway's MQTT client id over once, so the broker drops
the gateway's connection as if it had died and must publish its will, `offline`; the
gateway is expected to come back `online` by itself.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from host_tools.mqtt_probe import MqttProbe, MqttProbeError, take_over
from host_tools.report import CheckFailed, CheckResult, run_check
from host_tools.wire import hex_bytes

CHECKS = (
    "api_health",
    "api_metrics",
    "availability",
    "envelope",
    "topics",
    "seq",
    "device_status",
    "will",
)
TOPIC_TEMPLATE = "gw/{gateway}/{device}/{stream}"
STATUS_TOPIC = "gw/{gateway}/status"
ENVELOPE = {"gateway": str, "device": str, "stream": str, "seq": int, "ts": (int, float)}
HEALTH_STATES = ("ok", "degraded", "failing")
REQUIRED_METRICS = ("gateway_readings", "gateway_sink_delivered", "gateway_source_connected")
COLLECT_SECONDS = 5.0
RECONNECT_WAIT = 30.0  # seconds the gateway gets to come back online after losing its link
CLOCK_SLACK = 300.0  # a reading's ts may be this far from the suite's clock


class GatewaySuite:
    def __init__(
        self,
        api: str,
        mqtt_url: str,
        token: str | None = None,
        seconds: float = COLLECT_SECONDS,
        client_id: str = "gw-{gateway}",
        topic: str = TOPIC_TEMPLATE,
        log: Callable = print,
        only: list[str] | None = None,
    ):
        self.api = api.rstrip("/")
        self.mqtt_url = mqtt_url
        self.token = token
        self.seconds = seconds
        self.client_id = client_id
        self.topic = topic
        self.log = log
        self.only = only
        self.gateway: str | None = None
        self.readings: list[tuple[str, dict[str, Any], bytes]] = []  # (topic, reading, payload)
        self.messages: list = []

    # -- HTTP ---------------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.api + "/api/v1" + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read()
        except OSError as error:
            raise CheckFailed(f"GET {self.api}/api/v1{path} to answer", str(error)) from None

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.get(path)
        try:
            return status, json.loads(body)
        except ValueError:
            seen = body[:200].decode("utf-8", "replace")
            raise CheckFailed(f"JSON from GET {path}", seen) from None

    # -- the checks ---------------------------------------------------------------------------

    def run(self) -> list[CheckResult]:
        checks = {
            "api_health": self.check_api_health,
            "api_metrics": self.check_api_metrics,
            "availability": self.check_availability,
            "envelope": self.check_envelope,
            "topics": self.check_topics,
            "seq": self.check_seq,
            "device_status": self.check_device_status,
            "will": self.check_will,
        }
        results = []
        for name in CHECKS:
            if self.only and name not in self.only:
                continue
            self.log(f"running {name} ...")
            results.append(run_check(name, self._broker_errors(checks[name])))
        return results

    def _broker_errors(self, check: Callable[[], str]) -> Callable[[], str]:
        def guarded() -> str:
            try:
                return check()
            except MqttProbeError as error:
                raise CheckFailed(f"the broker at {self.mqtt_url} to answer", str(error)) from None

        return guarded

    def gateway_id(self) -> str:
        if self.gateway is None:
            status, body = self.get_json("/status")
            if status != 200 or not isinstance(body, dict) or not body.get("gateway"):
                raise CheckFailed('GET /status: 200 with {"gateway": id}', f"{status} {body}")
            self.gateway = body["gateway"]
        return self.gateway

    def check_api_health(self) -> str:
        status, body = self.get_json("/health")
        if status not in (200, 503) or not isinstance(body, dict):
            raise CheckFailed(
                "GET /health: 200 (or 503 when failing) with a JSON object", f"{status}"
            )
        state = body.get("status")
        if state not in HEALTH_STATES:
            raise CheckFailed(f"health status one of {', '.join(HEALTH_STATES)}", repr(state))
        live, _, _ = self.get("/health/live")
        if live != 200:
            raise CheckFailed("GET /health/live: 200", str(live))
        return f"status {state}; gateway {self.gateway_id()}"

    def check_api_metrics(self) -> str:
        from prometheus_client.parser import text_string_to_metric_families

        status, kind, body = self.get("/metrics")
        if status != 200 or not kind.startswith("text/plain"):
            raise CheckFailed("GET /metrics: 200, text/plain (Prometheus)", f"{status} {kind}")
        try:
            families = {
                family.name: family for family in text_string_to_metric_families(body.decode())
            }
        except ValueError as error:
            raise CheckFailed("Prometheus text exposition", str(error)) from None
        missing = [name for name in REQUIRED_METRICS if name not in families]
        if missing:
            raise CheckFailed("metrics " + ", ".join(REQUIRED_METRICS), "no " + ", ".join(missing))
        return f"{len(families)} metric families"

    def _status_messages(self, topic: str, wanted: Callable[[list], bool], timeout: float):
        probe = MqttProbe(self.mqtt_url, f"conformance-{time.monotonic_ns()}")
        try:
            probe.subscribe([topic])
            return probe.messages(timeout, wanted)
        finally:
            probe.close()

    def check_availability(self) -> str:
        topic = STATUS_TOPIC.format(gateway=self.gateway_id())
        found = self._status_messages(topic, lambda found: bool(found), 3.0)
        if not found:
            raise CheckFailed(f"a retained `online` on {topic}", "nothing retained there")
        message = found[0]
        if message.payload != b"online" or not message.retain:
            raise CheckFailed(
                f"a retained `online` on {topic}",
                f"{message.payload!r} (retained: {message.retain})",
                [hex_bytes(message.payload)],
            )
        return f"{topic} = online (retained)"

    def _collect(self) -> None:
        if self.messages:
            return
        probe = MqttProbe(self.mqtt_url, f"conformance-{time.monotonic_ns()}")
        try:
            probe.subscribe(["#"])
            self.messages = [
                message for message in probe.messages(self.seconds) if not message.retain
            ]
        finally:
            probe.close()
        gateway = self.gateway_id()
        for message in self.messages:
            if message.topic.startswith(("homeassistant/", "$")) or message.topic.endswith(
                "/status"
            ):
                continue
            try:
                decoded = json.loads(message.payload)
            except ValueError:
                raise CheckFailed(
                    "readings as JSON (the default encoding)",
                    f"a payload that is not JSON on {message.topic}",
                    [hex_bytes(message.payload)],
                ) from None
            for reading in decoded if isinstance(decoded, list) else [decoded]:
                if isinstance(reading, dict) and reading.get("gateway") not in (None, gateway):
                    continue  # another gateway on the same broker
                self.readings.append((message.topic, reading, message.payload))

    def check_envelope(self) -> str:
        self._collect()
        if not self.readings:
            raise CheckFailed(
                f"readings published within {self.seconds:g} s", "none (is a source running?)"
            )
        now = time.time()
        for topic, reading, payload in self.readings:
            problem = envelope_problem(reading, now)
            if problem:
                raise CheckFailed(
                    'each reading {"gateway", "device", "stream", "seq", "ts", "data"} as '
                    "DESIGN §3 says",
                    f"{problem} on {topic}: {json.dumps(reading)[:200]}",
                    [hex_bytes(payload)],
                )
        return f"{len(self.readings)} readings, every envelope complete"

    def check_topics(self) -> str:
        self._collect()
        if not self.readings:
            raise CheckFailed("readings to check the topics of", "none")
        for topic, reading, payload in self.readings:
            try:
                wanted = self.topic.format(**reading)
            except (KeyError, IndexError, TypeError):
                continue  # the envelope check names what is missing
            if topic != wanted:
                raise CheckFailed(
                    f"the reading of {reading.get('device')}/{reading.get('stream')} on {wanted}"
                    f" (template {self.topic})",
                    f"topic {topic}",
                    [hex_bytes(payload)],
                )
        topics = sorted({topic for topic, _, _ in self.readings})
        return f"{len(topics)} topic(s): " + ", ".join(topics[:4])

    def check_seq(self) -> str:
        self._collect()
        last: dict[tuple, int] = {}
        duplicates = 0
        for _, reading, payload in self.readings:
            key = (reading.get("device"), reading.get("stream"))
            seq = reading.get("seq")
            if not isinstance(seq, int):
                continue
            before = last.get(key)
            if before is not None and seq <= before:
                duplicates += 1  # at-least-once: a repeat, never a step back past it
                continue
            if before is not None and seq != before + 1:
                raise CheckFailed(
                    f"seq of {key[0]}/{key[1]} counting up by 1 (after {before}: {before + 1})",
                    f"seq {seq}",
                    [hex_bytes(payload)],
                )
            last[key] = seq
        if not last:
            raise CheckFailed("readings with seq", "none")
        return f"{len(last)} stream(s) continuous, {duplicates} repeats"

    def check_device_status(self) -> str:
        self._collect()
        gateway = self.gateway_id()
        devices = sorted({reading.get("device") for _, reading, _ in self.readings} - {None})
        if not devices:
            raise CheckFailed("readings naming their device", "none")
        for device in devices:
            topic = f"gw/{gateway}/{device}/status"
            found = self._status_messages(topic, lambda found: bool(found), 3.0)
            if not found or found[0].payload != b"online" or not found[0].retain:
                seen = "nothing retained" if not found else repr(found[0].payload)
                raise CheckFailed(f"a retained `online` on {topic}", seen)
        return f"{len(devices)} device(s) online"

    def check_will(self) -> str:
        gateway = self.gateway_id()
        topic = STATUS_TOPIC.format(gateway=gateway)
        probe = MqttProbe(self.mqtt_url, f"conformance-will-{time.monotonic_ns()}")
        try:
            probe.subscribe([topic])
            probe.messages(1.0, lambda found: bool(found))  # the retained state, if any
            take_over(self.mqtt_url, self.client_id.format(gateway=gateway))
            offline = probe.messages(5.0, lambda found: any(m.payload == b"offline" for m in found))
            if not any(message.payload == b"offline" for message in offline):
                raise CheckFailed(
                    f"the last will `offline` on {topic} when the gateway's connection dropped "
                    f"(its client id {self.client_id.format(gateway=gateway)} taken over)",
                    "no will: " + (", ".join(repr(m.payload) for m in offline) or "nothing"),
                )
            back = probe.messages(
                RECONNECT_WAIT, lambda found: any(m.payload == b"online" for m in found)
            )
            if not any(message.payload == b"online" for message in back):
                raise CheckFailed(
                    f"`online` again on {topic} within {RECONNECT_WAIT:g} s",
                    "the gateway stayed away",
                )
            took = back[-1].at - offline[-1].at
        finally:
            probe.close()
        return f"will `offline` published, back online after {took:.1f} s"


def envelope_problem(reading: Any, now: float) -> str | None:
    if not isinstance(reading, dict):
        return "not a JSON object"
    for key, kind in ENVELOPE.items():
        value = reading.get(key)
        if value is None:
            return f"no {key!r}"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is {json.dumps(value)}"
    if not isinstance(reading.get("data"), dict):
        return "no 'data' object"
    ts = reading["ts"]
    if not math.isfinite(ts) or abs(ts - now) > CLOCK_SLACK:
        return f"'ts' {ts} is not the time (now {now:.0f})"
    return None


def run_gateway_suite(
    api: str, mqtt_url: str, token: str | None = None, log: Callable = print, **options: Any
) -> list[CheckResult]:
    return GatewaySuite(api, mqtt_url, token, log=log, **options).run()
