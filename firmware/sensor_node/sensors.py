"""Sensor streams: each configured stream becomes an object whose read() returns its values.

This module holds what every node needs (the fields of each type, the synthetic stream) and
the conversions of raw readings by the datasheets. The drivers of real parts live in one
module per family, imported only when a stream of that family is built: sensors_adc
(rp2040_temp, adc) and sensors_i2c (sht3x, aht20). A node without such streams never loads
them, and they touch `machine` only when instantiated.
"""

import math

# The fields each stream type reports, in record order (announced in HELLO).
FIELDS = {
    "synthetic": ("n", "value"),
    "rp2040_temp": ("temperature",),
    "adc": ("raw", "volts"),
    "sht3x": ("temperature", "humidity"),
    "aht20": ("temperature", "humidity"),
}

SYNTHETIC_WRAP = 1 << 24  # n stays exact as a float32 counter
AHT20_BUSY = 0x80  # status bit: a measurement is still running


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
    if kind in ("rp2040_temp", "adc"):
        import sensors_adc

        return sensors_adc.make(stream)
    if kind in ("sht3x", "aht20"):
        import sensors_i2c

        return sensors_i2c.make(stream)
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


# -- conversions by the datasheets (pure, so they are tested on any Python) -------------------


def rp2040_celsius(raw_u16, vref=3.3):
    """RP2040 datasheet §4.9.5: T = 27 - (V_be - 0.706 V) / 1.721 mV per degree."""
    volts = raw_u16 * vref / 65535
    return 27 - (volts - 0.706) / 0.001721


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


def decode_aht20(data):
    """[celsius, %RH] from a 7-byte AHT20 measurement (datasheet §5.4); raises SensorError."""
    if len(data) != 7:
        raise SensorError(f"AHT20: {len(data)} bytes, expected 7")
    if data[0] & AHT20_BUSY:
        raise SensorError("AHT20: still measuring")
    if sensirion_crc8(data[:6]) != data[6]:
        raise SensorError("AHT20: CRC mismatch")
    raw_humidity = (data[1] << 12) | (data[2] << 4) | (data[3] >> 4)
    raw_temperature = ((data[3] & 0x0F) << 16) | (data[4] << 8) | data[5]
    return [raw_temperature * 200 / 1048576 - 50, raw_humidity * 100 / 1048576]
