"""This machine's clock as the gateway sees it: readings say "unsynced" while the kernel does.

A machine without a time daemon (a VM, a container) reports its clock unsynchronised, and
the gateway then marks every reading; tests that compare whole envelopes expect exactly that.
"""

from __future__ import annotations

from gateway.clock import kernel_clock_synced

UNSYNCED = kernel_clock_synced() is False


def envelope_keys(*keys: str) -> set[str]:
    """The keys of a reading the gateway sends here: `keys`, and "unsynced" when it applies."""
    return set(keys) | ({"unsynced"} if UNSYNCED else set())


def as_sent(reading: dict) -> dict:
    """A reading as the gateway sends it from this machine."""
    return {**reading, "unsynced": True} if UNSYNCED else reading
