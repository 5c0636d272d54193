"""Home Assistant MQTT discovery and per-device availability, published beside an MQTT sink."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any, Callable

from gateway import __version__
from gateway.sinks.base import SinkError

log = logging.getLogger("gateway.sinks.discovery")

DEVICE_STATUS_TOPIC = "gw/{gateway}/{device}/status"
ORIGIN = {
    "name": "edge-gateway",
    "sw_version": __version__,
    "support_url": "https://github.com/edge-gateway/edge-gateway",
}
# Field names Home Assistant has a sensor device class for, with the unit the field is taken
# to be in (readings carry no units: a convert step names the target unit in the field).
FIELD_CLASSES: dict[str, tuple[str, str | None]] = {
    "temperature": ("temperature", "°C"),
    "temp": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "pressure": ("pressure", "hPa"),
    "co2": ("carbon_dioxide", "ppm"),
    "pm25": ("pm25", "µg/m³"),
    "pm10": ("pm10", "µg/m³"),
    "voltage": ("voltage", "V"),
    "current": ("current", "A"),
    "power": ("power", "W"),
    "energy": ("energy", "kWh"),
    "battery": ("battery", "%"),
    "illuminance": ("illuminance", "lx"),
    "lux": ("illuminance", "lx"),
    "speed": ("speed", "m/s"),
}
UNIT_SUFFIXES: dict[str, tuple[str, str]] = {  # temperature_c, pressure_hpa, ...
    "c": ("temperature", "°C"),
    "f": ("temperature", "°F"),
    "k": ("temperature", "K"),
    "hpa": ("pressure", "hPa"),
    "pa": ("pressure", "Pa"),
    "kpa": ("pressure", "kPa"),
    "bar": ("pressure", "bar"),
    "psi": ("pressure", "psi"),
    "m_s": ("speed", "m/s"),
    "km_h": ("speed", "km/h"),
    "mph": ("speed", "mph"),
    "mm": ("distance", "mm"),
    "cm": ("distance", "cm"),
    "m": ("distance", "m"),
    "km": ("distance", "km"),
    "g": ("weight", "g"),
    "kg": ("weight", "kg"),
}
CHECK_EVERY = 1.0  # how often silence is looked for, at most
# Fields announced per device at most: a device sending ever new field names (bad input)
# must not grow the gateway or Home Assistant without bound.
MAX_FIELDS = 256
_INVALID_ID = re.compile(r"[^a-zA-Z0-9_-]+")


def object_id(text: str) -> str:
    """A valid discovery node or object id: [a-zA-Z0-9_-], anything else becomes "_"."""
    return _INVALID_ID.sub("_", str(text)).strip("_") or "_"


def field_class(field: str) -> tuple[str | None, str | None]:
    """(device_class, unit_of_measurement) Home Assistant gets for a field, where known."""
    name = field.lower()
    if name in FIELD_CLASSES:
        return FIELD_CLASSES[name]
    for suffix, known in UNIT_SUFFIXES.items():
        base = name[: -len(suffix) - 1]
        fits = base in FIELD_CLASSES and FIELD_CLASSES[base][0] == known[0]
        if name.endswith("_" + suffix) and fits:
            return known
    return None, None


class Announcer:
    """Discovery configs and device statuses for one MQTT sink.

    The sink hands every reading of a watched device to seen() (a set lookup for known
    fields); new (device, stream, field) triples and status changes wait in small maps and
    this object's task publishes them, retained at QoS 1, while the sink is connected. A
    birth message from Home Assistant re-publishes everything; devices announced by an
    earlier run and no longer configured are removed (empty retained configs) at the first
    connection. What was announced is kept in `state_path` for that.
    """

    def __init__(
        self,
        publish: Callable[..., Any],
        gateway_id: str,
        prefix: str,
        gateway_status: str,
        state_path: str | None,
        silence: float = 60.0,
    ):
        self.publish = publish  # the sink's publish_raw(topic, payload, qos, retain)
        self.gateway_id = gateway_id
        self.prefix = prefix
        self.birth_topic = f"{prefix}/status"
        self.gateway_status = gateway_status
        self.state_path = state_path
        self.silence = silence
        self.devices: dict[str, dict[str, Any]] = {}  # watched device → its description
        self.fields: dict[tuple, frozenset] = {}  # (device, stream) → fields announced
        self.configs: dict[str, bytes] = {}  # config topic → payload, all announced
        self.by_device: dict[str, set[str]] = {}
        self.pending: dict[str, bytes] = {}  # topic → retained payload still to publish
        self.link: dict[str, bool] = {}
        self.status: dict[str, str] = {}  # device → last published status
        self.last_seen: dict[str, float] = {}
        self.counters = {
            "configs": 0,
            "removed": 0,
            "republished": 0,
            "statuses": 0,
            "fields_over_limit": 0,
        }
        self._earlier = self._load_state()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- from the app and the sink -------------------------------------------------------------
    def watch(self, device: str, model: str, discover: bool = True) -> None:
        """Publish this device's status and, when `discover` (its preset says discovery =
        true), announce its fields to Home Assistant as its readings come."""
        self.devices[device] = {"model": model, "discover": discover}
        self.link.setdefault(device, False)

    def seen(self, reading: dict, state_topic: str | None) -> None:
        """A reading of a watched device: it is alive; `state_topic` (None: the device is
        not announced, or its readings cannot be read there) announces new fields."""
        device = reading.get("device")
        if device not in self.devices:
            return
        self.last_seen[device] = time.monotonic()
        if state_topic is None or not self.devices[device]["discover"]:
            return
        key = (device, reading.get("stream"))
        data = reading.get("data") or {}
        known = self.fields.get(key)
        if known is not None and data.keys() <= known:
            return
        new = [field for field in data if known is None or field not in known]
        self.fields[key] = frozenset(data) | (known or frozenset())
        room = max(0, MAX_FIELDS - len(self.by_device.get(device, ())))
        if len(new) > room:
            if not self.counters["fields_over_limit"]:
                log.warning("discovery: %s has over %d fields; the rest are not announced",
                            device, MAX_FIELDS)  # fmt: skip
            self.counters["fields_over_limit"] += len(new) - room
            new = new[:room]
        for field in new:
            topic, payload = self._config(device, key[1], field, state_topic)
            self.configs[topic] = payload
            self.by_device.setdefault(device, set()).add(topic)
            self.pending[topic] = payload
        self._wakeup.set()

    def device_link(self, device: str, up: bool) -> None:
        """The device's serial link went up or down (a source event)."""
        if device in self.devices:
            self.link[device] = up
            if up:
                self.last_seen[device] = time.monotonic()
            self._wakeup.set()

    def connected(self) -> None:
        """A new connection: everything retained is published again (a broker may have
        restarted without persistence), earlier devices no longer configured are removed."""
        self.pending.update(self.configs)
        self.status.clear()
        for device, topics in self._earlier.items():
            if device in self.devices:  # still configured: remembered until it is removed
                self.by_device.setdefault(device, set()).update(topics)
                continue
            self.pending.update({topic: b"" for topic in topics})
            self.pending[self._status_topic(device)] = b""
            self.counters["removed"] += len(topics)
        self._earlier = {}
        self._save_state()  # every watched device, so a later run can remove what leaves
        self._wakeup.set()

    def message(self, topic: str, payload: bytes) -> None:
        """A message on a subscribed topic: Home Assistant's birth message re-announces."""
        if topic == self.birth_topic and payload == b"online":
            self.counters["republished"] += 1
            self.pending.update(self.configs)
            self.status.clear()
            self._wakeup.set()

    def describe(self) -> dict[str, Any]:
        """What GET /api/v1/discovery shows: per device its status and config topics."""
        devices = [
            {
                "device": device,
                "model": details["model"],
                "discovery": details["discover"],
                "link": self.link.get(device, False),
                "status": self.status.get(device),
                "configs": sorted(self.by_device.get(device, ())),
            }
            for device, details in self.devices.items()
        ]
        return {"prefix": self.prefix, "devices": devices, "counters": dict(self.counters)}

    # -- the task ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self._publish_pending()
                await self._publish_statuses()
            except (SinkError, OSError) as error:  # not connected: connected() brings it back
                log.debug("discovery: %s", error)
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._check_interval())
            except asyncio.TimeoutError:
                pass

    def _check_interval(self) -> float:
        return min(CHECK_EVERY, self.silence / 4) if self.silence > 0 else CHECK_EVERY

    async def _publish_pending(self) -> None:
        wrote = False
        while self.pending:
            topic, payload = next(iter(self.pending.items()))
            await self.publish(topic, payload, qos=1, retain=True)
            if self.pending.get(topic) is payload:
                del self.pending[topic]
            self.counters["configs"] += 1
            wrote = True
        if wrote:
            self._save_state()

    async def _publish_statuses(self) -> None:
        now = time.monotonic()
        for device in self.devices:
            alive = self.link.get(device, False)
            if alive and self.silence > 0:
                alive = now - self.last_seen.get(device, now) < self.silence
            status = "online" if alive else "offline"
            if self.status.get(device) != status:
                await self.publish(self._status_topic(device), status.encode(), qos=1, retain=True)
                self.status[device] = status
                self.counters["statuses"] += 1

    # -- payloads ------------------------------------------------------------------------------
    def _status_topic(self, device: str) -> str:
        return DEVICE_STATUS_TOPIC.format(gateway=self.gateway_id, device=device)

    def _config(self, device: str, stream: str, field: str, state_topic: str):
        node = object_id(self.gateway_id)
        object_name = object_id(f"{device}_{stream}_{field}")
        topic = f"{self.prefix}/sensor/{node}/{object_name}/config"
        device_class, unit = field_class(field)
        config: dict[str, Any] = {
            "name": f"{stream} {field}",
            "unique_id": f"{node}_{object_name}",
            "state_topic": state_topic,
            "value_template": "{{ value_json['data'][" + json.dumps(field) + "] }}",
            "device": {
                "identifiers": [f"{node}_{object_id(device)}"],
                "name": device,
                "model": self.devices[device]["model"],
                "sw_version": __version__,
                "via_device": node,
            },
            "origin": ORIGIN,
            "availability": [
                {"topic": self.gateway_status},
                {"topic": self._status_topic(device)},
            ],
            "availability_mode": "all",
        }
        if device_class:
            config["device_class"] = device_class
            config["state_class"] = "measurement"
        if unit:
            config["unit_of_measurement"] = unit
        return topic, json.dumps(config, ensure_ascii=False).encode()

    # -- what earlier runs announced -----------------------------------------------------------
    def _load_state(self) -> dict[str, list[str]]:
        if not self.state_path:
            return {}
        try:
            with open(self.state_path, encoding="utf-8") as file:
                devices = json.load(file)["devices"]
            return {str(device): list(topics) for device, topics in devices.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("discovery: %s is unreadable (%s); starting afresh", self.state_path, error)
            return {}

    def _save_state(self) -> None:
        if not self.state_path:
            return
        watched = dict.fromkeys([*self.devices, *self.by_device])
        devices = {device: sorted(self.by_device.get(device, ())) for device in watched}
        partial = self.state_path + ".tmp"
        try:
            with open(partial, "w", encoding="utf-8") as file:
                json.dump({"devices": devices}, file)
            os.replace(partial, self.state_path)
        except OSError as error:
            log.warning("discovery: cannot save %s: %s", self.state_path, error)
