"""The pipeline's transform steps: each changes, drops or aggregates readings' data.

A step is built from its validated spec dict (durations already in seconds) and has
process(reading) -> reading or None (None drops it); stateful steps keep their state per
(device, stream) and window also has flush() -> list. Steps change reading["data"] in place:
the ingest hands each reading to one pipeline only, and copying would cost the hot path.

STEP_PARAMETERS describes every op for the config validator:

    {op: {param: (type, required)}}

where type is one of "string", "number", "integer", "duration" (seconds, a number once the
config is loaded), "list of strings", "map of strings" (string keys and values) or "table"
(a non-empty table the op's own rule checks in depth: validate's per-field rules).
STEP_CHOICES = {op: {param: allowed values}} lists the closed sets (unit names, window
functions). check_step(spec) applies all of it plus the rules across parameters (exactly one
of every/count, compatible units, ...) and returns [(param or None, message)], messages
shaped "expected ..., got ...", so the validator need only put its key path in front.
"""

import binascii
import hashlib

from gateway.core.units import UNITS, conversion

WINDOW_FUNCTIONS = ("mean", "min", "max", "count", "sum", "first", "last")
DEFAULT_WINDOW_FUNCTIONS = ["mean", "min", "max", "count"]

STEP_PARAMETERS = {
    "rename": {"map": ("map of strings", True)},
    "scale": {
        "field": ("string", True),
        "factor": ("number", False),
        "offset": ("number", False),
        "digits": ("integer", False),
    },
    "convert": {
        "field": ("string", True),
        "from": ("string", True),
        "to": ("string", True),
        "digits": ("integer", False),
    },
    "filter": {"field": ("string", True), "min": ("number", False), "max": ("number", False)},
    "threshold": {
        "field": ("string", True),
        "above": ("number", False),
        "below": ("number", False),
    },
    "deadband": {"field": ("string", False), "delta": ("number", True)},
    "downsample": {"every": ("duration", False), "count": ("integer", False)},
    "window": {
        "every": ("duration", False),
        "count": ("integer", False),
        "fields": ("list of strings", False),
        "functions": ("list of strings", False),
    },
    "drop": {"fields": ("list of strings", True)},
    "hash": {
        "fields": ("list of strings", True),
        "salt": ("string", False),
        "length": ("integer", False),
    },
    "validate": {"fields": ("table", True), "on_fail": ("string", False)},
}

# validate: what a field may be declared as, what a rule may say, what a failure does.
VALUE_TYPES = ("number", "integer", "string", "bool")
FIELD_RULE_KEYS = ("type", "min", "max", "required")
FAIL_ACTIONS = ("drop", "flag")

_UNIT_NAMES = sorted(UNITS)

STEP_CHOICES = {
    "convert": {"from": _UNIT_NAMES, "to": _UNIT_NAMES},
    "window": {"functions": list(WINDOW_FUNCTIONS)},
    "validate": {"on_fail": list(FAIL_ACTIONS)},
}


def _is_number(value):
    # bool is an int subclass but never a measurement; NaN compares false with everything
    return (type(value) is float or type(value) is int) and value == value


def _stream_key(reading):
    return (reading.get("device"), reading.get("stream"))


# -- validation -----------------------------------------------------------------------------


def _describe(value):
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _type_error(kind, value):
    """None when value has the described type, else what was expected."""
    if kind == "string":
        ok = isinstance(value, str) and value != ""
        expected = "a non-empty string"
    elif kind in ("number", "duration"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        expected = "a number" if kind == "number" else "a duration"
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind == "list of strings":
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(item, str) and item for item in value
        )
        expected = "a list of strings"
    elif kind == "table":
        ok = isinstance(value, dict) and len(value) > 0
        expected = "a non-empty table"
    elif kind == "map of strings":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
        )
        expected = "a table of strings"
    else:
        raise ValueError(f"unknown parameter type {kind!r}")
    if ok:
        return None
    return f"expected {expected}, got {_describe(value)}"


def check_step(spec):
    """Every problem with one step spec, as (param or None for the whole step, message)."""
    if not isinstance(spec, dict):
        return [(None, f"expected a table with an op, got {_describe(spec)}")]
    op = spec.get("op")
    if op not in STEP_PARAMETERS:
        return [("op", "expected one of {}, got {}".format(", ".join(STEP_OPS), _describe(op)))]
    params = STEP_PARAMETERS[op]
    errors = []
    for name in sorted(spec):
        if name != "op" and name not in params:
            expected = ", ".join(sorted(params))
            errors.append((name, f"unknown parameter for {op}, expected one of {expected}"))
    for name in sorted(params):
        kind, required = params[name]
        value = spec.get(name)
        if value is None:
            if required:
                errors.append((name, f"required for {op}"))
            continue
        problem = _type_error(kind, value)
        if problem:
            errors.append((name, problem))
            continue
        choices = STEP_CHOICES.get(op, {}).get(name)
        if choices is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item not in choices:
                message = "expected one of {}, got {}".format(", ".join(choices), _describe(item))
                errors.append((name, message))
    if not errors:
        errors.extend(_RULES[op](spec))
    return errors


def _rule_none(spec):
    return []


def _rule_convert(spec):
    try:
        conversion(spec["from"], spec["to"])
    except ValueError as error:
        return [("to", str(error))]
    return []


def _rule_filter(spec):
    low, high = spec.get("min"), spec.get("max")
    if low is not None and high is not None and low > high:
        return [("max", f"expected a number >= min ({low!r}), got {high!r}")]
    return []


def _rule_threshold(spec):
    if spec.get("above") is None and spec.get("below") is None:
        return [(None, "threshold needs above, below or both")]
    return []


def _rule_deadband(spec):
    if spec["delta"] < 0:
        return [("delta", "expected a number >= 0, got {!r}".format(spec["delta"]))]
    return []


def _rule_every_or_count(spec):
    every, count = spec.get("every"), spec.get("count")
    if (every is None) == (count is None):
        return [(None, "{} needs exactly one of every or count".format(spec["op"]))]
    if every is not None and every <= 0:
        return [("every", f"expected a duration > 0, got {every!r}")]
    if count is not None and count < 1:
        return [("count", f"expected an integer >= 1, got {count!r}")]
    return []


def _rule_window(spec):
    errors = _rule_every_or_count(spec)
    if spec.get("functions") is not None and not spec["functions"]:
        errors.append(
            ("functions", "expected at least one of {}".format(", ".join(WINDOW_FUNCTIONS)))
        )
    return errors


def _rule_hash(spec):
    length = spec.get("length")
    if length is not None and not 1 <= length <= 64:
        return [("length", f"expected an integer from 1 to 64, got {length!r}")]
    return []


def _rule_validate(spec):
    errors = []
    for name in sorted(spec["fields"]):
        rule = spec["fields"][name]
        where = "fields." + name
        if not isinstance(rule, dict):
            errors.append(
                (where, "expected a table of type, min, max, required, got " + _describe(rule))
            )
            continue
        errors.extend(_field_rule_errors(where, rule))
    return errors


def _field_rule_errors(where, rule):
    errors = []
    for key in sorted(rule):
        if key not in FIELD_RULE_KEYS:
            expected = ", ".join(FIELD_RULE_KEYS)
            errors.append((where + "." + key, "unknown key, expected one of " + expected))
    kind = rule.get("type")
    if kind is not None and kind not in VALUE_TYPES:
        message = "expected one of {}, got {}".format(", ".join(VALUE_TYPES), _describe(kind))
        errors.append((where + ".type", message))
    required = rule.get("required")
    if required is not None and not isinstance(required, bool):
        errors.append((where + ".required", "expected true or false, got " + _describe(required)))
    for bound in ("min", "max"):
        value = rule.get(bound)
        if value is None:
            continue
        if kind not in ("number", "integer"):
            errors.append((where + "." + bound, 'needs type = "number" or "integer"'))
        elif _type_error("number", value):
            errors.append((where + "." + bound, _type_error("number", value)))
    low, high = rule.get("min"), rule.get("max")
    if not errors and low is not None and high is not None and low > high:
        errors.append((where + ".max", f"expected a number >= min ({low!r}), got {high!r}"))
    return errors


_RULES = {
    "rename": _rule_none,
    "scale": _rule_none,
    "convert": _rule_convert,
    "filter": _rule_filter,
    "threshold": _rule_threshold,
    "deadband": _rule_deadband,
    "downsample": _rule_every_or_count,
    "window": _rule_window,
    "drop": _rule_none,
    "hash": _rule_hash,
    "validate": _rule_validate,
}


# -- stateless steps -------------------------------------------------------------------------


def _value_problem(kind, low, high, value):
    """(reason, what was expected) when value breaks a field rule, else None."""
    if kind == "number" and not _is_number(value):
        return "type", "a number"
    if kind == "integer" and type(value) is not int:
        return "type", "an integer"
    if kind == "string" and type(value) is not str:
        return "type", "a string"
    if kind == "bool" and type(value) is not bool:
        return "type", "true or false"
    if low is not None and value < low:
        return "range", "at least " + repr(low)
    if high is not None and value > high:
        return "range", "at most " + repr(high)
    return None


class Validate:
    """Check declared fields (type, range, presence) and drop or flag readings that fail.

    A reading with no fields at all fails too ("empty"). `counters` counts failed checks by
    reason and field ("type:temp_c", "range:temp_c", "missing:temp_c", "empty"), so the
    source can say exactly what was dropped and why. on_fail = "flag" keeps the reading and
    lists the failed checks in reading["invalid"].
    """

    def __init__(self, spec):
        self.rules = []
        for name in sorted(spec["fields"]):
            rule = spec["fields"][name]
            entry = (name, rule.get("type"), rule.get("min"), rule.get("max"))
            self.rules.append(entry + (bool(rule.get("required")),))
        self.flag = spec.get("on_fail") == "flag"
        self.counters = {}

    def process(self, reading):
        data = reading["data"]
        failed = None if data else [("empty", "no fields")]
        for name, kind, low, high, required in self.rules:
            if name not in data:
                if required:
                    failed = (failed or []) + [("missing:" + name, name + ": required")]
                continue
            problem = _value_problem(kind, low, high, data[name])
            if problem is not None:
                message = f"{name}: expected {problem[1]}, got {_describe(data[name])}"
                failed = (failed or []) + [(problem[0] + ":" + name, message)]
        if failed is None:
            return reading
        for reason, _message in failed:
            self.counters[reason] = self.counters.get(reason, 0) + 1
        if not self.flag:
            return None
        reading["invalid"] = [message for _reason, message in failed]
        return reading


def declared_types(step_specs):
    """{field: type} declared by the validate steps a pipeline starts with: they see the
    fields as parsed, so a text format's parser can convert those fields to their types.
    A validate step after another step judges transformed data and declares nothing here."""
    types = {}
    for spec in step_specs or ():
        if spec.get("op") != "validate":
            break
        for name, rule in spec.get("fields", {}).items():
            kind = rule.get("type") if isinstance(rule, dict) else None
            if kind is not None and name not in types:
                types[name] = kind
    return types


class Rename:
    """Give fields new names; all renames of one step happen at once, so a swap works."""

    def __init__(self, spec):
        self.pairs = list(spec["map"].items())

    def process(self, reading):
        data = reading["data"]
        moved = None
        for old, new in self.pairs:
            if old in data:
                if moved is None:
                    moved = {}
                moved[new] = data.pop(old)
        if moved:
            data.update(moved)
        return reading


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
    factor, offset = conversion(spec["from"], spec["to"])
    return Linear(spec["field"], factor, offset, spec.get("digits"))


class Filter:
    """Keep readings whose field is a number within [min, max]; drop all others."""

    def __init__(self, spec):
        self.field = spec["field"]
        self.low = spec.get("min")
        self.high = spec.get("max")

    def process(self, reading):
        value = reading["data"].get(self.field)
        if not _is_number(value):
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
        if not _is_number(value):
            return None
        if self.above is not None and value > self.above:
            return reading
        if self.below is not None and value < self.below:
            return reading
        return None


class Drop:
    """Remove fields (privacy)."""

    def __init__(self, spec):
        self.fields = list(spec["fields"])

    def process(self, reading):
        data = reading["data"]
        for field in self.fields:
            data.pop(field, None)
        return reading


class Hash:
    """Replace fields by the first `length` hex digits of sha256(salt + str(value))."""

    CACHE_SIZE = 1024  # device and user ids repeat; remembering them saves most hashing

    def __init__(self, spec):
        self.fields = list(spec["fields"])
        self.salt = (spec.get("salt") or "").encode()
        self.length = spec.get("length") or 16
        self._cache = {}

    def digest(self, value):
        text = str(value)
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        raw = hashlib.sha256(self.salt + text.encode()).digest()
        hexed = binascii.hexlify(raw).decode()[: self.length]
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache = {}
        self._cache[text] = hexed
        return hexed

    def process(self, reading):
        data = reading["data"]
        for field in self.fields:
            if field in data:
                data[field] = self.digest(data[field])
        return reading


# -- stateful steps (state per device and stream) -----------------------------------------


class Deadband:
    """Pass a reading only when its value moved by at least delta since the last one passed.

    With no field, any numeric field moving by delta counts, and so does a new field or a
    changed non-numeric value (a state change must not be swallowed). A reading without a
    numeric value in `field` passes: the deadband cannot judge it and must not lose it.
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
        if not _is_number(value):
            return reading
        key = _stream_key(reading)
        last = self.last.get(key)
        if last is not None and abs(value - last) < self.delta:
            return None
        self.last[key] = value
        return reading

    def _any_field(self, reading):
        data = reading["data"]
        key = _stream_key(reading)
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
            if _is_number(value) and _is_number(before):
                if abs(value - before) >= self.delta:
                    return True
            elif value != before and value == value:
                return True
        return False


class DownsampleEvery:
    """Keep the first reading of each `every`-second interval, on a grid from the first kept.

    The grid keeps the average rate at one per interval despite jitter; a clock stepping
    back by more than an interval restarts it instead of muting the stream.
    """

    def __init__(self, every):
        self.every = every
        self.due = {}

    def process(self, reading):
        ts = reading["ts"]
        key = _stream_key(reading)
        due = self.due.get(key)
        if due is not None and due - self.every <= ts < due:
            return None
        if due is None or ts < due:
            self.due[key] = ts + self.every
        else:
            self.due[key] = due + self.every * (int((ts - due) / self.every) + 1)
        return reading


class DownsampleCount:
    """Keep the 1st, (n+1)th, (2n+1)th ... reading."""

    def __init__(self, count):
        self.count = count
        self.seen = {}

    def process(self, reading):
        key = _stream_key(reading)
        seen = self.seen.get(key, 0)
        self.seen[key] = 0 if seen + 1 >= self.count else seen + 1
        return reading if seen == 0 else None


def make_downsample(spec):
    if spec.get("every") is not None:
        return DownsampleEvery(spec["every"])
    return DownsampleCount(spec["count"])


class Window:
    """Aggregate numeric fields per (device, stream) over time or count windows.

    A closed window becomes one reading: the envelope of its last reading with data
    {"<field>_<function>": value}. Time windows are aligned to multiples of `every` since
    the epoch (every=60 gives clock minutes) and close when a reading at or past their end
    arrives; count windows close on their count-th reading; flush() closes the rest.
    """

    def __init__(self, spec):
        self.every = spec.get("every")
        self.count = spec.get("count")
        fields = spec.get("fields")
        self.fields = None if fields is None else list(fields)
        self.functions = list(spec.get("functions") or DEFAULT_WINDOW_FUNCTIONS)
        self.open = {}  # key -> [end ts or None, readings seen, last reading, {field: stats}]

    def process(self, reading):
        key = _stream_key(reading)
        window = self.open.get(key)
        closed = None
        if window is not None and self.every is not None and reading["ts"] >= window[0]:
            closed = self._close(key, window)
            window = None
        if window is None:
            window = [self._end(reading["ts"]), 0, None, {}]
            self.open[key] = window
        self._add(window, reading)
        if self.count is not None and window[1] >= self.count:
            closed = self._close(key, window)
        return closed

    def flush(self):
        readings = []
        for key in list(self.open):
            closed = self._close(key, self.open[key])
            if closed is not None:
                readings.append(closed)
        return readings

    def _end(self, ts):
        if self.every is None:
            return None
        return ts - ts % self.every + self.every

    def _add(self, window, reading):
        window[1] += 1
        window[2] = reading
        stats = window[3]
        data = reading["data"]
        names = data if self.fields is None else self.fields
        for name in names:
            value = data.get(name)
            if not _is_number(value):
                continue
            entry = stats.get(name)
            if entry is None:
                stats[name] = [1, value, value, value, value, value]
                continue
            entry[0] += 1
            entry[1] += value
            if value < entry[2]:
                entry[2] = value
            if value > entry[3]:
                entry[3] = value
            entry[5] = value

    def _close(self, key, window):
        del self.open[key]
        if not window[3]:
            return None  # nothing numeric to aggregate
        data = {}
        for name, (count, total, low, high, first, last) in window[3].items():
            for function in self.functions:
                if function == "mean":
                    value = total / count
                elif function == "min":
                    value = low
                elif function == "max":
                    value = high
                elif function == "count":
                    value = count
                elif function == "sum":
                    value = total
                elif function == "first":
                    value = first
                else:
                    value = last
                data[name + "_" + function] = value
        reading = window[2]
        reading["data"] = data
        return reading


STEP_FACTORIES = {
    "rename": Rename,
    "scale": make_scale,
    "convert": make_convert,
    "filter": Filter,
    "threshold": Threshold,
    "deadband": Deadband,
    "downsample": make_downsample,
    "window": Window,
    "drop": Drop,
    "hash": Hash,
    "validate": Validate,
}

STEP_OPS = sorted(STEP_FACTORIES)
