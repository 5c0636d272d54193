"""machine.WDT fed from the main loop; nothing where the port has no watchdog (unix)."""


class Watchdog:
    def __init__(self, timeout_ms):
        self.wdt = None
        if not timeout_ms:
            return
        try:
            from machine import WDT
        except ImportError:
            return
        self.wdt = WDT(timeout=timeout_ms)

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()
