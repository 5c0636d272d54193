"""The node's commands (CMD → RESP): ping, info, set_rate, set_config, reboot.

node.py imports this module when a CMD arrives and lets it go after the RESP, as it does
config.py: commands are rare, and a small heap runs without them loaded.
"""

from gateway.core import device_protocol as protocol

# Keys a changed config must keep for the running node to apply it without a reboot.
REBOOT_KEYS = ("device", "streams", "link", "ring")
# config.MAX_RATE, the same limit (tests/test_firmware.py checks), kept here too so set_rate
# runs without loading config.py: a full ring in a small heap leaves no room for it.
MAX_RATE = 1000.0


class BadArguments(Exception):
    """A command's arguments are wrong; the text goes back in the RESP."""


def run(node, name, args):
    """(status, result) of the command name on node; the caller sends them as the RESP."""
    handler = COMMANDS.get(name)
    if handler is None:
        known = ", ".join(sorted(COMMANDS))
        return protocol.NACK_UNKNOWN_COMMAND, {"error": f"unknown command {name!r}; known: {known}"}
    try:
        return protocol.STATUS_OK, handler(node, args)
    except BadArguments as error:
        return protocol.NACK_BAD_ARGUMENTS, {"error": str(error)}


# Free heap config.py needs to load (7.2 KB on the unix port) and some to work in. With less,
# an import would fail halfway and leave the heap in pieces a frame no longer fits in.
CONFIG_HEAP = 10 * 1024


def _config_module():
    """config.py, imported when a command needs it (node.py lets it go after the command);
    MemoryError, before trying, when the heap cannot hold it now."""
    import gc

    if hasattr(gc, "mem_free"):  # MicroPython: CPython's heap grows as needed
        gc.collect()
        if gc.mem_free() < CONFIG_HEAP:
            raise MemoryError("no room for config.py")
    import config

    return config


def ping(node, args):
    return {"pong": True, "uptime_ms": node.uptime_ms()}


def heap_free():
    """{"mem_free": bytes} after a collection, on MicroPython (CPython cannot say)."""
    import gc

    if not hasattr(gc, "mem_free"):
        return {}
    gc.collect()
    return {"mem_free": gc.mem_free()}


def info(node, args):
    """The HELLO plus state; parts that would not fit one frame are left out and named."""
    section = args.get("section")
    if section == "config":
        return {"config": node.config}
    if section == "counters":
        result = {"counters": node.counters}
        result.update(heap_free())
        return result
    if section is not None:
        raise BadArguments(f'section: expected "config" or "counters", got {section!r}')
    result = node.describe()
    result["uptime_ms"] = node.uptime_ms()
    result["queued"] = len(node.ring)
    result["config"] = node.config
    omitted = []
    for key in ("config", "streams", "caps"):
        if len(protocol.resp_payload(0, 0, result)) <= protocol.MAX_PAYLOAD:
            break
        del result[key]
        omitted.append(key)
        result["omitted"] = omitted
    return result


def set_rate(node, args):
    name = args.get("stream")
    stream = None
    for candidate in node.streams:
        if candidate.name == name:
            stream = candidate
    if stream is None:
        names = ", ".join([s.name for s in node.streams])
        raise BadArguments(f"stream: expected one of {names}, got {name!r}")
    rate = args.get("rate")
    valid = isinstance(rate, (int, float)) and not isinstance(rate, bool)
    if not valid or not 0 <= rate <= MAX_RATE:
        raise BadArguments(f"rate: expected a number 0..{MAX_RATE:g} (0 pauses), got {rate!r}")
    stream.rate = float(rate)
    stream.changed.set()
    node.config["streams"][stream.index]["rate"] = rate
    saved = _save(node)
    node.log(protocol.LOG_INFO, f"{name}: rate {stream.rate:g}/s")
    return {"stream": name, "rate": stream.rate, "saved": saved}


def set_config(node, args):
    """Merge args into the config (null removes a key: its default applies) and save it."""
    if not args:
        raise BadArguments("expected the keys to set, got none")
    node_config = _config_module()
    merged = node_config.merge(node_config.DEFAULTS, node_config.merge(node.config, args))
    errors = node_config.validate(merged)
    if errors:
        raise BadArguments("; ".join(errors))
    changed = sorted(node_config.changed_keys(node.config, merged))
    reboot = [key for key in changed if key in REBOOT_KEYS]
    node.config = merged
    node.room.set()  # a sampler blocked on a full ring re-checks the (maybe new) policy
    saved = _save(node)
    node.log(protocol.LOG_INFO, "config changed: {}".format(", ".join(changed) or "nothing"))
    return {"keys": changed, "saved": saved, "reboot_required": bool(reboot)}


def reboot(node, args):
    return {}  # node.py restarts once the RESP is out


def _save(node):
    if node.config_path is None:
        return False
    try:
        _write_config(node.config_path, node.config)
    except (OSError, MemoryError) as error:
        # Applied already: the change holds until the next boot, and the RESP says unsaved.
        node.log(protocol.LOG_ERROR, f"config not saved: {error}")
        return False
    return True


def _write_config(path, config):
    """config as JSON, through a temporary file so a power cut leaves the old file whole."""
    import json
    import os

    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(config, handle)
    os.rename(temporary, path)


COMMANDS = {
    "ping": ping,
    "info": info,
    "set_rate": set_rate,
    "set_config": set_config,
    "reboot": reboot,
}
