"""Payload encodings shared by the sinks: JSON (default), MessagePack and CBOR."""

from __future__ import annotations

from typing import Any, Callable

import msgpack
import orjson

from gateway import json_bytes

ENCODINGS = ("json", "msgpack", "cbor")


# One packer for the event loop: packb() builds a Packer per call, which is half its cost.
# A failed pack leaves it reset (checked), so the next reading starts clean.
_packer = msgpack.Packer(use_bin_type=True)


def _encode_msgpack(value: Any) -> bytes:
    return _packer.pack(value)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    # orjson: ≈ 14x the standard library's speed; JSON encoding was the largest cost per
    # reading. Its failures (non-str keys, integers beyond 64 bits) raise TypeError.
    "json": json_bytes.dumps,
    "msgpack": _encode_msgpack,
}

_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "json": orjson.loads,
    "msgpack": lambda payload: msgpack.unpackb(payload, raw=False),
}


def _load_cbor() -> None:
    # cbor2 costs ≈ 1 MB of RSS: loaded once some sink asks for CBOR, not at start.
    import cbor2

    _ENCODERS["cbor"] = cbor2.dumps
    _DECODERS["cbor"] = cbor2.loads


def encoder(name: str) -> Callable[[Any], bytes]:
    """The function that turns a reading (or a list of readings, a batch) into bytes."""
    if name == "cbor" and name not in _ENCODERS:
        _load_cbor()
    try:
        return _ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown encoding {name!r}; expected one of {', '.join(ENCODINGS)}"
        ) from None


def decoder(name: str) -> Callable[[bytes], Any]:
    """The inverse of encoder(name); used by tests, benchmarks and consumers."""
    if name == "cbor" and name not in _DECODERS:
        _load_cbor()
    return _DECODERS[name]
