"""Unit names the convert step understands and the linear maps between them."""

import math

# name -> (quantity, scale, offset) with  base = value * scale + offset, where the base unit
# is kelvin, pascal, metre, metre per second or kilogram. The config validator reads the
# names from here; "m_s" and "km_h" spell m/s and km/h without a slash.
UNITS = {
    # temperature (base: kelvin)
    "c": ("temperature", 1.0, 273.15),
    "f": ("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    "k": ("temperature", 1.0, 0.0),
    # pressure (base: pascal)
    "pa": ("pressure", 1.0, 0.0),
    "hpa": ("pressure", 100.0, 0.0),
    "mbar": ("pressure", 100.0, 0.0),
    "kpa": ("pressure", 1000.0, 0.0),
    "bar": ("pressure", 100000.0, 0.0),
    "atm": ("pressure", 101325.0, 0.0),
    "psi": ("pressure", 6894.757293168361, 0.0),
    "mmhg": ("pressure", 133.322387415, 0.0),
    # length (base: metre)
    "mm": ("length", 0.001, 0.0),
    "cm": ("length", 0.01, 0.0),
    "m": ("length", 1.0, 0.0),
    "km": ("length", 1000.0, 0.0),
    "in": ("length", 0.0254, 0.0),
    "ft": ("length", 0.3048, 0.0),
    "mi": ("length", 1609.344, 0.0),
    # speed (base: metre per second)
    "m_s": ("speed", 1.0, 0.0),
    "km_h": ("speed", 1.0 / 3.6, 0.0),
    "mph": ("speed", 0.44704, 0.0),
    "knots": ("speed", 1852.0 / 3600.0, 0.0),
    # mass (base: kilogram)
    "g": ("mass", 0.001, 0.0),
    "kg": ("mass", 1.0, 0.0),
    "lb": ("mass", 0.45359237, 0.0),
    "oz": ("mass", 0.028349523125, 0.0),
}


def units_of(quantity):
    """The unit names measuring one quantity, in table order."""
    return [name for name, unit in UNITS.items() if unit[0] == quantity]


def conversion(source, target):
    """(factor, offset) so that value_in_target = value_in_source * factor + offset."""
    if source not in UNITS:
        raise ValueError(f"unknown unit {source!r}")
    if target not in UNITS:
        raise ValueError(f"unknown unit {target!r}")
    quantity, scale_in, offset_in = UNITS[source]
    other, scale_out, offset_out = UNITS[target]
    if quantity != other:
        raise ValueError(f"cannot convert {source} ({quantity}) to {target} ({other})")
    factor = _significant(scale_in / scale_out)
    offset = _significant((offset_in - offset_out) / scale_out)
    return factor, offset


def _significant(number, digits=15):
    """Round away the last bits of float noise so that c -> f is exactly * 1.8 + 32."""
    if number == 0:
        return 0.0
    return round(number, digits - 1 - int(math.floor(math.log10(abs(number)))))
