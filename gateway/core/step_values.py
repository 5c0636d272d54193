"""What the transform steps share: a measurement test, a reading's stream key, value text."""


def is_number(value):
    # bool is an int subclass but never a measurement; NaN compares false with everything
    return (type(value) is float or type(value) is int) and value == value


def stream_key(reading):
    """Stateful steps keep their state per (device, stream)."""
    return (reading.get("device"), reading.get("stream"))


def describe(value):
    """A value as messages show it: repr for text and numbers, a word for the rest."""
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
