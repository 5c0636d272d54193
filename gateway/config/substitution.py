"""Substitute ${VAR}, ${VAR:-default}, ${VAR:?message} and $$ in TOML text before it is parsed."""

from __future__ import annotations

import os
import re
from typing import Mapping

# A reference is matched only from a "$" that is followed by "{", so regex anchors and
# prices ("costs $5") pass through untouched; "$$" is the escape for a literal "$".
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}\n]*))?\}")
_FORMS = "${NAME}, ${NAME:-default} or ${NAME:?message}"

# Where a "$" sits decides how the value must be written so the TOML still means it.
NORMAL, COMMENT, BASIC, LITERAL, ML_BASIC, ML_LITERAL = range(6)

_OPENERS = (('"""', ML_BASIC), ("'''", ML_LITERAL), ('"', BASIC), ("'", LITERAL))
_CLOSERS = {BASIC: '"', LITERAL: "'", ML_BASIC: '"""', ML_LITERAL: "'''"}


def substitute(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Return (text with references replaced, errors); errors name the line and the variable.

    Comments are left alone, so a commented-out `${SECRET}` needs no value. Inside a quoted
    TOML string the value is escaped for that kind of string, so a password holding `"` or
    `\\` survives; outside strings it is inserted verbatim (e.g. `qos = ${QOS:-1}`).
    """
    env = os.environ if environ is None else environ
    return _Scanner(text, env).run()


class _Scanner:
    def __init__(self, text: str, environ: Mapping[str, str]):
        self.text = text
        self.environ = environ
        self.out: list[str] = []
        self.errors: list[str] = []
        self.position = 0
        self.line = 1
        self.state = NORMAL

    def run(self) -> tuple[str, list[str]]:
        while self.position < len(self.text):
            self._step()
        return "".join(self.out), self.errors

    def _step(self) -> None:
        char = self.text[self.position]
        if char == "$" and self.state != COMMENT:
            self._dollar()
            return
        if char == "\n":
            self.line += 1
            if self.state in (COMMENT, BASIC, LITERAL):
                self.state = NORMAL  # an unterminated one-line string is the parser's to report
            self._copy(1)
            return
        if self.state == NORMAL:
            self._step_normal(char)
        elif self.state in (BASIC, ML_BASIC) and char == "\\":
            self._copy_escape()
        elif self.state in _CLOSERS and self.text.startswith(_CLOSERS[self.state], self.position):
            self._copy(len(_CLOSERS[self.state]))
            self.state = NORMAL
        else:
            self._copy(1)

    def _step_normal(self, char: str) -> None:
        if char == "#":
            self.state = COMMENT
            self._copy(1)
            return
        for opener, state in _OPENERS:
            if self.text.startswith(opener, self.position):
                self.state = state
                self._copy(len(opener))
                return
        self._copy(1)

    def _copy(self, count: int) -> None:
        self.out.append(self.text[self.position : self.position + count])
        self.position += count

    def _copy_escape(self) -> None:
        # Keep "\$" and "\"" pairs together so the escaped character is not reinterpreted.
        pair = self.text[self.position : self.position + 2]
        if pair.endswith("\n"):
            self.line += 1
        self._copy(len(pair))

    def _dollar(self) -> None:
        if self.text.startswith("$$", self.position):
            self.out.append("$")
            self.position += 2
            return
        if not self.text.startswith("${", self.position):
            self._copy(1)
            return
        match = _REFERENCE.match(self.text, self.position)
        if match is None:
            fragment = self.text[self.position :].split("\n", 1)[0][:40]
            self.errors.append(f'line {self.line}: bad reference "{fragment}": expected {_FORMS}')
            self._copy(2)
            return
        self.position = match.end()
        value = self._resolve(match.group(0), *match.groups())
        if value is not None:
            self.out.append(self._fit(value, match.group(0)))

    def _resolve(self, reference: str, name: str, operator: str | None, word: str | None):
        value = self.environ.get(name)
        if operator == ":-":
            return value if value else word
        if operator == ":?":
            if value:
                return value
            state = "is empty" if value == "" else "is not set"
            reason = word.strip() or "a value is required"
            self.errors.append(f"line {self.line}: {reference}: {name} {state}: {reason}")
            return None
        if value is None:
            self.errors.append(
                f"line {self.line}: ${{{name}}}: environment variable {name} is not set"
                f" (give a default with ${{{name}:-default}})"
            )
        return value

    def _fit(self, value: str, reference: str) -> str:
        if self.state == BASIC:
            return _escape_basic(value, keep_newlines=False)
        if self.state == ML_BASIC:
            return _escape_basic(value, keep_newlines=True)
        if self.state == LITERAL and ("'" in value or _has_control(value)):
            self._refuse(reference, "'…'")
        elif self.state == ML_LITERAL and "'''" in value:
            self._refuse(reference, "'''…'''")
        return value

    def _refuse(self, reference: str, quotes: str) -> None:
        self.errors.append(
            f"line {self.line}: {reference}: the value cannot be written inside a {quotes}"
            ' literal string; use a "…" string instead'
        )


def _has_control(value: str) -> bool:
    return any(ord(char) < 32 and char != "\t" for char in value)


_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}


def _escape_basic(value: str, keep_newlines: bool) -> str:
    pieces = []
    for char in value:
        if keep_newlines and char == "\n":
            pieces.append(char)
        elif char in _SHORT_ESCAPES:
            pieces.append(_SHORT_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            pieces.append(f"\\u{ord(char):04x}")
        else:
            pieces.append(char)
    return "".join(pieces)
