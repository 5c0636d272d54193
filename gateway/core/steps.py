"""What each transform step takes, for the config validator: STEP_PARAMETERS and check_step.

The steps themselves are in the step_* modules (step_chain.STEP_MODULES says which holds
each op), run by step_chain (a board loads only those, never this module: its config was
validated when host-tools compiled it). STEP_PARAMETERS describes every op:

    {op: {param: (type, required)}}

where type is one of "string", "number", "integer", "duration" (seconds, a number once the
config is loaded), "list of strings", "map of strings" (string keys and values) or "table"
(a non-empty table the op's own rule checks in depth: validate's per-field rules).
STEP_CHOICES = {op: {param: allowed values}} lists the closed sets (unit names, window
functions). check_step(spec) applies all of it plus the rules across parameters (exactly one
of every/count, compatible units, ...) and returns [(param or None, message)], messages
shaped "expected ..., got ...", so the validator need only put its key path in front.
"""

from gateway.core.step_values import describe
from gateway.core.units import UNITS, conversion

WINDOW_FUNCTIONS = ("mean", "min", "max", "count", "sum", "first", "last")

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
    return f"expected {expected}, got {describe(value)}"


def check_step(spec):
    """Every problem with one step spec, as (param or None for the whole step, message)."""
    if not isinstance(spec, dict):
        return [(None, f"expected a table with an op, got {describe(spec)}")]
    op = spec.get("op")
    if op not in STEP_PARAMETERS:
        return [("op", "expected one of {}, got {}".format(", ".join(STEP_OPS), describe(op)))]
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
                message = "expected one of {}, got {}".format(", ".join(choices), describe(item))
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
                (where, "expected a table of type, min, max, required, got " + describe(rule))
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
        message = "expected one of {}, got {}".format(", ".join(VALUE_TYPES), describe(kind))
        errors.append((where + ".type", message))
    required = rule.get("required")
    if required is not None and not isinstance(required, bool):
        errors.append((where + ".required", "expected true or false, got " + describe(required)))
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


STEP_OPS = sorted(STEP_PARAMETERS)
