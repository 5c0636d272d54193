"""The board's sinks, MQTT (through mqtt_adapter) and UDP, each draining its own buffer.

A sink takes readings with offer() (encoded at once, queued in its Buffer) and a task per
sink delivers them oldest first. Failures go to the core breaker and backoff: after a
failed connect or send the sink waits a full-jitter backoff, and an open breaker holds
every attempt back until its reset time. Delivery is at least once.
"""

import json

from buffer import Buffer
from mqtt_adapter import Connection, MqttError

from gateway.core import compat
from gateway.core.backoff import Backoff
from gateway.core.breaker import Breaker
from gateway.core.routing import render_topic

BURST = 32  # entries delivered before other tasks get a turn
IDLE_MS = 1000  # wake-up without work: flush and keepalive checks
STATUS_TOPIC = "gw/{gateway}/status"


def encode(reading):
    return json.dumps(reading, separators=(",", ":")).encode()


class Sink:
    kind = None
    eager = False  # connects before it has anything to send (MQTT: availability)

    def __init__(self, name, options, gateway, settings, log):
        self.name = name
        self.options = options
        self.gateway = gateway
        self.log = log
        buffer = settings["buffer"]
        self.buffer = Buffer(
            settings["data_dir"] + "/" + name,
            options["max_bytes"],
            options["overflow"],
            buffer["ram"],
            buffer["batch"],
            settings["segment_bytes"],
        )
        self.breaker = Breaker(
            options["breaker"]["failures"],
            options["breaker"]["reset_after"],
            on_change=self._breaker_changed,
        )
        self.backoff = Backoff(options["retry"]["base"], options["retry"]["cap"])
        self.blocks = options["overflow"] == "block"  # a refusal here is no policy drop
        self.connected = False
        self.wake = compat.Event()
        self.counters = {"sent": 0, "failures": 0, "connects": 0}
        self.error = None

    def offer(self, reading, route):
        """Queue a reading; False when the buffer refused it (counted there)."""
        if not self.buffer.put(self.entry(reading, route)):
            return False
        self.wake.set()
        return True

    def room(self):
        return self.buffer.room()

    def stats(self):
        stats = dict(self.counters)
        stats["buffer"] = self.buffer.stats()
        stats["breaker"] = self.breaker.state
        stats["connected"] = self.connected
        return stats

    async def run(self, network_up):
        while True:
            buffer = self.buffer
            if not self.connected:
                if buffer.due():
                    buffer.flush()
                if self.eager or buffer.peek() is not None:
                    if not network_up() or not self.breaker.allow():
                        await compat.sleep_ms(max(50, int(self.breaker.remaining() * 1000)))
                        continue
                    if not self._attempt(self._connect):
                        await self._back_off()
                        continue
                    self.connected = True
                    self.counters["connects"] += 1
            if buffer.peek() is None:
                buffer.checkpoint()
                self.wake.clear()
                try:
                    await compat.wait_for(self.wake.wait(), IDLE_MS / 1000)
                except compat.TimeoutError:
                    self._idle()
                continue
            if not self._deliver_burst():
                await self._back_off()
                continue
            await compat.sleep_ms(0)

    def _deliver_burst(self):
        buffer = self.buffer
        for _ in range(BURST):
            body = buffer.peek()
            if body is None:
                return True
            if not self._attempt(self.send, body):
                return False
            buffer.pop()
            self.counters["sent"] += 1
        return True

    def _attempt(self, action, *args):
        try:
            action(*args)
        except (OSError, MqttError) as error:
            self.counters["failures"] += 1
            self.error = str(error)
            self.breaker.failure()
            if self.connected:
                self.log(30, f"sink {self.name}: {error}; buffering")
            self.connected = False
            self.disconnect(False)
            return False
        if self.breaker.state != "closed" or self.breaker.failures:
            self.breaker.success()
        self.backoff.reset()
        return True

    async def _back_off(self):
        self.buffer.flush()  # what waits for a connection waits on flash
        await compat.sleep_ms(int(self.backoff.next() * 1000))

    def _breaker_changed(self, old, new):
        self.log(30 if new == "open" else 20, f"sink {self.name}: breaker {old} -> {new}")

    def _idle(self):
        """Nothing to send for a while."""

    def close(self):
        """Flush what is undelivered to flash and leave cleanly."""
        self.buffer.flush()
        self.buffer.checkpoint()
        self.disconnect(True)


class MqttSink(Sink):
    kind = "mqtt"
    eager = True

    def __init__(self, name, options, gateway, settings, log):
        super().__init__(name, options, gateway, settings, log)
        self.status_topic = STATUS_TOPIC.replace("{gateway}", gateway)
        will = (self.status_topic, b"offline") if options["availability"] else None
        self.connection = Connection(options, will)

    def entry(self, reading, route):
        """u8 qos | u8 retain | topic | 0x00 | payload: what one PUBLISH needs."""
        topic = render_topic(route.get("topic") or self.options["topic"], reading)
        qos = route.get("qos", self.options["qos"])
        retain = route.get("retain", self.options["retain"])
        return bytes((qos, 1 if retain else 0)) + topic.encode() + b"\x00" + encode(reading)

    def _connect(self):
        self.connection.open()
        if self.options["availability"]:
            self.connection.publish(self.status_topic, b"online", 1, True)
        self.log(
            20,
            f"sink {self.name}: connected to {self.options['host']}:{self.options['port']}",
        )

    def send(self, body):
        split = body.index(b"\x00", 2)
        self.connection.publish(body[2:split], body[split + 1 :], body[0], bool(body[1]))

    def _idle(self):
        if self.connected:
            try:
                self.connection.ping()
            except MqttError as error:
                self.connected = False
                self.log(30, f"sink {self.name}: {error}")

    def disconnect(self, clean):
        if not clean:
            self.connection.close()
            return
        if self.connected and self.options["availability"]:
            try:
                self.connection.publish(self.status_topic, b"offline", 1, True)
            except MqttError:
                return
        self.connection.disconnect()
        self.connected = False


class UdpSink(Sink):
    kind = "udp"

    def __init__(self, name, options, gateway, settings, log):
        super().__init__(name, options, gateway, settings, log)
        self.socket = None
        self.addresses = []

    def entry(self, reading, route):
        return encode(reading)

    def _connect(self):
        import socket

        self.addresses = [
            socket.getaddrinfo(host, port)[0][-1] for host, port in self.options["targets"]
        ]
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, body):
        if len(body) > self.options["max_datagram"]:
            self.counters["oversize"] = self.counters.get("oversize", 0) + 1
            return  # never fits a datagram: counted, not retried for ever
        for address in self.addresses:
            self.socket.sendto(body, address)

    def disconnect(self, clean):
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self.connected = False


KINDS = {"mqtt": MqttSink, "udp": UdpSink}


def make_sink(name, options, gateway, settings, log):
    return KINDS[options["type"]](name, options, gateway, settings, log)
