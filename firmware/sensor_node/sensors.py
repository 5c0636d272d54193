"""Sensor drivers: each configured stream becomes an object whose read() returns its values.

Drivers touch `machine` only when instantiated, so a host (or a board without the part) can
import this module and run the synthetic stream.
"""

import math

from gateway.core import compat

# The fields each stream type reports, in record order (announced in HELLO).
FIELDS = {
    "synthetic": ("n", "value"),
    "rp2040_temp": ("temperature",),
    "adc": ("raw", "volts"),
    "sht3x": ("temperature", "humidity"),
    "aht20": ("temperature", "humidity"),
}

SYNTHETIC_WRAP = 1 << 24  # n stays exact as a float32 counter


class SensorError(Exception):
    """A sensor did not give a valid reading (no answer, bad CRC, busy)."""


def make_sensor(stream):
    """The driver for one validated stream config; a BrokenSensor when it cannot be set up."""
    try:
        return _make(stream)
    except Exception as error:  # noqa: BLE001 - no such pin, bus or module on this port
        reason = f"{stream['type']} driver not available: {type(error).__name__}: {error}"
        return BrokenSensor(FIELDS[stream["type"]], reason)


def _make(stream):
    kind = stream["type"]
    if kind == "synthetic":
        return Synthetic(
            stream.get("period", 60), stream.get("amplitude", 1.0), stream.get("offset", 0.0)
        )
    if kind == "rp2040_temp":
        return RP2040Temperature()
    if kind == "adc":
        return Adc(stream["pin"], stream.get("vref", 3.3))
    if kind == "sht3x":
        return SHT3x(make_i2c(stream.get("i2c", {})), stream.get("address", SHT3x.ADDRESS))
    if kind == "aht20":
        return AHT20(make_i2c(stream.get("i2c", {})), stream.get("address", AHT20.ADDRESS))
    raise ValueError(f"unknown stream type {kind!r}")


class BrokenSensor:
    """Stands in for a driver that failed to start: every read fails with the reason, so the
    stream keeps its place in HELLO and the other streams carry on."""

    def __init__(self, fields, reason):
        self.fields = fields
        self.reason = reason

    async def read(self):
        raise SensorError(self.reason)


# -- synthetic: what hosts and tests use ------------------------------------------------------


def synthetic_value(n, period=60, amplitude=1.0, offset=0.0):
    """The sine the synthetic stream reports with counter n (a receiver can recompute it)."""
    return offset + amplitude * math.sin(2 * math.pi * n / period)


class Synthetic:
    """Deterministic values: a counter "n" from 0 per boot and a sine of it, "value"."""

    fields = FIELDS["synthetic"]

    def __init__(self, period=60, amplitude=1.0, offset=0.0):
        self.period = period
        self.amplitude = amplitude
        self.offset = offset
        self.n = 0

    async def read(self):
        n = self.n
        self.n = (n + 1) % SYNTHETIC_WRAP
        return [n, synthetic_value(n, self.period, self.amplitude, self.offset)]


# -- on-chip ADC ---------------------------------------------------------------------------


def rp2040_celsius(raw_u16, vref=3.3):
    """RP2040 datasheet §4.9.5: T = 27 - (V_be - 0.706 V) / 1.721 mV per degree."""
    volts = raw_u16 * vref / 65535
    return 27 - (volts - 0.706) / 0.001721


class RP2040Temperature:
    """The RP2040's internal temperature sensor on ADC channel 4."""

    fields = FIELDS["rp2040_temp"]

    def __init__(self):
        import machine

        self.adc = machine.ADC(4)

    async def read(self):
        return [rp2040_celsius(self.adc.read_u16())]


class Adc:
    """An ADC pin: the raw 16-bit reading and the voltage it stands for."""

    fields = FIELDS["adc"]

    def __init__(self, pin, vref=3.3):
        import machine

        self.adc = machine.ADC(machine.Pin(pin))
        self.vref = vref

    async def read(self):
        raw = self.adc.read_u16()
        return [raw, raw * self.vref / 65535]


# -- I2C temperature and humidity ------------------------------------------------------------


def make_i2c(spec):
    """machine.I2C from {"id", "scl", "sda", "freq"}; pins default to the port's own."""
    import machine

    keywords = {"freq": spec.get("freq", 100000)}
    for pin in ("scl", "sda"):
        if pin in spec:
            keywords[pin] = machine.Pin(spec[pin])
    return machine.I2C(spec.get("id", 0), **keywords)


def sensirion_crc8(data):
    """CRC-8 of Sensirion (and Aosong) sensors: polynomial 0x31, initial value 0xFF."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def decode_sht3x(data):
    """[celsius, %RH] from a 6-byte SHT3x measurement (datasheet §4.13); raises SensorError."""
    if len(data) != 6:
        raise SensorError(f"SHT3x: {len(data)} bytes, expected 6")
    for start in (0, 3):
        if sensirion_crc8(data[start : start + 2]) != data[start + 2]:
            raise SensorError(f"SHT3x: CRC mismatch in bytes {start}..{start + 2}")
    raw_temperature = (data[0] << 8) | data[1]
    raw_humidity = (data[3] << 8) | data[4]
    return [-45 + 175 * raw_temperature / 65535, 100 * raw_humidity / 65535]


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


def decode_aht20(data):
    """[celsius, %RH] from a 7-byte AHT20 measurement (datasheet §5.4); raises SensorError."""
    if len(data) != 7:
        raise SensorError(f"AHT20: {len(data)} bytes, expected 7")
    if data[0] & AHT20.BUSY:
        raise SensorError("AHT20: still measuring")
    if sensirion_crc8(data[:6]) != data[6]:
        raise SensorError("AHT20: CRC mismatch")
    raw_humidity = (data[1] << 12) | (data[2] << 4) | (data[3] >> 4)
    raw_temperature = ((data[3] & 0x0F) << 16) | (data[4] << 8) | data[5]
    return [raw_temperature * 200 / 1048576 - 50, raw_humidity * 100 / 1048576]


class AHT20:
    """Aosong AHT20: calibrate once if the status says so, then trigger and read."""

    fields = FIELDS["aht20"]
    ADDRESS = 0x38
    STATUS = b"\x71"
    INITIALISE = b"\xbe\x08\x00"
    MEASURE = b"\xac\x33\x00"
    BUSY = 0x80
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
                if not data[0] & self.BUSY:
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
