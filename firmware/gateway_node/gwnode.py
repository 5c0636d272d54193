"""The gateway node: its sources, sinks, clock, Wi-Fi and watchdog, and the main loop.

The main loop feeds the watchdog, flushes undelivered readings to flash every flush_ms
(so a power cut loses at most that much), tries NTP while the clock is unset, and logs a
status line (free heap, counters) every status_ms.
"""

import gc

import logring
from buffer import makedirs
from clock import Clock
from ingest import Ingest
from seqs import Sequences
from sinks import make_sink
from sources import CobsSource, LineSource
from watchdog import Watchdog
from wifi import Wifi

from gateway.core import compat

TICK_MS = 100
RESTART_MS = 1000  # pause before a failed task starts again
NTP_RETRY_MS = 60000  # between NTP attempts while the clock is not set
GC_MS = 1000  # a collection this often keeps the small heap from fragmenting


class GatewayNode:
    def __init__(self, config, echo=None):
        self.config = config
        logring.configure(config.get("log_ring", 32), echo)
        self.log = logring.log
        makedirs(config["data_dir"])
        self.clock = Clock(config.get("ntp"))
        self.wifi = Wifi(config.get("wifi"), self.log)
        self.sequences = Sequences(config["data_dir"] + "/seq")
        self.sinks = {}
        for name in config["sinks"]:
            self.sinks[name] = make_sink(
                name, config["sinks"][name], config["gateway"], config, self.log
            )
        self.sources = []
        for spec in config["sources"]:
            ingest = Ingest(
                spec, config["gateway"], self.sinks, self.sequences, self.clock, self.log
            )
            if spec["framing"] == "cobs":
                self.sources.append(CobsSource(spec, ingest, self.log, self.settle))
            else:
                self.sources.append(LineSource(spec, ingest, self.log))
        self.watchdog = Watchdog(config.get("wdt_ms", 0))
        self.stopping = False
        self.counters = {"restarts": 0, "main_errors": 0}

    async def settle(self):
        """Make every reading offered so far stored: delivered, or on flash. Sinks get one
        turn first, so with the broker up most readings are delivered, not written."""
        await compat.sleep_ms(0)
        for sink in self.sinks.values():
            sink.buffer.flush()
        # RAM still holding readings after a flush means the flash write failed: no ACK.
        return all(not (sink.buffer.max_bytes and sink.buffer.ram) for sink in self.sinks.values())

    async def run(self):
        gc.collect()
        # Collect after a quarter of what is free has been allocated, not only when an
        # allocation fails: a small heap then fragments less (MicroPython's own advice).
        if hasattr(gc, "threshold"):
            gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
        self.log(
            20,
            f"gateway node {self.config['gateway']}: {len(self.sources)} sources,"
            f" {len(self.sinks)} sinks, {gc.mem_free()} bytes free",
        )
        jobs = [("wifi", self.wifi.keep_up)]
        for name in self.sinks:
            jobs.append(("sink " + name, self._sink_job(self.sinks[name])))
        for source in self.sources:
            jobs.append(("source " + source.name, source.run))
        tasks = [compat.create_task(self._guard(name, job)) for name, job in jobs]
        try:
            await self._main_loop()
        finally:
            for task in tasks:
                task.cancel()
            self.close()

    def close(self):
        """Undelivered readings to flash, "offline" published, connections closed cleanly."""
        if self.stopping is None:
            return
        self.stopping = None
        for sink in self.sinks.values():
            sink.close()

    def _sink_job(self, sink):
        return lambda: sink.run(self.wifi.up)

    async def _guard(self, name, job):
        """Run a task for ever: a failure (a bug, MemoryError) is logged and it starts again,
        so one part going wrong never stops the others or the watchdog's feeding."""
        while True:
            try:
                await job()
                return
            except compat.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - an unattended board must keep going
                gc.collect()
                self.counters["restarts"] += 1
                self.log(40, f"{name} failed ({type(error).__name__}: {error}), restarting")
                await compat.sleep_ms(RESTART_MS)

    async def _main_loop(self):
        flush_ms = self.config["buffer"]["flush_ms"]
        status_ms = self.config.get("status_ms", 60000)
        self.due = {"flush": compat.ticks_ms(), "status": compat.ticks_ms(), "ntp": None}
        self.due["gc"] = self.due["flush"]
        while self.stopping is False:
            self.watchdog.feed()
            try:
                self._housekeeping(flush_ms, status_ms)
            except Exception as error:  # noqa: BLE001 - the loop that feeds the watchdog
                gc.collect()
                self.counters["main_errors"] += 1
                if self.counters["main_errors"] % 100 == 1:
                    self.log(40, f"main loop: {type(error).__name__}: {error}")
            await compat.sleep_ms(TICK_MS)

    def _housekeeping(self, flush_ms, status_ms):
        """Flush to flash, collect, try NTP, log the status: each when it is due."""
        now = compat.ticks_ms()
        due = self.due
        if compat.ticks_diff(now, due["flush"]) >= flush_ms:
            due["flush"] = now
            for sink in self.sinks.values():
                sink.buffer.flush()
        if compat.ticks_diff(now, due["gc"]) >= GC_MS:
            due["gc"] = now
            gc.collect()
        ntp_due = due["ntp"] is None or compat.ticks_diff(now, due["ntp"]) >= NTP_RETRY_MS
        if not self.clock.synced and self.wifi.up() and ntp_due:
            due["ntp"] = now
            if self.clock.sync():
                self.log(20, "clock set by NTP")
        if status_ms and compat.ticks_diff(now, due["status"]) >= status_ms:
            due["status"] = now
            self.log_status()

    def log_status(self):
        """Status lines: "status node" (free heap, restarts), then one per source and sink
        with its counters, as JSON: one line each, written in pieces (logring.status)."""
        gc.collect()
        node = {"mem_free": gc.mem_free()}
        node.update(self.counters)
        logring.status("node", node)
        for source in self.sources:
            logring.status("source " + source.name, source.stats())
        for name in self.sinks:
            logring.status("sink " + name, self.sinks[name].stats())
