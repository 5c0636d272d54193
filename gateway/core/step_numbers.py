"""The steps that judge one numeric field: filter, threshold, deadband."""

from gateway.core.step_values import is_number, stream_key


class Filter:
    """Keep readings whose field is a number within [min, max]; drop all others."""

    def __init__(self, spec):
        self.field = spec["field"]
        self.low = spec.get("min")
        self.high = spec.get("max")

    def process(self, reading):
        value = reading["data"].get(self.field)
        if not is_number(value):
            return None
        if self.low is not None and value < self.low:
            return None
        if self.high is not None and value > self.high:
            return None
        return reading


class Threshold:
    """Keep only alarm readings: field above `above` or below `below` (strictly)."""

    def __init__(self, spec):
        self.field = spec["field"]
        self.above = spec.get("above")
        self.below = spec.get("below")

    def process(self, reading):
        value = reading["data"].get(self.field)
        if not is_number(value):
            return None
        if self.above is not None and value > self.above:
            return reading
        if self.below is not None and value < self.below:
            return reading
        return None


class Deadband:
    """Pass a reading only when its value moved by at least delta since the last one passed.

    State is per (device, stream). With no field, any numeric field moving by delta counts,
    and so does a new field or a changed non-numeric value (a state change must not be
    swallowed). A reading without a numeric value in `field` passes: the deadband cannot
    judge it and must not lose it.
    """

    def __init__(self, spec):
        self.field = spec.get("field")
        # 0.2 must pass after 21.5 -> 21.7 although the float difference is 0.19999999999999
        self.delta = spec["delta"] * (1 - 1e-9)
        self.last = {}

    def process(self, reading):
        if self.field is None:
            return self._any_field(reading)
        value = reading["data"].get(self.field)
        if not is_number(value):
            return reading
        key = stream_key(reading)
        last = self.last.get(key)
        if last is not None and abs(value - last) < self.delta:
            return None
        self.last[key] = value
        return reading

    def _any_field(self, reading):
        data = reading["data"]
        key = stream_key(reading)
        last = self.last.get(key)
        if last is None or self._changed(data, last):
            self.last[key] = dict(data)
            return reading
        return None

    def _changed(self, data, last):
        for name, value in data.items():
            if name not in last:
                return True
            before = last[name]
            if is_number(value) and is_number(before):
                if abs(value - before) >= self.delta:
                    return True
            elif value != before and value == value:
                return True
        return False


FACTORIES = {"filter": Filter, "threshold": Threshold, "deadband": Deadband}
