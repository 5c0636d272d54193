"""The node's JSON configuration file: defaults, validation with key paths, merge (node_commands
writes it)."""

import json

# Every key a config.json may hold. A board without the file runs these: one synthetic stream
# over USB CDC, so a freshly flashed board already talks to a gateway.
DEFAULTS = {
    "device": "sensor-node",
    "streams": [{"name": "synthetic", "type": "synthetic", "rate": 1.0}],
    "link": {"type": "stdio"},
    "ring": 64,
    "ring_policy": "block",
    "retransmit_ms": 500,
    "heartbeat_ms": 5000,
    "repl_grace_ms": 1000,
}

STREAM_TYPES = ("synthetic", "rp2040_temp", "adc", "sht3x", "aht20")
LINK_TYPES = ("stdio", "uart", "fd", "path")
RING_POLICIES = ("block", "drop_oldest")
MAX_RATE = 1000.0  # samples per second per stream
MAX_STREAMS = 16  # the HELLO (one frame) must still describe them all

# Keys a running node applies at once; a change to any other key takes effect at reboot.
LIVE_KEYS = ("ring_policy", "retransmit_ms", "heartbeat_ms", "repl_grace_ms")


class ConfigError(Exception):
    """The config is not valid; errors is a list of "key.path: expected ..., got ..." lines."""

    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def copy(value):
    """A deep copy of JSON data (MicroPython has no copy module)."""
    return json.loads(json.dumps(value))


def merge(base, updates):
    """base with updates merged in: objects merge key by key, null removes the key, anything
    else is replaced."""
    merged = copy(base)
    for key in updates:
        value = updates[key]
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy(value)
    return merged


def load(path):
    """(config, errors): the file merged over DEFAULTS, or DEFAULTS and why the file was refused.

    A missing file is no error. A broken one never stops the node: it runs on the defaults and
    reports the errors (the node sends them as LOG frames).
    """
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return copy(DEFAULTS), []
    try:
        given = json.loads(text)
    except ValueError:
        return copy(DEFAULTS), [path + ": not valid JSON, running on defaults"]
    if not isinstance(given, dict):
        return copy(DEFAULTS), [path + ": expected a JSON object, running on defaults"]
    config = merge(DEFAULTS, given)
    errors = validate(config)
    if errors:
        return fallback(config), [path + ": " + error for error in errors] + ["running on defaults"]
    return config, []


def fallback(config):
    """DEFAULTS, keeping config's link when that alone is valid: a node that cannot be reached
    cannot be told its config is broken."""
    safe = copy(DEFAULTS)
    errors = []
    _check_link(errors, config.get("link"))
    if not errors:
        safe["link"] = copy(config["link"])
    return safe


def changed_keys(old, new):
    """Top-level keys whose value differs (added, changed or removed)."""
    keys = [key for key in new if old.get(key) != new[key]]
    return keys + [key for key in old if key not in new]


# -- validation ------------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _got(value):
    return json.dumps(value)


def validate(config):
    """Every problem in config as "key.path: expected ..., got ..." lines; [] when valid."""
    errors = []
    for key in config:
        if key not in DEFAULTS:
            errors.append("{}: unknown key (known: {})".format(key, ", ".join(sorted(DEFAULTS))))
    device = config.get("device")
    if not isinstance(device, str) or not device or len(device) > 64:
        errors.append("device: expected a name of 1 to 64 characters, got " + _got(device))
    _check_int(errors, config, "ring", 1, 1024)
    _check_int(errors, config, "retransmit_ms", 50, 60000)
    _check_int(errors, config, "heartbeat_ms", 0, 3600000)
    _check_int(errors, config, "repl_grace_ms", 0, 60000)
    if config.get("ring_policy") not in RING_POLICIES:
        errors.append(
            'ring_policy: expected "block" or "drop_oldest", got ' + _got(config.get("ring_policy"))
        )
    _check_link(errors, config.get("link"))
    _check_streams(errors, config.get("streams"))
    return errors


def _check_int(errors, section, key, low, high, where=""):
    value = section.get(key)
    if not _is_int(value) or not low <= value <= high:
        errors.append(f"{where}{key}: expected an integer {low}..{high}, got {_got(value)}")


def _check_link(errors, link):
    if not isinstance(link, dict):
        errors.append("link: expected an object, got " + _got(link))
        return
    kind = link.get("type")
    if kind not in LINK_TYPES:
        errors.append(
            "link.type: expected one of {}, got {}".format(", ".join(LINK_TYPES), _got(kind))
        )
    elif kind == "uart":
        for key, low, high in (("id", 0, 8), ("baud", 300, 4000000)):
            if key in link:  # optional: UART 0 at 115200 baud
                _check_int(errors, link, key, low, high, "link.")
    elif kind == "fd":
        _check_int(errors, link, "fd", 0, 65535, "link.")
    elif kind == "path" and not isinstance(link.get("path"), str):
        errors.append("link.path: expected a device path, got " + _got(link.get("path")))


def _check_streams(errors, streams):
    if not isinstance(streams, list) or not 1 <= len(streams) <= MAX_STREAMS:
        errors.append(
            f"streams: expected a list of 1 to {MAX_STREAMS} streams, got {_got(streams)}"
        )
        return
    names = []
    for index, stream in enumerate(streams):
        where = f"streams[{index}]."
        if not isinstance(stream, dict):
            errors.append(f"streams[{index}]: expected an object, got {_got(stream)}")
            continue
        name = stream.get("name")
        if not isinstance(name, str) or not name or len(name) > 32:
            errors.append(where + "name: expected a name of 1 to 32 characters, got " + _got(name))
        elif name in names:
            errors.append(where + "name: expected a name no other stream uses, got " + _got(name))
        names.append(name)
        kind = stream.get("type")
        if kind not in STREAM_TYPES:
            expected = ", ".join(STREAM_TYPES)
            errors.append(where + f"type: expected one of {expected}, got {_got(kind)}")
        rate = stream.get("rate")
        if not _is_number(rate) or not 0 <= rate <= MAX_RATE:
            expected = f"rate: expected a number 0..{MAX_RATE:g} (0 pauses), got "
            errors.append(where + expected + _got(rate))
        if kind == "adc" and not (_is_int(stream.get("pin")) or isinstance(stream.get("pin"), str)):
            errors.append(
                where + "pin: expected the ADC pin number or name, got " + _got(stream.get("pin"))
            )
        if kind == "synthetic" and "period" in stream:
            period = stream["period"]
            if not _is_number(period) or period <= 0:
                errors.append(
                    where + "period: expected a number of samples > 0, got " + _got(period)
                )
