"""Config errors and how they are collected: ConfigError, Report, Section (a table being read)."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Callable, Iterable


class ConfigError(Exception):
    """Invalid configuration; `.errors` holds one "key.path: expected …, got …" per problem."""

    def __init__(self, errors: Iterable[str], source: str = "<string>"):
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        heading = f"{self.source}: {count} configuration error{'s' if count != 1 else ''}"
        return "\n  ".join([heading, *self.errors])


MISSING: Any = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Got(str):
    """A hand-written description for the "got" part of a message, printed as is."""


def describe(value: Any) -> str:
    """Show a TOML value the way the user wrote it: strings quoted, tables and arrays named."""
    if value is MISSING:
        return "nothing"
    if isinstance(value, Got):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return f"a {type(value).__name__} ({value})"


def closest(word: Any, options: Iterable[Any]) -> str | None:
    """The option a typo most likely meant, if any is close enough."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, [str(option) for option in options], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: Any, options: Iterable[Any]) -> str:
    guess = closest(word, options)
    return f' (did you mean "{guess}"?)' if guess else ""


def alternatives(options: Iterable[Any]) -> str:
    """ "0 or 1", "json, msgpack or cbor", "one of rename, scale, convert, …"."""
    names = [str(option) for option in options]
    if len(names) == 1:
        return names[0]
    if len(names) <= 3:
        return ", ".join(names[:-1]) + " or " + names[-1]
    return "one of " + ", ".join(names)


def join(path: str, key: str) -> str:
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{shown}" if path else shown


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


class Report:
    """Collects every error so the user sees them all in one run."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def expected(self, path: str, expected: str, got: Any = MISSING, hint: str = "") -> None:
        self.errors.append(f"{path}: expected {expected}, got {describe(got)}{hint}")

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def unknown_key(self, path: str, key: str, allowed: Iterable[str]) -> None:
        hint = did_you_mean(key, allowed)
        if hint:
            self.add(path, "unknown key" + hint)
        else:
            self.add(path, "unknown key (expected one of: " + ", ".join(allowed) + ")")


class Invalid(Exception):
    """Raised by a value check; the caller reports it against the key path."""

    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


Check = Callable[[Any], Any]


class Section:
    """One TOML table under validation: flags unknown keys, reads keys through checks."""

    def __init__(self, report: Report, path: str, raw: Any, allowed: Iterable[str]):
        self.report = report
        self.path = path
        self.allowed = tuple(allowed)
        self.valid = True
        if raw is MISSING or raw is None:
            raw = {}
        elif not isinstance(raw, dict):
            report.expected(path, "a table", raw)
            raw = {}
            self.valid = False
        # None stands for "not given", so a normalised config validates again unchanged.
        self.raw = {key: value for key, value in raw.items() if value is not None}
        for key in self.raw:
            if key not in self.allowed:
                report.unknown_key(join(path, key), key, self.allowed)

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, check: Check, default: Any = None, required: bool = False) -> Any:
        if key not in self.raw:
            if required:
                self.report.expected(self.at(key), check.expected)  # type: ignore[attr-defined]
            return default
        value = self.raw[key]
        try:
            return check(value)
        except Invalid as bad:
            self.report.expected(self.at(key), bad.expected, value, bad.hint)
            return default

    def get_list(self, key: str, check: Check, required: bool = False) -> list[Any]:
        """A non-empty array whose entries each pass `check`, reported as key[index]."""
        noun = check.expected.split(" ", 1)[1]  # type: ignore[attr-defined]  # "a"/"an" dropped
        expected = "a non-empty array of " + noun
        entries = self.raw.get(key, MISSING)
        if entries is MISSING or not isinstance(entries, list) or not entries:
            if entries is not MISSING or required:
                self.report.expected(self.at(key), expected, entries)
            return []
        accepted = []
        for index, entry in enumerate(entries):
            try:
                accepted.append(check(entry))
            except Invalid as bad:
                self.report.expected(item(self.at(key), index), bad.expected, entry, bad.hint)
        return accepted

    def table(self, key: str, allowed: Iterable[str]) -> Section:
        return Section(self.report, self.at(key), self.raw.get(key, MISSING), allowed)
