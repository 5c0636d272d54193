"""The linear steps on one numeric field: scale (factor, offset) and convert (units)."""


class Linear:
    """value * factor + offset on one numeric field; other values are left as they are."""

    def __init__(self, field, factor, offset, digits):
        self.field = field
        self.factor = factor
        self.offset = offset
        self.digits = digits

    def process(self, reading):
        data = reading["data"]
        value = data.get(self.field)
        if type(value) is float or type(value) is int:
            value = value * self.factor + self.offset
            if self.digits is not None:
                value = round(value, self.digits)
            data[self.field] = value
        return reading


def make_scale(spec):
    factor = spec.get("factor")
    offset = spec.get("offset")
    return Linear(
        spec["field"],
        1.0 if factor is None else factor,
        0.0 if offset is None else offset,
        spec.get("digits"),
    )


def make_convert(spec):
    # Imported here: the unit table takes about 6 KB of a board's heap; only convert needs it.
    from gateway.core.units import conversion

    factor, offset = conversion(spec["from"], spec["to"])
    return Linear(spec["field"], factor, offset, spec.get("digits"))


FACTORIES = {"scale": make_scale, "convert": make_convert}
