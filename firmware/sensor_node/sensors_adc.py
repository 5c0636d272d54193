"""Drivers of the on-chip ADC streams (rp2040_temp, adc), imported when such a stream is built."""

import machine
from sensors import FIELDS, rp2040_celsius


def make(stream):
    """The driver for one validated rp2040_temp or adc stream config."""
    if stream["type"] == "rp2040_temp":
        return RP2040Temperature()
    return Adc(stream["pin"], stream.get("vref", 3.3))


class RP2040Temperature:
    """The RP2040's internal temperature sensor on ADC channel 4."""

    fields = FIELDS["rp2040_temp"]

    def __init__(self):
        self.adc = machine.ADC(4)

    async def read(self):
        return [rp2040_celsius(self.adc.read_u16())]


class Adc:
    """An ADC pin: the raw 16-bit reading and the voltage it stands for."""

    fields = FIELDS["adc"]

    def __init__(self, pin, vref=3.3):
        self.adc = machine.ADC(machine.Pin(pin))
        self.vref = vref

    async def read(self):
        raw = self.adc.read_u16()
        return [raw, raw * self.vref / 65535]
