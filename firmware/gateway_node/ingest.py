"""One source's readings: parse (line devices), the preset's steps, seq numbers, routing.

The envelope is the Pi gateway's (gateway/ingest.py, DESIGN §3): gateway, device, stream,
seq, ts, dts when the device sent one and the preset keeps it, data. While the board's
clock is not set, "ts" is seconds since boot and the reading says "unsynced": true (the
Pi's flag for a clock it cannot vouch for).
"""

from gateway.core.parse_errors import ParseError, Skipped


class Ingest:
    def __init__(self, spec, gateway, sinks, sequences, clock, log):
        self.device = spec["name"]
        self.default_stream = spec.get("stream") or "default"
        self.gateway = gateway
        self.sequences = sequences
        self.clock = clock
        self.log = log
        self.parse = None
        self.pipeline = None
        types = None
        if spec.get("steps"):
            # Imported only when the preset has steps; the chain loads only the steps used,
            # and not their validation (host-tools checked the config when compiling it).
            from gateway.core.step_chain import StepChain, declared_types

            self.pipeline = StepChain(spec["steps"])
            types = declared_types(spec["steps"])  # as the Pi's ingest: validate's types
        if spec["framing"] == "lines":
            from gateway.core.parsers import make_parser  # a COBS-only node does without

            self.parse = make_parser(
                spec.get("format") or "json",
                fields=spec.get("fields"),
                pattern=spec.get("pattern"),
                delimiter=spec.get("delimiter"),
                sentences=spec.get("sentences"),
                header=spec.get("header") or False,
                decimal=spec.get("decimal") or ".",
                types=types,
            )
        self.keep_device_time = spec.get("device_time", True)
        self.routes = [(sinks[route["sink"]], route) for route in spec["routes"]]
        self.sinks = []
        for sink, _route in self.routes:
            if sink not in self.sinks:
                self.sinks.append(sink)
        self.counters = {
            "lines": 0,
            "readings": 0,
            "parse_errors": 0,
            "skipped": 0,
            "pipeline_errors": 0,
            "refused": 0,
            "unnumbered": 0,
        }
        self.blocked = 0  # readings a "block" sink refused (a COBS source takes them again)
        self._warned = {}
        self.unsynced = False

    def room(self):
        """False while a sink this source routes to pushes back (policy "block", full)."""
        return all(sink.room() for sink in self.sinks)

    def on_line(self, text):
        self.counters["lines"] += 1
        try:
            data = self.parse(text)
        except Skipped as skip:
            if not skip.held:
                self.counters["skipped"] += 1
            return
        except ParseError as error:
            self.counters["parse_errors"] += 1
            self._warn("parse", f"source {self.device}: bad line dropped: {error}")
            return
        stream = data.pop("stream", None)
        self.on_record(data, stream, data.pop("dts", None))

    def on_record(self, data, stream=None, device_time=None, device=None):
        ts, synced = self.clock.now()
        reading = {
            "gateway": self.gateway,
            "device": device or self.device,
            "stream": str(stream or self.default_stream),
            "seq": 0,
            "ts": ts,
        }
        if device_time is not None and self.keep_device_time:
            reading["dts"] = device_time
        reading["data"] = data
        self.unsynced = not synced
        if self.pipeline is None:
            self._offer(reading)
            return
        try:
            readings = self.pipeline.process(reading)
        except Exception as error:  # noqa: BLE001 - a step bug must not stop the source
            self.counters["pipeline_errors"] += 1
            self._warn("pipeline", f"source {self.device}: pipeline failed: {error}")
            return
        for reading in readings:
            self._offer(reading)

    def _offer(self, reading):
        seq = self.sequences.next(reading["device"], reading["stream"])
        if seq is None:
            self.counters["unnumbered"] += 1
            self._warn("seq", f"source {self.device}: no sequence number could be reserved")
            return
        reading["seq"] = seq
        if self.unsynced:
            reading["unsynced"] = True  # the Pi's flag: ts is seconds since boot until NTP
        self.counters["readings"] += 1
        for sink, route in self.routes:
            if not sink.offer(reading, route):
                self.counters["refused"] += 1
                if sink.blocks:
                    self.blocked += 1

    def _warn(self, kind, text):
        """Logged the first time and then every 100th time, so bad input cannot flood."""
        count = self._warned.get(kind, 0)
        self._warned[kind] = count + 1
        if count % 100 == 0:
            self.log(30, text if not count else f"{text} ({count + 1} times)")
