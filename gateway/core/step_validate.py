"""The validate step: declared fields checked by type, range and presence; failures counted."""

from gateway.core.step_values import describe, is_number


def _value_problem(kind, low, high, value):
    """(reason, what was expected) when value breaks a field rule, else None."""
    if kind == "number" and not is_number(value):
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
                message = f"{name}: expected {problem[1]}, got {describe(data[name])}"
                failed = (failed or []) + [(problem[0] + ":" + name, message)]
        if failed is None:
            return reading
        for reason, _message in failed:
            self.counters[reason] = self.counters.get(reason, 0) + 1
        if not self.flag:
            return None
        reading["invalid"] = [message for _reason, message in failed]
        return reading


FACTORIES = {"validate": Validate}
