"""Turn one text line from a line-oriented device into a dict of fields, or say why not."""

import json
import re
import sys

FORMATS = ("json", "csv", "kv", "nmea", "regex")

_NUMBER_START = "0123456789+-."


class ParseError(ValueError):
    """A line could not be parsed; str(error) and .reason say why in plain words."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def to_value(text):
    """A stripped field as int, else finite float, else the text itself ("" becomes None)."""
    if not text:
        return None
    if text[0] not in _NUMBER_START:
        return text  # most words are rejected here without the cost of an exception
    try:
        if "." in text or "e" in text or "E" in text:
            number = float(text)
            # nan and inf are not numbers a sink can encode as JSON: keep what the device wrote
            return text if number - number != 0 else number
        return int(text)
    except ValueError:
        return text


def make_parser(format, fields=None, pattern=None, delimiter=","):
    """Return parse(line) -> dict for a line format; raise ValueError for a bad configuration."""
    if format == "json":
        body = _parse_json
    elif format == "csv":
        body = _csv_parser(fields, delimiter)
    elif format == "kv":
        body = _kv_parser(delimiter)
    elif format == "nmea":
        body = _parse_nmea
    elif format == "regex":
        body = _regex_parser(pattern)
    else:
        raise ValueError(
            "unknown format {!r}, expected one of {}".format(format, ", ".join(FORMATS))
        )

    def parse(line):
        if type(line) is not str:
            line = _decode(line)
        if line[-1:] in ("\n", "\r"):
            line = line.rstrip("\r\n")
        if not line or line.isspace():
            raise ParseError("empty line")
        try:
            return body(line)
        except ParseError:
            raise
        except Exception as error:  # an unforeseen quirk of some input is still just a bad line
            raise ParseError(
                f"unparseable line ({type(error).__name__}: {_short(error)})"
            ) from None

    return parse


def _decode(line):
    if not isinstance(line, (bytes, bytearray)):
        raise ParseError(f"expected a text line, got {type(line).__name__}")
    try:
        return bytes(line).decode("utf-8")
    except UnicodeError:
        raise ParseError("invalid UTF-8") from None


# -- json -------------------------------------------------------------------------------------


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


if sys.implementation.name == "micropython":
    _loads = json.loads  # already rejects NaN and Infinity
else:
    try:
        # CPython fast path (≈ 6x json's speed); rejects NaN and Infinity as MicroPython does
        from orjson import loads as _loads
    except ImportError:
        # one decoder for all lines: json.loads with options would build a new one per call
        _loads = json.JSONDecoder(parse_constant=_reject_constant).decode


def _parse_json(line):
    try:
        value = _loads(line)
    except Exception as error:  # ValueError, or RecursionError/MemoryError on hostile nesting
        raise ParseError(f"invalid JSON: {_short(error)}") from None
    if type(value) is not dict:
        raise ParseError(f"JSON line is {_json_kind(value)}, expected an object")
    return value


def _json_kind(value):
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _short(error):
    text = str(error) or type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


# -- csv --------------------------------------------------------------------------------------


def _csv_parser(fields, delimiter):
    if not fields:
        raise ValueError("csv format needs fields (the column names)")
    if not delimiter:
        raise ValueError("csv delimiter must not be empty")
    names = list(fields)
    expected = len(names)

    def parse_csv(line):
        cells = _split_quoted(line, delimiter) if '"' in line else line.split(delimiter)
        if len(cells) != expected:
            raise ParseError(f"expected {expected} CSV columns, got {len(cells)}")
        data = {}
        for name, cell in zip(names, cells):
            data[name] = to_value(cell.strip())
        return data

    return parse_csv


def _split_quoted(line, delimiter):
    """Split a CSV line where cells may be "quoted", with "" standing for one quote."""
    cells = []
    cell = []
    i = 0
    end = len(line)
    quoted = False
    while i < end:
        char = line[i]
        if quoted:
            if char != '"':
                cell.append(char)
            elif line[i + 1 : i + 2] == '"':
                cell.append('"')
                i += 1
            else:
                quoted = False
        elif char == '"':
            quoted = True
        elif line.startswith(delimiter, i):
            cells.append("".join(cell))
            cell = []
            i += len(delimiter)
            continue
        else:
            cell.append(char)
        i += 1
    if quoted:
        raise ParseError("unterminated quoted CSV cell")
    cells.append("".join(cell))
    return cells


# -- key=value --------------------------------------------------------------------------------


def _kv_parser(delimiter):
    def parse_kv(line):
        if delimiter and delimiter in line:
            line = line.replace(delimiter, " ")
        data = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if not sep:
                raise ParseError(f"token {_clip(token)!r} has no '='")
            if not key:
                raise ParseError(f"token {_clip(token)!r} has no key before '='")
            data[key] = to_value(value)
        return data

    return parse_kv


def _clip(text):
    return text if len(text) <= 40 else text[:37] + "..."


# -- NMEA 0183 --------------------------------------------------------------------------------


def _parse_nmea(line):
    line = line.strip()
    if line[0] != "$":
        raise ParseError("NMEA sentence must start with '$'")
    star = line.rfind("*")
    if star < 0:
        raise ParseError("NMEA checksum missing")
    body = line[1:star]
    given = line[star + 1 :]
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    try:
        valid = len(given) == 2 and int(given, 16) == checksum
    except ValueError:
        valid = False
    if not valid:
        raise ParseError(f"NMEA checksum mismatch: computed {checksum:02X}, line says {given!r}")
    parts = body.split(",")
    address = parts[0]
    # a talker id (GP, GN, GL, ...) precedes the type; proprietary sentences start with P
    kind = address[2:] if len(address) == 5 and address[0] != "P" else address
    if kind == "GGA":
        return _nmea_gga(parts)
    if kind == "RMC":
        return _nmea_rmc(parts)
    raise ParseError("unsupported NMEA sentence %s" % (kind or "(empty)"))


def _nmea_gga(parts):
    # $xxGGA,time,lat,N,lon,E,quality,satellites,hdop,altitude,M,geoid,M,age,station
    if len(parts) < 11:
        raise ParseError(f"GGA sentence has {len(parts)} fields, expected at least 11")
    return {
        "stream": "gga",
        "time": _nmea_time(parts[1]),
        "lat": _nmea_degrees(parts[2], parts[3], "latitude", 2),
        "lon": _nmea_degrees(parts[4], parts[5], "longitude", 3),
        "fix_quality": _nmea_number(parts[6], int, "fix quality"),
        "satellites": _nmea_number(parts[7], int, "satellites"),
        "hdop": _nmea_number(parts[8], float, "hdop"),
        "altitude": _nmea_number(parts[9], float, "altitude"),
    }


def _nmea_rmc(parts):
    # $xxRMC,time,status,lat,N,lon,E,speed,course,date,variation,E[,mode[,nav status]]
    if len(parts) < 10:
        raise ParseError(f"RMC sentence has {len(parts)} fields, expected at least 10")
    status = parts[2] or None
    if status not in (None, "A", "V"):
        raise ParseError(f"bad RMC status {_clip(status)!r}, expected A or V")
    return {
        "stream": "rmc",
        "time": _nmea_time(parts[1]),
        "status": status,
        "lat": _nmea_degrees(parts[3], parts[4], "latitude", 2),
        "lon": _nmea_degrees(parts[5], parts[6], "longitude", 3),
        "speed_knots": _nmea_number(parts[7], float, "speed"),
        "course": _nmea_number(parts[8], float, "course"),
        "date": _nmea_date(parts[9]),
    }


def _is_digits(text):
    # ASCII only: str.isdigit() accepts superscripts and other scripts that int() refuses
    return text != "" and not text.strip("0123456789")


def _nmea_number(text, kind, what):
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ParseError(f"bad NMEA {what} {_clip(text)!r}") from None


def _nmea_degrees(text, hemisphere, what, degree_digits):
    """ddmm.mmmm / dddmm.mmmm plus N/S/E/W -> signed decimal degrees."""
    if not text:
        return None
    dot = text.find(".")
    whole = text if dot < 0 else text[:dot]
    if len(whole) != degree_digits + 2 or not _is_digits(whole):
        raise ParseError(f"bad NMEA {what} {_clip(text)!r}")
    try:
        minutes = float(text[degree_digits:])
    except ValueError:
        raise ParseError(f"bad NMEA {what} {_clip(text)!r}") from None
    degrees = int(whole[:degree_digits]) + minutes / 60
    allowed = "NS" if degree_digits == 2 else "EW"
    if len(hemisphere) != 1 or hemisphere not in allowed:
        raise ParseError(f"bad NMEA {what} hemisphere {_clip(hemisphere)!r}")
    if hemisphere in "SW":
        degrees = -degrees
    return round(degrees, 7)


def _nmea_time(text):
    """hhmmss[.sss] -> "hh:mm:ss[.sss]"."""
    if not text:
        return None
    clock = text[:6]
    fraction = text[6:]
    if (
        len(clock) != 6
        or not _is_digits(clock)
        or (fraction and (fraction[0] != "." or not _is_digits(fraction[1:])))
    ):
        raise ParseError(f"bad NMEA time {_clip(text)!r}")
    return clock[0:2] + ":" + clock[2:4] + ":" + clock[4:6] + fraction


def _nmea_date(text):
    """ddmmyy -> "yyyy-mm-dd" (years 80-99 are 19xx, GPS did not exist before 1980)."""
    if not text:
        return None
    if len(text) != 6 or not _is_digits(text):
        raise ParseError(f"bad NMEA date {_clip(text)!r}")
    year = int(text[4:6])
    year += 1900 if year >= 80 else 2000
    return str(year) + "-" + text[2:4] + "-" + text[0:2]


# -- regex ------------------------------------------------------------------------------------


def _regex_parser(pattern):
    if not pattern:
        raise ValueError("regex format needs a pattern")
    plain, groups = translate_named_groups(pattern)
    if not groups:
        raise ValueError("regex pattern has no named groups (?P<name>...)")
    try:
        compiled = re.compile(plain)
    except Exception as error:
        raise ValueError(f"invalid regex pattern: {_short(error)}") from None

    # search, not match: a pattern may match anywhere unless the user anchors it with ^ and $
    def parse_regex(line):
        match = compiled.search(line)
        if match is None:
            raise ParseError("line does not match the pattern")
        data = {}
        for index, name in groups:
            text = match.group(index)
            data[name] = None if text is None else to_value(text.strip())
        return data

    return parse_regex


def translate_named_groups(pattern):
    """Rewrite (?P<name>...) as plain groups, since MicroPython's re has no named groups.

    Returns (pattern, [(group number, name), ...]). Escapes and character classes are
    skipped so "\\(" and "[(]" are not taken for groups.
    """
    out = []
    groups = []
    number = 0
    i = 0
    end = len(pattern)
    in_class = False
    while i < end:
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            # a "]" right after "[" or "[^" is a literal member, not the end of the class
            out.append(char)
            i += 1
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":
                out.append("]")
                i += 1
            continue
        elif char == "(":
            if pattern.startswith("(?P<", i):
                close = pattern.find(">", i)
                name = pattern[i + 4 : close] if close > 0 else ""
                if not _is_identifier(name):
                    raise ValueError(f"bad regex group name {name!r}")
                if name in [known for _, known in groups]:
                    raise ValueError(f"regex group name {name!r} used twice")
                number += 1
                groups.append((number, name))
                out.append("(")
                i = close + 1
                continue
            if pattern.startswith("(?P=", i):
                raise ValueError("regex back-references (?P=name) are not supported")
            if not pattern.startswith("(?", i):
                number += 1
        out.append(char)
        i += 1
    return "".join(out), groups


def _is_identifier(name):
    if not name or name[0].isdigit():
        return False
    return all(char.isalpha() or char.isdigit() or char == "_" for char in name)
