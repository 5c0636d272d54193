"""parsers: each line format, its errors, and garbage that must only ever give ParseError."""

from gateway.core.parsers import (
    ParseError,
    Skipped,
    make_parser,
    to_value,
    translate_named_groups,
)

GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def _reason(parse, line):
    """The ParseError reason for a line that must be rejected."""
    try:
        result = parse(line)
    except ParseError as error:
        assert error.reason == str(error)
        return error.reason
    raise AssertionError(f"expected ParseError for {line!r}, got {result!r}")


def _config_error(**options):
    try:
        make_parser(**options)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"expected ValueError for {options!r}")


def _nmea(body):
    """A sentence with a correct checksum (XOR of everything between $ and *)."""
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}"


def _garbage_lines(count, seed):
    """Deterministic junk: control characters, quotes, separators, non-ASCII and surrogates."""
    alphabet = '{}[]",:=*$ \t\x00\x1b\\/.-+0123456789aeEnNGPRMCA\u00b2\u00e9\u4e2d\ud800\U0001f600'
    state = seed
    lines = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        length = state % 60
        chars = []
        for _ in range(length):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            chars.append(alphabet[(state >> 8) % len(alphabet)])
        lines.append("".join(chars))
    return lines


# -- common ---------------------------------------------------------------------------------


def test_to_value_numbers_and_text():
    assert to_value("42") == 42 and type(to_value("42")) is int
    assert to_value("-7") == -7
    assert to_value("21.5") == 21.5 and type(to_value("21.5")) is float
    assert to_value("1e3") == 1000.0
    assert to_value("on") == "on"
    assert to_value("") is None
    assert to_value("nan") == "nan"  # not a number a JSON sink could carry
    assert to_value("inf") == "inf"


def test_every_format_rejects_empty_lines_and_strips_cr():
    parsers = [
        make_parser("json"),
        make_parser("csv", fields=["a"]),
        make_parser("kv"),
        make_parser("nmea"),
        make_parser("regex", pattern=r"(?P<a>\d+)"),
    ]
    for parse in parsers:
        assert _reason(parse, "") == "empty line"
        assert _reason(parse, "\r") == "empty line"
        assert _reason(parse, "   \r\n") == "empty line"
    assert make_parser("kv")("a=1\r") == {"a": 1}
    assert make_parser("csv", fields=["a", "b"])("1,x\r\n") == {"a": 1, "b": "x"}


def test_bytes_are_decoded_and_bad_utf8_is_a_parse_error():
    parse = make_parser("kv")
    assert parse(b"t=21.5") == {"t": 21.5}
    assert _reason(parse, b"t=\xff\xfe") == "invalid UTF-8"
    assert "expected a text line" in _reason(parse, 42)


def test_unknown_format_and_missing_options_are_config_errors():
    assert "unknown format 'xml'" in _config_error(format="xml")
    assert "needs fields" in _config_error(format="csv")
    assert "needs a pattern" in _config_error(format="regex")
    assert "no named groups" in _config_error(format="regex", pattern=r"(\d+)")


def test_garbage_only_ever_raises_parse_error():
    parsers = [
        make_parser("json"),
        make_parser("csv", fields=["a", "b", "c"]),
        make_parser("csv", header=True, decimal=","),
        make_parser("kv"),
        make_parser("kv", delimiter="|"),
        make_parser("nmea"),
        make_parser("regex", pattern=r"^(?P<a>[0-9]+),(?P<b>\w*)"),
    ]
    lines = _garbage_lines(300, 7) + ["\x00" * 10, "$" * 5, "*", "$*", "$GPGGA*", "{" * 200]
    for parse in parsers:
        for line in lines:
            try:
                result = parse(line)
            except ParseError as error:
                assert not error.reason.startswith("unparseable"), repr(line) + error.reason
                continue
            assert type(result) is dict
        for raw in (b"\xff\xfe\xfd", b"\xc3", b"\x80abc"):
            try:
                parse(raw)
            except ParseError:
                continue
            raise AssertionError("invalid UTF-8 must not parse")


# -- json -------------------------------------------------------------------------------------


def test_json_object_keeps_nested_values():
    parse = make_parser("json")
    data = parse('{"t": 21.5, "n": 3, "s": "env", "nested": {"a": [1, 2]}, "ok": true}')
    assert data == {"t": 21.5, "n": 3, "s": "env", "nested": {"a": [1, 2]}, "ok": True}


def test_json_stream_and_dts_keys_are_returned_for_the_ingest():
    data = make_parser("json")('{"stream": "power", "dts": 123, "w": 5}')
    assert data["stream"] == "power" and data["dts"] == 123


def test_json_truncated_is_a_parse_error():
    parse = make_parser("json")
    line = '{"t": 21.5, "h": [1, 2, {"x": "y"}]}'
    assert parse(line)["t"] == 21.5
    for cut in range(1, len(line) - 1):
        assert _reason(parse, line[:cut]).startswith("invalid JSON")


def test_json_that_is_not_an_object_is_a_parse_error():
    parse = make_parser("json")
    assert _reason(parse, "[1, 2]") == "JSON line is an array, expected an object"
    assert _reason(parse, "42") == "JSON line is a number, expected an object"
    assert _reason(parse, '"text"') == "JSON line is a string, expected an object"
    assert _reason(parse, "null") == "JSON line is null, expected an object"
    assert _reason(parse, "true") == "JSON line is a boolean, expected an object"


def test_json_nan_is_rejected_like_on_micropython():
    assert _reason(make_parser("json"), '{"t": NaN}').startswith("invalid JSON")


def test_json_deep_nesting_is_a_parse_error():
    parse = make_parser("json")
    assert _reason(parse, "[" * 100000).startswith("invalid JSON")


# -- csv --------------------------------------------------------------------------------------


def test_csv_columns_become_named_numbers():
    parse = make_parser("csv", fields=["t", "h", "state"])
    assert parse("21.5,40,on") == {"t": 21.5, "h": 40, "state": "on"}
    assert parse(" 21.5 , 40 , on ") == {"t": 21.5, "h": 40, "state": "on"}
    assert parse("21.5,,on") == {"t": 21.5, "h": None, "state": "on"}


def test_csv_wrong_column_count_names_expected_and_got():
    parse = make_parser("csv", fields=["t", "h", "state"])
    assert _reason(parse, "21.5,40") == "expected 3 CSV columns, got 2"
    assert _reason(parse, "1,2,3,4") == "expected 3 CSV columns, got 4"


def test_csv_other_delimiter_and_quotes():
    parse = make_parser("csv", fields=["name", "t"], delimiter=";")
    assert parse("bench;21") == {"name": "bench", "t": 21}
    assert parse('"a;b";"2"') == {"name": "a;b", "t": 2}
    assert parse('"say ""hi""";3') == {"name": 'say "hi"', "t": 3}
    assert _reason(parse, '"open;3') == "unterminated quoted CSV cell"


def _lines(parse, lines):
    """What each line gives: the reading, or ("skipped", reason), or ("error", reason)."""
    results = []
    for line in lines:
        try:
            results.append(parse(line))
        except Skipped as skip:
            assert skip.kind == "header"
            results.append(("skipped", skip.reason))
        except ParseError as error:
            results.append(("error", error.reason))
    return results


def test_csv_any_single_character_delimiter():
    for delimiter in (";", "\t", "|", " ", ":"):
        parse = make_parser("csv", fields=["t", "h", "s"], delimiter=delimiter)
        line = delimiter.join(["21.5", "40", "on"])
        assert parse(line) == {"t": 21.5, "h": 40, "s": "on"}, repr(delimiter)
        quoted = delimiter.join(['"a' + delimiter + 'b"', "1", '""'])
        assert parse(quoted) == {"t": "a" + delimiter + "b", "h": 1, "s": None}, repr(delimiter)


def test_csv_header_names_the_columns_and_is_not_a_reading():
    parse = make_parser("csv", header=True)
    assert _lines(parse, ["t,h,p", "21.5,40,1013", " t , h , p ", "21.6,41,1012"]) == [
        ("skipped", "CSV header line"),
        {"t": 21.5, "h": 40, "p": 1013},
        ("skipped", "repeated CSV header line (the device restarted)"),
        {"t": 21.6, "h": 41, "p": 1012},
    ]


def test_csv_header_cases():
    cases = [
        # started after the device printed its header: nothing to name the columns with
        (
            {"header": True},
            ["21.5,40", "t,h", "21.5,40"],
            [
                ("error", "no CSV header line yet (header = true): it names the columns"),
                ("skipped", "CSV header line"),
                {"t": 21.5, "h": 40},
            ],
        ),
        # fields name the columns before (and instead of) the header
        (
            {"header": True, "fields": ["temperature", "humidity"]},
            ["21.5,40", "t,h", "21.6,41"],
            [
                {"temperature": 21.5, "humidity": 40},
                ("skipped", "CSV header line"),
                {"temperature": 21.6, "humidity": 41},
            ],
        ),
        # new firmware adds a column: its header replaces the old one
        (
            {"header": True},
            ["t,h", "1,2", "t,h,p", "1,2,3"],
            [
                ("skipped", "CSV header line"),
                {"t": 1, "h": 2},
                ("skipped", "new CSV header line"),
                {"t": 1, "h": 2, "p": 3},
            ],
        ),
        # a row of words as wide as the header is a reading, not a new header
        (
            {"header": True},
            ["state,mode", "on,auto"],
            [("skipped", "CSV header line"), {"state": "on", "mode": "auto"}],
        ),
        # quoted header cells, and a header with a number in it is data
        (
            {"header": True},
            ['"t","h"', "t,2", "1,2"],
            [("skipped", "CSV header line"), {"t": "t", "h": 2}, {"t": 1, "h": 2}],
        ),
        (
            {"header": True, "fields": ["a", "b", "c"]},
            ["t,h"],
            [("error", "CSV header has 2 columns, fields names 3")],
        ),
    ]
    for options, lines, expected in cases:
        got = _lines(make_parser("csv", **options), lines)
        assert got == expected, repr(lines) + ": " + repr(got)


def test_csv_header_without_header_option_is_a_plain_row():
    parse = make_parser("csv", fields=["t", "h"])
    assert parse("t,h") == {"t": "t", "h": "h"}  # what the user asked for: no header


def test_csv_header_with_decimal_comma_is_told_from_numbers_in_either_notation():
    parse = make_parser("csv", header=True, decimal=",")
    assert _lines(parse, ["1.5;2.5", "t;h", "21,5;40"]) == [
        ("error", "no CSV header line yet (header = true): it names the columns"),
        ("skipped", "CSV header line"),
        {"t": 21.5, "h": 40},
    ]


def test_csv_decimal_comma():
    parse = make_parser("csv", fields=["t", "h", "note"], decimal=",")  # delimiter is then ;
    cases = [
        ("21,5;40;ok", {"t": 21.5, "h": 40, "note": "ok"}),
        ("-0,25;1,5e3;x,y", {"t": -0.25, "h": 1500.0, "note": "x,y"}),
        ('"21,5";"40";"a;b"', {"t": 21.5, "h": 40, "note": "a;b"}),
        # a "." is no decimal point here: 1.234 may mean 1234, so it stays text
        ("1.234;1.234,5;", {"t": "1.234", "h": "1.234,5", "note": None}),
    ]
    for line, expected in cases:
        assert parse(line) == expected, line
    tabs = make_parser("csv", fields=["t", "h"], decimal=",", delimiter="\t")
    assert tabs("21,5\t40") == {"t": 21.5, "h": 40}


def test_csv_option_errors():
    assert "needs fields" in _config_error(format="csv", header=False)
    assert "cannot also be the delimiter" in _config_error(
        format="csv", fields=["a"], decimal=",", delimiter=","
    )
    assert "decimal must be" in _config_error(format="csv", fields=["a"], decimal=";")
    assert "must not be empty" in _config_error(format="csv", fields=["a"], delimiter="")


# -- key=value --------------------------------------------------------------------------------


def test_kv_spaces_commas_or_both():
    parse = make_parser("kv")
    expected = {"t": 21.5, "h": 40}
    assert parse("t=21.5 h=40") == expected
    assert parse("t=21.5,h=40") == expected
    assert parse("t=21.5, h=40") == expected
    assert parse("state=on empty=") == {"state": "on", "empty": None}
    assert parse("url=a=b") == {"url": "a=b"}


def test_kv_token_without_equals_is_an_error():
    parse = make_parser("kv")
    assert _reason(parse, "t=21.5 garbage h=40") == "token 'garbage' has no '=' or ':'"
    assert _reason(parse, "=5") == "token '=5' has no key before '='"


def test_kv_arduino_serial_plotter_and_other_ways_devices_write_pairs():
    parse = make_parser("kv")
    expected = {"temp": 21.5, "hum": 40}
    for line in (
        "temp:21.5 hum:40",
        "temp: 21.5, hum: 40",
        "temp:21.5,hum:40",
        "temp:21.5\thum:40",
        "temp=21.5;hum=40",
        "temp = 21.5 ; hum = 40",
        "temp=21.5,\thum:40,",
        ";temp=21.5;;hum=40;",
    ):
        assert parse(line) == expected, line


def test_kv_values_holding_colons_or_equals_and_empty_values():
    parse = make_parser("kv")
    cases = [
        ("time=12:30:00 t=1", {"time": "12:30:00", "t": 1}),
        ("time: 12:30:00, t: 1", {"time": "12:30:00", "t": 1}),
        ("mac=aa:bb:cc url=a=b", {"mac": "aa:bb:cc", "url": "a=b"}),
        ("a= b=1", {"a": None, "b": 1}),
        ("a:, b:2", {"a": None, "b": 2}),
    ]
    for line, expected in cases:
        assert parse(line) == expected, line


def test_kv_quoted_values():
    parse = make_parser("kv")
    cases = [
        ('name="bench 1" temp=2', {"name": "bench 1", "temp": 2}),
        ("name='bench 1', temp: 2", {"name": "bench 1", "temp": 2}),
        ('msg="say \\"hi\\", then go" n=1', {"msg": 'say "hi", then go', "n": 1}),
        ('id="0042" t=1', {"id": "0042", "t": 1}),  # quoted: kept as text
        ('e="" f=1', {"e": "", "f": 1}),
        ('url="http://a/?x=1&y=2"', {"url": "http://a/?x=1&y=2"}),
    ]
    for line, expected in cases:
        assert parse(line) == expected, line


def test_kv_ambiguous_or_bad_lines_are_errors_never_wrong_readings():
    cases = [
        (None, "t=1 t=2", "key 't' appears twice"),
        (None, 'name="bench 1', "unterminated quoted value of 'name'"),
        (None, 'name="bench"1 t=2', "text after the closing quote of 'name'"),
        (None, "a b=1", "token 'a' has no '=' or ':'"),
        (None, ":5", "token ':5' has no key before ':'"),
        (
            ",",
            "T=21.5;H=40",
            "ambiguous value '21.5;H=40' of 'T': it holds ';', which is not a delimiter "
            "here, and '=' or ':' (quote the value or set delimiter)",
        ),
        (
            None,
            "a=1|b=2",
            "ambiguous value '1|b=2' of 'a': it holds '|', which is not a "
            "delimiter here, and '=' or ':' (quote the value or set delimiter)",
        ),
    ]
    for delimiter, line, reason in cases:
        assert _reason(make_parser("kv", delimiter=delimiter), line) == reason, line


def test_kv_configured_delimiter_replaces_the_default_ones():
    parse = make_parser("kv", delimiter="|")
    assert parse("a=1|b=2 c=3") == {"a": 1, "b": 2, "c": 3}
    assert parse("pos=1,2;3|t=4") == {"pos": "1,2;3", "t": 4}  # "," and ";" are text now
    semicolon = make_parser("kv", delimiter=";")
    assert semicolon("pos=1,2;t=3") == {"pos": "1,2", "t": 3}
    assert "must not be empty" in _config_error(format="kv", delimiter="")


# -- declared types (a validate step's) -------------------------------------------------------

TYPES = {"id": "string", "t": "number", "n": "integer", "on": "bool"}


def test_csv_converts_declared_fields_by_their_type():
    parse = make_parser("csv", fields=["id", "t", "n", "on", "x"], types=TYPES)
    assert parse("007,21.5,7,true,007") == {"id": "007", "t": 21.5, "n": 7, "on": True, "x": 7}
    assert parse("1.50,007,-3,0,1.50") == {"id": "1.50", "t": 7, "n": -3, "on": False, "x": 1.5}
    assert parse("x,1e3,+4,FALSE,") == {"id": "x", "t": 1000.0, "n": 4, "on": False, "x": None}
    assert parse("a,b,1,True,c")["on"] is True and parse("a,b,1,1,c")["on"] is True
    # What does not convert stays the text the device sent, for validate to name and count.
    assert parse("abc,def,7.5,maybe,") == {
        "id": "abc",
        "t": "def",
        "n": "7.5",
        "on": "maybe",
        "x": None,
    }
    assert parse(",,,,") == {"id": None, "t": None, "n": None, "on": None, "x": None}
    assert parse("a,inf,1_0,yes,b") == {"id": "a", "t": "inf", "n": "1_0", "on": "yes", "x": "b"}


def test_csv_declared_types_with_a_header_and_a_decimal_comma():
    parse = make_parser("csv", header=True, decimal=",", types={"id": "string", "t": "number"})
    try:
        parse("id;t;n")
    except Skipped:
        pass
    assert parse("007;21,5;3") == {"id": "007", "t": 21.5, "n": 3}
    assert parse('"0,5";1.234;x') == {"id": "0,5", "t": "1.234", "n": "x"}


def test_kv_converts_declared_fields_by_their_type():
    parse = make_parser("kv", types=TYPES)
    assert parse("id=007 t=21.5 n=7 on=1 x=007") == {
        "id": "007",
        "t": 21.5,
        "n": 7,
        "on": True,
        "x": 7,
    }
    # The scanner's path (spaces around ":" and "="), where a quoted value is text as always.
    assert parse('id: 42, n = "7", on: false, t:') == {"id": "42", "n": "7", "on": False, "t": None}
    assert parse("on=no n=7.0") == {"on": "no", "n": "7.0"}


def test_regex_converts_declared_groups_by_their_type():
    parse = make_parser("regex", pattern=r"(?P<id>\w+) (?P<n>\S+)", types=TYPES)
    assert parse("007 7") == {"id": "007", "n": 7}
    assert parse("007 7.5") == {"id": "007", "n": "7.5"}


def test_json_keeps_its_own_types_whatever_is_declared():
    parse = make_parser("json", types=TYPES)
    assert parse('{"id": 7, "t": "21.5", "on": "true"}') == {"id": 7, "t": "21.5", "on": "true"}


def test_an_unknown_declared_type_is_a_config_error():
    message = _config_error(format="kv", types={"t": "float"})
    assert message == "unknown type 'float' for field 't'"


# -- nmea -------------------------------------------------------------------------------------


def test_nmea_gga():
    data = make_parser("nmea")(GGA)
    assert data == {
        "stream": "gga",
        "time": "12:35:19",
        "lat": 48.1173,
        "lon": 11.5166667,
        "fix_quality": 1,
        "satellites": 8,
        "hdop": 0.9,
        "altitude": 545.4,
        "geoid_separation": 46.9,
        "dgps_age": None,
        "dgps_station": None,
        "talker": "GP",
    }


def test_nmea_rmc():
    data = make_parser("nmea")(RMC)
    assert data == {
        "stream": "rmc",
        "time": "12:35:19",
        "status": "A",
        "lat": 48.1173,
        "lon": 11.5166667,
        "speed_knots": 22.4,
        "speed_km_h": 41.485,
        "course": 84.4,
        "date": "1994-03-23",
        "magnetic_variation": -3.1,
        "mode": None,
        "nav_status": None,
        "talker": "GP",
    }


def test_nmea_any_talker_south_west_and_fractions():
    parse = make_parser("nmea")
    line = _nmea("GNGGA,092750.25,5321.6802,S,00630.3372,W,2,12,1.0,10.2,M,,M,,")
    data = parse(line)
    assert data["time"] == "09:27:50.25"
    assert data["lat"] == -53.3613367
    assert data["lon"] == -6.50562
    assert data["fix_quality"] == 2
    rmc = parse(_nmea("GLRMC,000001,V,,,,,,,010125,,,N"))
    assert rmc["date"] == "2025-01-01" and rmc["status"] == "V"


def test_nmea_empty_fields_are_none():
    data = make_parser("nmea")(_nmea("GPGGA,,,,,,0,,,,M,,M,,"))
    assert data["stream"] == "gga"
    for key in ("time", "lat", "lon", "satellites", "hdop", "altitude"):
        assert data[key] is None
    assert data["fix_quality"] == 0


def test_nmea_checksum_wrong_or_missing():
    parse = make_parser("nmea")
    assert _reason(parse, GGA[:-2] + "48") == "NMEA checksum mismatch: computed 47, line says '48'"
    assert _reason(parse, GGA[: GGA.index("*")]) == "NMEA checksum missing"
    assert _reason(parse, GGA[:-1]).startswith("NMEA checksum mismatch")
    assert _reason(parse, GGA + "0").startswith("NMEA checksum mismatch")
    # one corrupted character anywhere in the body is caught
    corrupted = GGA.replace("4807.038", "4807.039")
    assert _reason(parse, corrupted).startswith("NMEA checksum mismatch")


def test_nmea_lower_case_checksum_and_trailing_cr():
    assert make_parser("nmea")(RMC[:-2] + "6a\r\n")["stream"] == "rmc"


def test_nmea_unknown_and_proprietary_sentences_are_skipped_not_errors():
    parse = make_parser("nmea")
    cases = [
        ("GPRTE,2,1,c,0,PBRCPK,PBRTO", "RTE", "NMEA sentence RTE is not supported, skipped"),
        ("PGRME,15.0,M,45.0,M,25.0,M", "PGRM", "proprietary NMEA sentence PGRM skipped"),
        ("PUBX,00,103607.00,5327.03942,N", "PUBX", "proprietary NMEA sentence PUBX skipped"),
        ("PMTK001,604,3", "PMTK", "proprietary NMEA sentence PMTK skipped"),
    ]
    for body, kind, reason in cases:
        try:
            parse(_nmea(body))
        except Skipped as skip:
            assert (skip.kind, skip.reason, skip.held) == (kind, reason, False), body
            assert isinstance(skip, ParseError)  # a caller knowing only ParseError drops it
            continue
        raise AssertionError("expected Skipped for " + body)


def test_nmea_malformed_sentences():
    parse = make_parser("nmea")
    assert _reason(parse, "GPGGA,1*00") == "NMEA sentence must start with '$'"
    short = _reason(parse, _nmea("GPGGA,123519,4807.038,N"))
    assert short == "GGA sentence has 4 fields, expected at least 11"
    assert _reason(parse, _nmea("GPGGA,12:35,,,,,1,08,0.9,1,M,,M,,")) == "bad NMEA time '12:35'"
    bad_lat = _nmea("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,")
    assert _reason(parse, bad_lat) == "bad NMEA latitude '48x7.038'"
    bad_side = _nmea("GPGGA,123519,4807.038,E,01131.000,E,1,08,0.9,545.4,M,,M,,")
    assert _reason(parse, bad_side) == "bad NMEA latitude hemisphere 'E'"
    bad_sats = _nmea("GPGGA,123519,4807.038,N,01131.000,E,1,many,0.9,545.4,M,,M,,")
    assert _reason(parse, bad_sats) == "bad NMEA satellites 'many'"
    bad_date = _nmea("GPRMC,123519,A,4807.038,N,01131.000,E,1,2,2303,,")
    assert _reason(parse, bad_date) == "bad NMEA date '2303'"


def test_nmea_non_ascii_digits_are_rejected():
    parse = make_parser("nmea")
    line = _nmea("GPGGA,123519,\u00b2\u00b207.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,")
    assert _reason(parse, line).startswith("bad NMEA latitude")
    line = _nmea("GPRMC,\u00b23519,A,4807.038,N,01131.000,E,1,2,230394,,")
    assert _reason(parse, line).startswith("bad NMEA time")


def test_nmea_truncated_lines_are_parse_errors():
    parse = make_parser("nmea")
    for cut in range(1, len(GGA)):
        _reason(parse, GGA[:cut])


# -- regex ------------------------------------------------------------------------------------


def test_regex_named_groups_become_fields():
    parse = make_parser("regex", pattern=r"T:(?P<t>-?[0-9.]+)C H:(?P<h>[0-9]+)% (?P<state>\w+)")
    assert parse("T:21.5C H:40% ok") == {"t": 21.5, "h": 40, "state": "ok"}
    assert parse("boot> T:-3C H:99% alarm") == {"t": -3, "h": 99, "state": "alarm"}


def test_regex_unnamed_and_optional_groups():
    parse = make_parser("regex", pattern=r"^(\w+): (?P<v>\d+)( (?P<unit>[a-z]+))?$")
    assert parse("temp: 21 c") == {"v": 21, "unit": "c"}
    assert parse("temp: 21") == {"v": 21, "unit": None}


def test_regex_no_match_is_a_parse_error():
    parse = make_parser("regex", pattern=r"^T:(?P<t>[0-9.]+)$")
    assert _reason(parse, "H:40") == "line does not match the pattern"


def test_translate_named_groups_counts_only_capturing_groups():
    plain, groups = translate_named_groups(r"(?:x)(a)\((?P<one>b)[(](?P<two>c)[]](?P<three>d)")
    assert plain == r"(?:x)(a)\((b)[(](c)[]](d)"
    assert groups == [(2, "one"), (3, "two"), (4, "three")]


def test_regex_bad_patterns_are_config_errors():
    assert "bad regex group name" in _config_error(format="regex", pattern="(?P<1x>a)")
    assert "used twice" in _config_error(format="regex", pattern="(?P<a>x)(?P<a>y)")
    assert "back-references" in _config_error(format="regex", pattern="(?P<a>x)(?P=a)")
    assert "invalid regex" in _config_error(format="regex", pattern="(?P<a>x")


def test_kv_quick_split_agrees_with_the_scanner():
    # common lines take a quick split; whatever it accepts, the full scanner reads the same
    from gateway.core import parsers

    alphabet = "ab=:;, \t12.x|&-"
    state = 99
    agreed = 0
    for delimiters in (parsers._KV_DELIMITERS, (",",), ("|",)):
        stray = "".join(c for c in parsers._PAIRISH if all(c not in d for d in delimiters))
        for _ in range(1500):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            chars = []
            for _ in range(1 + state % 20):
                state = (state * 1103515245 + 12345) & 0x7FFFFFFF
                chars.append(alphabet[(state >> 8) % len(alphabet)])
            line = "".join(chars)
            quick = parsers._kv_simple(line, delimiters, stray)
            if quick is None:
                continue
            scan = parsers._KvScan(line, delimiters, stray)
            scanned = {}
            while scan.next_pair():
                key, value = scan.pair()
                assert key not in scanned, line
                scanned[key] = value
            assert scanned == quick, repr(line)
            agreed += 1
    assert agreed > 300
