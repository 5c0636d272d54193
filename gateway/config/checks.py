"""Value checks: each takes a raw TOML value and returns it normalised or raises Invalid."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from gateway.config.report import Check, Invalid, alternatives, closest, describe, did_you_mean
from gateway.config.units import DURATION_EXPECTED, SIZE_EXPECTED, parse_duration, parse_size

PLACEHOLDERS = ("gateway", "device", "stream")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*")
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s/]+):(\d{1,5})")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


def expects(expected: str) -> Callable[[Check], Check]:
    def attach(check: Check) -> Check:
        check.expected = expected  # type: ignore[attr-defined]
        return check

    return attach


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text(expected: str = "a non-empty string") -> Check:
    @expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(expected)
        return value

    return check


def any_text(expected: str = "a string") -> Check:
    @expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        return value

    return check


@expects("true or false")
def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def integer(low: int | None = None, high: int | None = None, expected: str = "") -> Check:
    if not expected:
        expected = _range_text("an integer", low, high)

    @expects(expected)
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(expected)
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(expected)
        return value

    return check


POSITIVE_INT = integer(1, expected="a positive integer")


def number(low: float | None = None, above: float | None = None, expected: str = "") -> Check:
    if not expected:
        expected = "a number" if low is None else f"a number of at least {low:g}"
        if above is not None:
            expected = f"a number greater than {above:g}"

    @expects(expected)
    def check(value: Any) -> float | int:
        if not _is_number(value) or value != value:
            raise Invalid(expected)
        if (low is not None and value < low) or (above is not None and value <= above):
            raise Invalid(expected)
        return value

    return check


def _range_text(what: str, low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"{what} from {low} to {high}"
    if low is not None:
        return f"{what} of at least {low}"
    return what


def choice(options: Iterable[Any], expected: str = "", hints: Mapping[Any, str] | None = None):
    options = tuple(options)
    expected = expected or alternatives(options)

    @expects(expected)
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            hint = (hints or {}).get(value, "") if not isinstance(value, (dict, list)) else ""
            raise Invalid(expected, hint or did_you_mean(value, options))
        return value

    return check


def duration(positive: bool = False) -> Check:
    expected = DURATION_EXPECTED + (" greater than 0" if positive else "")

    @expects(expected)
    def check(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and seconds <= 0:
            raise Invalid(expected)
        return seconds

    return check


def size(positive: bool = True) -> Check:
    expected = SIZE_EXPECTED + (" greater than 0" if positive else "")

    @expects(expected)
    def check(value: Any) -> int:
        try:
            count = parse_size(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and count <= 0:
            raise Invalid(expected)
        return count

    return check


NAME_EXPECTED = 'a name of letters, digits, "_", "-" and "." (at most 64)'


@expects(NAME_EXPECTED)
def name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Invalid(NAME_EXPECTED)
    return value


def string_list(expected: str, allow_empty: bool = False) -> Check:
    @expects(expected)
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or (not value and not allow_empty):
            raise Invalid(expected)
        if not all(isinstance(entry, str) and entry for entry in value):
            raise Invalid(expected)
        if len(set(value)) != len(value):
            raise Invalid(expected, " (an entry is repeated)")
        return list(value)

    return check


def string_map(expected: str) -> Check:
    @expects(expected)
    def check(value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise Invalid(expected)
        if not all(isinstance(v, str) and k and v for k, v in value.items()):
            raise Invalid(expected)
        return dict(value)

    return check


def table(expected: str) -> Check:
    """A non-empty table, kept as it is: its owner checks the inside (validate's fields)."""

    @expects(expected)
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            raise Invalid(expected)
        return dict(value)

    return check


TEMPLATE_EXPECTED = "a topic template using only {gateway}, {device} and {stream}"


@expects(TEMPLATE_EXPECTED)
def topic_template(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(TEMPLATE_EXPECTED)
    for placeholder in _PLACEHOLDER.findall(value):
        if placeholder not in PLACEHOLDERS:
            guess = closest(placeholder, PLACEHOLDERS)
            hint = f"; did you mean {{{guess}}}?" if guess else ""
            raise Invalid(TEMPLATE_EXPECTED, f" ({{{placeholder}}} is not one of them{hint})")
    leftover = _PLACEHOLDER.sub("", value)
    if "{" in leftover or "}" in leftover:
        raise Invalid(TEMPLATE_EXPECTED, " (a brace is not closed)")
    if "+" in value or "#" in value or "\0" in value:
        raise Invalid(TEMPLATE_EXPECTED, " (+ and # are subscription wildcards, not topic text)")
    return value


def host_port(port_low: int = 1) -> Check:
    expected = 'a "host:port" address (IPv6 as "[::1]:port")'

    @expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        match = _HOST_PORT.fullmatch(value)
        if match is None:
            raise Invalid(expected)
        host, port = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
        if not _valid_host(host, ipv6=bool(match.group(1))):
            raise Invalid(expected, " (the host is not a valid address or name)")
        if not port_low <= int(port) <= 65535:
            raise Invalid(expected, f" (the port must be from {port_low} to 65535)")
        return value

    return check


def _valid_host(host: str, ipv6: bool = False) -> bool:
    if ipv6 or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.fullmatch(host))


def url(schemes: tuple[str, ...], example: str, allow_path: bool = True) -> Check:
    expected = f'an {alternatives(s + "://" for s in schemes)} URL like "{example}"'

    @expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise Invalid(expected)
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number in range
        except ValueError:
            raise Invalid(expected, " (the port is not valid)") from None
        if not parts.hostname or not _valid_host(parts.hostname):
            raise Invalid(expected, " (the host is missing or not valid)")
        if parts.username is not None:
            raise Invalid(expected, " (give credentials with the username and password keys)")
        if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
            raise Invalid(expected, " (it takes no path or query)")
        return value

    return check


@expects('a USB id of 4 hex digits like "2e8a"')
def usb_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return f"{value:04x}"
    if isinstance(value, str) and _HEX4.fullmatch(value):
        return value.lower()
    raise Invalid(usb_id.expected)  # type: ignore[attr-defined]


def _regex(value: Any) -> str:
    expected = "a regular expression with at least one named group (?P<name>…)"
    if not isinstance(value, str):
        raise Invalid(expected)
    try:
        compiled = re.compile(value)
    except re.error as error:
        raise Invalid(expected, f" ({error})") from None
    if not compiled.groupindex:
        raise Invalid(expected, " (it has no named group)")
    return value


regex = expects("a regular expression with at least one named group (?P<name>…)")(_regex)


def choice_list(options: Iterable[str]) -> Check:
    options = tuple(options)
    expected = "a non-empty array of names among " + ", ".join(options)

    @expects(expected)
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise Invalid(expected)
        for entry in value:
            if isinstance(entry, (dict, list)) or entry not in options:
                guess = closest(entry, options)
                hint = f'; did you mean "{guess}"?' if guess else ""
                raise Invalid(expected, f" ({describe(entry)} is not one of them{hint})")
        return list(value)

    return check
