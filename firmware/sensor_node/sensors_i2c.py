"""Drivers of the I2C temperature and humidity streams (sht3x, aht20), imported when one is built.

The conversions and CRC checks they use are in sensors.py (pure, tested on any Python).
"""

import machine
from sensors import AHT20_BUSY, FIELDS, SensorError, decode_aht20, decode_sht3x

from gateway.core import compat


def make(stream):
    """The driver for one validated sht3x or aht20 stream config."""
    i2c = make_i2c(stream.get("i2c", {}))
    if stream["type"] == "sht3x":
        return SHT3x(i2c, stream.get("address", SHT3x.ADDRESS))
    return AHT20(i2c, stream.get("address", AHT20.ADDRESS))


def make_i2c(spec):
    """machine.I2C from {"id", "scl", "sda", "freq"}; pins default to the port's own."""
    keywords = {"freq": spec.get("freq", 100000)}
    for pin in ("scl", "sda"):
        if pin in spec:
            keywords[pin] = machine.Pin(spec[pin])
    return machine.I2C(spec.get("id", 0), **keywords)


class SHT3x:
    """Sensirion SHT30/31/35 in single-shot mode, without clock stretching."""

    fields = FIELDS["sht3x"]
    ADDRESS = 0x44  # 0x45 with ADDR pulled high
    MEASURE = b"\x24\x00"  # single shot, high repeatability, clock stretching disabled
    MEASURE_MS = 16  # datasheet: at most 15.5 ms at high repeatability

    def __init__(self, i2c, address=ADDRESS):
        self.i2c = i2c
        self.address = address

    async def read(self):
        try:
            self.i2c.writeto(self.address, self.MEASURE)
            await compat.sleep_ms(self.MEASURE_MS)
            data = self.i2c.readfrom(self.address, 6)
        except OSError as error:  # no ACK on the bus: sensor missing or wired wrongly
            raise SensorError(f"SHT3x at 0x{self.address:02x}: {error}") from None
        return decode_sht3x(data)


class AHT20:
    """Aosong AHT20: calibrate once if the status says so, then trigger and read."""

    fields = FIELDS["aht20"]
    ADDRESS = 0x38
    STATUS = b"\x71"
    INITIALISE = b"\xbe\x08\x00"
    MEASURE = b"\xac\x33\x00"
    CALIBRATED = 0x08
    MEASURE_MS = 80  # datasheet: wait 80 ms, then poll the busy bit
    BUSY_RETRIES = 5

    def __init__(self, i2c, address=ADDRESS):
        self.i2c = i2c
        self.address = address
        self.calibrated = False

    async def read(self):
        try:
            if not self.calibrated:
                await self._calibrate()
            self.i2c.writeto(self.address, self.MEASURE)
            await compat.sleep_ms(self.MEASURE_MS)
            for _ in range(self.BUSY_RETRIES):
                data = self.i2c.readfrom(self.address, 7)
                if not data[0] & AHT20_BUSY:
                    return decode_aht20(data)
                await compat.sleep_ms(10)
        except OSError as error:
            raise SensorError(f"AHT20 at 0x{self.address:02x}: {error}") from None
        raise SensorError(f"AHT20: still busy after {self.BUSY_RETRIES} polls")

    async def _calibrate(self):
        self.i2c.writeto(self.address, self.STATUS)
        status = self.i2c.readfrom(self.address, 1)[0]
        if not status & self.CALIBRATED:
            self.i2c.writeto(self.address, self.INITIALISE)
            await compat.sleep_ms(10)
        self.calibrated = True
