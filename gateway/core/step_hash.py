"""The hash step: fields replaced by a salted SHA-256 prefix (pseudonyms for ids)."""

import binascii
import hashlib


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


FACTORIES = {"hash": Hash}
