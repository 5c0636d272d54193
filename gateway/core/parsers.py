"""Turn one text line from a line-oriented device into a dict of fields, or say why not."""

import json
import re
import sys

from gateway.core.parse_errors import ParseError, Skipped, clip

FORMATS = ("json", "csv", "kv", "nmea", "regex")
__all__ = ("FORMATS", "ParseError", "Skipped", "make_parser", "to_value", "translate_named_groups")

_NUMBER_START = "0123456789+-."


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


def make_parser(
    format,
    fields=None,
    pattern=None,
    delimiter=None,
    sentences=None,
    header=False,
    decimal=".",
    types=None,
):
    """Return parse(line) -> dict for a line format; raise ValueError for a bad configuration.

    parse raises ParseError for a bad line and Skipped (a ParseError) for a good line that
    gives no reading: an NMEA sentence not picked by sentences, a CSV header line. delimiter
    None means the format's default (csv: "," or ";" with decimal ","; kv: "," and ";").
    types {field: "number" | "integer" | "string" | "bool"} (a validate step's declarations)
    says how csv, kv and regex turn a field's text into a value; other fields are guessed.
    """
    if format == "json":
        body = _parse_json
    elif format == "csv":
        body = _csv_parser(fields, delimiter, header, decimal or ".", types)
    elif format == "kv":
        body = _kv_parser(delimiter, _converters(types, to_value))
    elif format == "nmea":
        # Imported when asked for: the NMEA tables cost a board about 24 KB of heap.
        from gateway.core.nmea import nmea_parser

        body = nmea_parser(sentences)
    elif format == "regex":
        body = _regex_parser(pattern, _converters(types, to_value))
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

    if format == "json":
        return _json_fast_path(parse)
    return parse


def _json_fast_path(parse):
    """Most JSON lines are good objects: try the decoder first, and only when that fails
    take the general path, which says what is wrong (the hot path: one call per line)."""

    def parse_json_line(line):
        if type(line) is str:
            try:
                value = _loads(line)
            except Exception:
                value = None
            if type(value) is dict:
                return value
        return parse(line)

    return parse_json_line


def _decode(line):
    if not isinstance(line, (bytes, bytearray)):
        raise ParseError(f"expected a text line, got {type(line).__name__}")
    try:
        return bytes(line).decode("utf-8")
    except UnicodeError:
        raise ParseError("invalid UTF-8") from None


# -- declared types ---------------------------------------------------------------------------


def _as_string(text):
    return text or None


def _as_integer(text):
    """ "7", "-3", "007" as int; anything else stays text, for validate to name."""
    digits = text[1:] if text[:1] == "-" or text[:1] == "+" else text
    if not digits:
        return text or None
    for char in digits:
        if char not in "0123456789":
            return text
    return int(text)


_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _as_bool(text):
    """true/false (any case) and 1/0; anything else stays text, for validate to name."""
    if not text:
        return None
    value = _BOOLS.get(text.lower())
    return text if value is None else value


def _converters(types, number):
    """{field: text -> value} for the declared fields, or None when none is declared."""
    if not types:
        return None
    by_type = {"number": number, "integer": _as_integer, "string": _as_string, "bool": _as_bool}
    converters = {}
    for name in types:
        if types[name] not in by_type:
            raise ValueError(f"unknown type {types[name]!r} for field {name!r}")
        converters[name] = by_type[types[name]]
    return converters


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


def _csv_parser(fields, delimiter, header, decimal, types=None):
    if decimal not in (".", ","):
        raise ValueError(f"csv decimal must be '.' or ',', got {decimal!r}")
    if delimiter is None:
        delimiter = ";" if decimal == "," else ","  # what spreadsheets in such locales write
    if not delimiter:
        raise ValueError("csv delimiter must not be empty")
    if decimal in delimiter:
        raise ValueError(f"csv decimal {decimal!r} cannot also be the delimiter")
    if not fields and not header:
        raise ValueError("csv format needs fields (the column names) or header = true")
    convert = _comma_value if decimal == "," else to_value
    columns = _CsvColumns(list(fields) if fields else None, header, convert)
    typed = _converters(types, convert)

    def parse_csv(line):
        cells = _split_quoted(line, delimiter) if '"' in line else line.split(delimiter)
        cells = [cell.strip() for cell in cells]
        names = columns.names_for(cells)
        if len(cells) != len(names):
            raise ParseError(f"expected {len(names)} CSV columns, got {len(cells)}")
        data = {}
        if typed is None:
            for name, cell in zip(names, cells):
                data[name] = convert(cell)
            return data
        for name, cell in zip(names, cells):
            data[name] = typed.get(name, convert)(cell)
        return data

    return parse_csv


class _CsvColumns:
    """The column names of a CSV source: given as fields, or read from its header line.

    With header = true a line whose cells are all distinct non-numeric names is a header: the
    first one names the columns (unless fields does), the same line again later is the device
    restarting. A header-like line with another column count replaces the header (new
    firmware); one with the same count is data, since a row of words is a valid reading.
    """

    def __init__(self, fields, header, convert):
        self.fields = fields
        self.header = header
        self.convert = convert
        self.names = fields
        self.seen = None  # the header line last seen, as cells

    def names_for(self, cells):
        """The names for this line's cells; raise Skipped for a header line."""
        if not self.header:
            return self.names
        if cells == self.seen:
            raise Skipped("repeated CSV header line (the device restarted)", "header")
        if self._is_header(cells) and (self.seen is None or len(cells) != len(self.seen)):
            reason = "CSV header line" if self.seen is None else "new CSV header line"
            self._take(cells)
            raise Skipped(reason, "header")
        if self.names is None:
            raise ParseError("no CSV header line yet (header = true): it names the columns")
        return self.names

    def _is_header(self, cells):
        for index, cell in enumerate(cells):
            if not cell or cell in cells[:index]:
                return False
            # a word in either notation: "1.5" is no name even where the decimal mark is ","
            if type(to_value(cell)) is not str or type(self.convert(cell)) is not str:
                return False
        return True

    def _take(self, cells):
        if self.fields is not None and len(cells) != len(self.fields):
            raise ParseError(
                f"CSV header has {len(cells)} columns, fields names {len(self.fields)}"
            )
        self.seen = cells
        if self.fields is None:
            self.names = cells


def _comma_value(text):
    """A cell written with a decimal comma ("21,5"); a "." is then no decimal point, so such
    a cell stays text rather than risk reading a thousands separator as one."""
    if "." in text:
        return text
    if "," not in text:
        return to_value(text)
    value = to_value(text.replace(",", "."))
    return text if type(value) is str else value  # words keep their commas


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


# -- key=value, label:value -------------------------------------------------------------------

_KV_DELIMITERS = (",", ";")  # besides spaces and tabs: "t=1,h=2", "T=21.5;H=40"
# Characters that often separate pairs: in an unquoted value that also holds '=' or ':', one
# that is not a delimiter here means the line is ambiguous ("T=21.5;H=40" with ",").
_PAIRISH = ",;|&"
_BLANKS = " \t"
_ASSIGN = "=:"
_QUOTES = "\"'"


def _kv_parser(delimiter, typed=None):
    if delimiter is None:
        delimiters = _KV_DELIMITERS
    elif not delimiter:
        raise ValueError("kv delimiter must not be empty")
    else:
        delimiters = (delimiter,)
    stray = "".join(char for char in _PAIRISH if all(char not in d for d in delimiters))
    fast = all(not _has_any(d, _ASSIGN + _QUOTES) for d in delimiters)

    def parse_kv(line):
        data = _kv_simple(line, delimiters, stray, typed) if fast else None
        if data is not None:
            return data
        scan = _KvScan(line, delimiters, stray, typed)
        data = {}
        while scan.next_pair():
            key, value = scan.pair()
            if key in data:
                raise ParseError(f"key {clip(key)!r} appears twice")
            data[key] = value
        return data

    return parse_kv


def _has_any(text, chars):
    return any(char in text for char in chars)


def _kv_simple(line, delimiters, stray, typed=None):
    """The common line ("t=21.5 h=40", "temp:21.5,hum:40") split at once, 5x faster than
    the scanner; None when the line needs the scanner (quotes, spaces around '=' or ':',
    anything doubtful), which then gives the same reading or says what is wrong."""
    if _has_any(line, _QUOTES):
        return None
    for delimiter in delimiters:
        if delimiter in line:
            line = line.replace(delimiter, " ")
    if "\t" in line:
        line = line.replace("\t", " ")
    if " =" in line or "= " in line or " :" in line or ": " in line:
        return None
    data = {}
    for token in line.split():
        equals = token.find("=")
        colon = token.find(":")
        split = equals if colon < 0 or 0 <= equals < colon else colon
        if split <= 0 or token[:split] in data:
            return None
        value = token[split + 1 :]
        if stray and _has_any(value, stray) and _has_any(value, _ASSIGN):
            return None
        key = token[:split]
        data[key] = to_value(value) if typed is None else typed.get(key, to_value)(value)
    return data


class _KvScan:
    """Reads key=value or label:value pairs left to right; spaces may surround '=' or ':'."""

    def __init__(self, line, delimiters, stray, typed=None):
        self.line = line
        self.end = len(line)
        self.delimiters = delimiters
        self.stray = stray
        self.typed = typed or {}
        self.i = 0

    def next_pair(self):
        """Skip separators; False at the end of the line."""
        line = self.line
        while self.i < self.end:
            if line[self.i] in _BLANKS:
                self.i += 1
                continue
            size = self._delimiter_at(self.i)
            if not size:
                return True
            self.i += size
        return False

    def pair(self):
        start = self.i
        key_end = self._word_end(start)
        i = self._skip_blanks(key_end)
        if i >= self.end or self.line[i] not in _ASSIGN:
            raise ParseError(
                f"token {clip(self.line[start : self._token_end(start)])!r} has no '=' or ':'"
            )
        if key_end == start:
            token = self.line[start : self._token_end(start)]
            raise ParseError(f"token {clip(token)!r} has no key before {self.line[i]!r}")
        key = self.line[start:key_end]
        return key, self._value(key, i + 1)

    def _value(self, key, after):
        i = self._skip_blanks(after)
        if i < self.end and self.line[i] in _QUOTES:
            return self._quoted(key, i)
        if i > after and self._starts_pair(i):
            self.i = i  # "a= b=1": a has no value, b=1 is the next pair
            return None
        end = self._token_end(i)
        text = self.line[i:end]
        self.i = end
        self._check_unambiguous(key, text)
        return self.typed.get(key, to_value)(text)

    def _quoted(self, key, i):
        quote = self.line[i]
        chars = []
        i += 1
        while i < self.end:
            char = self.line[i]
            if char == "\\" and i + 1 < self.end:
                chars.append(self.line[i + 1])  # \" and \\ as C and Arduino code write them
                i += 2
                continue
            if char == quote:
                break
            chars.append(char)
            i += 1
        else:
            raise ParseError(f"unterminated quoted value of {clip(key)!r}")
        i += 1
        if i < self.end and self.line[i] not in _BLANKS and not self._delimiter_at(i):
            raise ParseError(f"text after the closing quote of {clip(key)!r}")
        self.i = i
        return "".join(chars)  # quoted: text, even when it looks like a number

    def _check_unambiguous(self, key, text):
        for char in self.stray:
            if char in text and ("=" in text or ":" in text):
                raise ParseError(
                    f"ambiguous value {clip(text)!r} of {clip(key)!r}: it holds {char!r}, which "
                    "is not a delimiter here, and '=' or ':' (quote the value or set delimiter)"
                )

    def _starts_pair(self, i):
        """Whether a key (not starting with a digit) and '=' or ':' begin at i."""
        end = self._word_end(i)
        return (
            end > i
            and self.line[i] not in _NUMBER_START
            and end < self.end
            and (self.line[end] in _ASSIGN)
        )

    def _word_end(self, i):
        line = self.line
        while i < self.end and line[i] not in _ASSIGN and line[i] not in _BLANKS:
            if self._delimiter_at(i):
                break
            i += 1
        return i

    def _token_end(self, i):
        line = self.line
        while i < self.end and line[i] not in _BLANKS and not self._delimiter_at(i):
            i += 1
        return i

    def _skip_blanks(self, i):
        while i < self.end and self.line[i] in _BLANKS:
            i += 1
        return i

    def _delimiter_at(self, i):
        for delimiter in self.delimiters:
            if self.line.startswith(delimiter, i):
                return len(delimiter)
        return 0


# -- regex ------------------------------------------------------------------------------------


def _regex_parser(pattern, typed=None):
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
            convert = typed.get(name, to_value) if typed else to_value
            data[name] = None if text is None else convert(text.strip())
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
