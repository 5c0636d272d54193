"""Wi-Fi through network.WLAN, connected and reconnected with backoff; absent on a host.

The unix port has no WLAN: there `up()` is always True and nothing is started, so the
same node runs on a host network.
"""

from gateway.core import compat
from gateway.core.backoff import Backoff

CONNECT_TIMEOUT_MS = 15000
CHECK_MS = 1000


class Wifi:
    def __init__(self, spec, log):
        self.spec = spec
        self.log = log
        self.wlan = None
        self.connects = 0
        if spec:
            try:
                import network

                self.wlan = network.WLAN(network.STA_IF)
            except (ImportError, AttributeError):
                self.wlan = None

    def up(self):
        return self.wlan is None or self.wlan.isconnected()

    async def keep_up(self):
        """Connect, and reconnect whenever the link drops (exponential backoff, jitter)."""
        if self.wlan is None:
            return
        backoff = Backoff(1.0, 60.0)
        self.wlan.active(True)
        while True:
            if self.wlan.isconnected():
                backoff.reset()
                await compat.sleep_ms(CHECK_MS)
                continue
            self.log(20, "wifi: connecting to {}".format(self.spec["ssid"]))
            try:
                self.wlan.connect(self.spec["ssid"], self.spec.get("password") or "")
            except OSError as error:
                self.log(30, f"wifi: {error}")
            waited = 0
            while not self.wlan.isconnected() and waited < CONNECT_TIMEOUT_MS:
                await compat.sleep_ms(200)
                waited += 200
            if self.wlan.isconnected():
                self.connects += 1
                self.log(20, f"wifi: up, address {self.wlan.ifconfig()[0]}")
                continue
            delay = backoff.next()
            self.log(30, f"wifi: no connection, retrying in {int(delay * 1000)} ms")
            await compat.sleep_ms(int(delay * 1000))
